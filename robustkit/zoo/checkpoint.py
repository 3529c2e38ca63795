"""Reading checkpoints safely and loading them strictly.

Safety: files are read with safetensors, or with ``torch.load(map_location="cpu", weights_only=True)``,
which only rebuilds tensors and plain containers. A file that needs to import and call code to unpickle is
refused (CheckpointError) instead of executed: evaluating a downloaded model must never run its author's
code.

Shapes in the wild: the state dict may sit under a key (``state_dict``, ``model``, ``net``, ...), be wrapped
by DataParallel (``module.`` prefixes) or ``torch.compile`` (``_orig_mod.``), or a file may hold a *list* of
state dicts (convex_adversarial's cascades). :func:`extract_state_dict` unwraps all of these; loading is then
strict, and a mismatch is one line that lists missing keys, unexpected keys and shape mismatches.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from robustkit.errors import CheckpointError
from robustkit.outputs import output_dir, write_with

# Keys under which training scripts commonly nest the weights, tried in this order.
NESTED_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "module",
               "params", "weights", "ema_state_dict")
# Wrapper prefixes that are always safe to strip when every key carries them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_LIST_LIMIT = 6
_NOT_WEIGHTS = ("optim", "sched", "scaler")


def _short(items: list[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, cached by (absolute path, mtime, size): re-hashing big checkpoints for
    every job identity would dominate small evaluations."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read it ({exc.strerror or exc})") from exc
    return _sha256_cached(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    # safetensors: 8-byte little-endian header length, then a JSON object
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a checkpoint file without running any code from it; return what it contains."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p}: file not found")
    if _is_safetensors(p):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, Exception) as exc:  # noqa: BLE001 - any garbage file
            raise CheckpointError(f"checkpoint {p}: not a valid safetensors file ({_first_line(exc)})") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {p}: refused for safety: loading it would import and run code from the file{what}; "
            f"re-save its state dict (torch.save(model.state_dict(), ...)) or convert it to safetensors"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, Exception) as exc:  # noqa: BLE001
        # torch.load's readers fail on garbage with anything (IndexError, TypeError, struct.error, ...):
        # whatever it is, the file is not a checkpoint robustkit can read
        raise CheckpointError(f"checkpoint {p}: not a readable torch checkpoint ({_first_line(exc)})") from None


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    out = OrderedDict(sd)
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = OrderedDict((k[len(prefix):], v) for k, v in out.items())
                changed = True
    return out


def _is_state_dict_list(obj: Any) -> bool:
    return isinstance(obj, (list, tuple)) and len(obj) > 0 and all(_is_state_dict(v) for v in obj)


def _find_weights(obj: Any, depth: int = 0) -> Any:
    """The state dict (or list of state dicts) inside ``obj``, searched through well-known keys, or None."""
    if _is_state_dict(obj) or _is_state_dict_list(obj):
        return obj
    if not isinstance(obj, Mapping) or depth >= 3:
        return None
    for k in NESTED_KEYS:
        if k in obj:
            found = _find_weights(obj[k], depth + 1)
            if found is not None:
                return found
    # exactly one unconventional entry holding weights, e.g. {"epoch": 3, "my_weights": {...}}; optimizer and
    # scheduler states also hold name -> tensor mappings (momentum buffers) and are never model weights
    others = {k: v for k, v in obj.items()
              if k not in NESTED_KEYS and not any(s in str(k).lower() for s in _NOT_WEIGHTS)}
    direct = [v for v in others.values() if _is_state_dict(v) or _is_state_dict_list(v)]
    if direct:
        return direct[0] if len(direct) == 1 else None
    found = [f for f in (_find_weights(v, depth + 1) for v in others.values()) if f is not None]
    return found[0] if len(found) == 1 else None


def extract_state_dict(obj: Any, *, key: str | None = None, index: int | None = None,
                       source: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """Find the state dict inside what a checkpoint file holds, and strip wrapper prefixes.

    ``key`` picks a top-level entry explicitly; ``index`` picks one state dict of a list-of-state-dicts file
    (required when the list has more than one).
    """
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = [str(k) for k in obj] if isinstance(obj, Mapping) else []
            raise CheckpointError(f"{source}: no entry {key!r}; top-level keys: {_short(keys) or 'none'}")
        obj = obj[key]
    found = _find_weights(obj)
    if found is None:
        if isinstance(obj, Mapping):
            keys = [str(k) for k in obj]
            raise CheckpointError(
                f"{source}: found no state dict (name -> tensor mapping); top-level keys: {_short(keys) or 'none'}; "
                f"name the right one with checkpoint key"
            )
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    if _is_state_dict_list(found):
        if index is None:
            if len(found) > 1:
                raise CheckpointError(
                    f"{source}: holds a list of {len(found)} state dicts (e.g. a model cascade); choose one with "
                    f"checkpoint index 0..{len(found) - 1}"
                )
            index = 0
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(found):
            raise CheckpointError(f"{source}: index {index!r} out of range for a list of {len(found)} state dicts")
        found = found[index]
    elif index is not None:
        raise CheckpointError(f"{source}: index {index} was given but the file holds a single state dict")
    return _strip_prefixes(found)


def load_state_dict(path: str | os.PathLike, *, key: str | None = None,
                    index: int | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Read ``path`` safely and return its (unwrapped) state dict."""
    return extract_state_dict(read_checkpoint(path), key=key, index=index, source=f"checkpoint {path}")


def _fit_prefix(sd: "OrderedDict[str, torch.Tensor]", expected: set[str]) -> "OrderedDict[str, torch.Tensor]":
    """Strip one common leading component (``model.``, ``net.``, ``1.``...) if that makes the keys fit exactly."""
    if set(sd) <= expected or not sd:
        return sd
    first = next(iter(sd)).split(".", 1)[0] + "."
    if all(k.startswith(first) for k in sd):
        stripped = OrderedDict((k[len(first):], v) for k, v in sd.items())
        if set(stripped) <= expected:
            return stripped
    return sd


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint",
              arch: str | None = None) -> None:
    """Strictly copy ``state_dict`` into ``model``; one-line CheckpointError listing every kind of mismatch.

    Missing BatchNorm ``num_batches_tracked`` counters (absent from checkpoints saved by old PyTorch) are
    tolerated: they only drive momentum during training and never change an eval-mode forward pass.
    """
    own = model.state_dict()
    sd = _fit_prefix(_strip_prefixes(state_dict), set(own))
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} {tuple(sd[k].shape)} in file vs {tuple(own[k].shape)} in model"
                  for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_short(mismatched, 3)}")
        target = f"architecture {arch!r}" if arch else type(model).__name__
        raise CheckpointError(f"{source} does not fit {target}: " + "; ".join(parts))
    full = OrderedDict(sd)
    for k, v in own.items():
        if k not in full:  # only tolerated num_batches_tracked counters reach here
            full[k] = v
    model.load_state_dict(full, strict=True)


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict as safetensors (contiguous CPU copies; shared storage is split, as safetensors needs)."""
    from safetensors.torch import save_file

    p = Path(path)
    output_dir(p.parent)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    return write_with(p, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
