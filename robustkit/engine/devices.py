"""Where the evaluation runs and how big its batches are.

The batch size only needs to be roughly right: a too-large batch on CUDA runs out of memory, which the
runner catches (see :func:`is_out_of_memory`), and it then halves the batch and retries, so the automatic
choice can aim high. It is a deterministic function of the input size and the device type (never of the
free memory at that moment), because the batch layout decides the random-number streams of a job.
"""
from __future__ import annotations

import contextlib
import random
import weakref
from typing import Iterator

import numpy as np
import torch
from torch import nn

from robustkit.errors import ConfigError
from robustkit.predict import model_device

# Input elements per batch the automatic batch size aims for, and its bounds, per device type.
_AUTO_ELEMENTS = {"cpu": 2 ** 18, "cuda": 2 ** 22}
_AUTO_BOUNDS = {"cpu": (16, 512), "cuda": (16, 4096)}


def resolve_device(device: str | torch.device | None, field: str = "device") -> torch.device:
    """'auto' → the first CUDA GPU when there is one, else CPU; 'cpu', 'cuda', 'cuda:N' as given.

    Asking for CUDA on a machine without it is a configuration error (not a silent fallback to CPU: the
    user asked for a specific device and would otherwise wait far longer than expected).
    """
    if isinstance(device, torch.device):
        text = str(device)
    else:
        text = "auto" if device is None else str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{field}: expected auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{field}: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{field}: {text} requested but CUDA is not available (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{field}: {text} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def auto_batch_size(sample_shape: tuple[int, ...], device: torch.device) -> int:
    """A power of two so that a batch holds about 2^18 (CPU) or 2^22 (CUDA) input elements."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    elements = 1
    for d in sample_shape:
        elements *= int(d)
    target = max(1, _AUTO_ELEMENTS[kind] // max(1, elements))
    lo, hi = _AUTO_BOUNDS[kind]
    size = 1 << (target.bit_length() - 1)  # largest power of two <= target
    return max(lo, min(hi, size))


# model -> {(device, sample shape): the largest chunk that fitted}; weak, so a freed model's entry goes too
_PROBED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, tuple[int, ...]], int]]" = weakref.WeakKeyDictionary()


def probe_chunk_size(model: nn.Module, sample_shape: tuple[int, ...], device: torch.device, start: int) -> int:
    """The largest chunk, ``start`` halved until it fits, for which one forward and input-gradient pass of
    ``model`` runs on ``device`` without running out of memory; probed once per (model, device, shape) and
    remembered for every later job and sweep of this process.

    It caps the chunks a batch is evaluated in, never the batch layout (which decides the random streams and
    stays a function of the input shape and device type, :func:`auto_batch_size`): on a GPU with room for the
    whole batch nothing changes, and on a smaller one the out-of-memory retry of a first batch is skipped.
    The attacks need more memory than one gradient pass, so the runner's halving on out-of-memory stays as
    the backstop.
    """
    cache = _PROBED.setdefault(model, {})
    key = (str(device), tuple(int(d) for d in sample_shape))
    if key not in cache:
        size = max(1, int(start))
        while True:
            try:
                x = torch.zeros((size, *key[1]), device=device, requires_grad=True)
                torch.autograd.grad(model(x).float().sum(), x)
                break
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(exc) or size == 1:
                    raise
                del exc
                release_cached_memory()
                size //= 2
        cache[key] = size
    return min(int(start), cache[key])


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (the dedicated class, or a RuntimeError saying so)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_cached_memory() -> None:
    """Give cached CUDA blocks back before retrying a smaller batch (a no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move the model to ``device`` for its jobs and back afterwards (frees the GPU for the next model)."""
    original = model_device(model)
    model.to(device)
    try:
        yield model
    finally:
        model.to(original)


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    """Seed the global RNGs (torchattacks-based attacks draw from them) and return a generator for the attack."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    return torch.Generator(device=device).manual_seed(seed)
