"""``load_dataset``: from a name or a sweep-config mapping to a checked, hashed :class:`Dataset`.

This is the single entry point the CLI, the engine and users call. It owns everything that must be the same
for every dataset: parsing the spec, resolving relative roots against the config file's folder, rejecting
unknown option keys before any file is touched, applying ``n_examples`` (the first N, as RobustBench does,
but refusing to silently return fewer than asked), and writing the normalized spec recorded for provenance.
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from robustkit.errors import ConfigError, DataError, RobustkitError, did_you_mean, unknown_name, short_repr

from .catalog import DATASETS, Loader, canonical_name, list_datasets
from .dataset import Dataset, LoadedData
from .subgroup_labels import parse_subgroups, read_subgroups

RESERVED = ("root", "download", "n_examples")
SUBGROUPS = "subgroups"  # a per-example group-id file for every dataset (robustkit.data.subgroup_labels)
# Options that change where bytes come from but not which bytes (they are checksum-verified): kept out of
# the spec so that a result computed from a mirror is recognized as the same data.
NOT_IN_SPEC = ("mirror",)


def _parse_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """Split a name or mapping into (name, fields); a nested ``options`` mapping is flattened."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"dataset: expected a name or a mapping with a 'name' key, got {type(spec).__name__}")
    fields = dict(spec)
    name = fields.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"dataset: the mapping needs a 'name' (one of {', '.join(list_datasets())}), "
                          f"got {short_repr(name)}")
    nested = fields.pop("options", None) or {}
    if not isinstance(nested, Mapping):
        raise ConfigError(f"dataset {short_repr(name)}: 'options' must be a mapping, got {type(nested).__name__}")
    for key, value in nested.items():
        if key in fields:
            raise ConfigError(f"dataset {short_repr(name)}: option {short_repr(key)} is given both at top level and under 'options'")
        fields[key] = value
    return name, fields


def _resolve_root(root: Any, base_dir: Any, name: str) -> Path | None:
    if root is None:
        return None
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ConfigError(f"dataset {short_repr(name)} root: expected a path, got {short_repr(root)}")
    path = Path(os.path.expanduser(os.fspath(root)))
    if not path.is_absolute():
        path = Path(base_dir).expanduser() / path if base_dir is not None else Path.cwd() / path
    return Path(os.path.abspath(path))


def _check_n_examples(n: Any, name: str) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"dataset {short_repr(name)} n_examples: expected a positive integer, got {short_repr(n)}")
    return n


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    raise ConfigError(f"{where}: expected plain values (numbers, strings, lists), got {type(value).__name__}")


def _bind_options(name: str, loader: Loader, given: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Check ``given`` against the loader's signature; return (all options with defaults, reserved params)."""
    signature = inspect.signature(loader).parameters.values()
    params = [p for p in signature if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature)
    reserved = {p.name for p in params if p.name in RESERVED}
    option_params = {p.name: p for p in params if p.name not in RESERVED}
    if given.get("split", 0) is None and "split" not in option_params:
        given = {k: v for k, v in given.items() if k != "split"}  # a spec written for a split-less dataset
    if not takes_any:
        for key in given:
            if key not in option_params:
                known = sorted(option_params) + [r for r in RESERVED if r in reserved]
                hint = did_you_mean(key, [*known, *RESERVED])
                listing = f"known options: {', '.join(known)}" if known else "it takes no options"
                raise ConfigError(f"dataset {short_repr(name)}: unknown option {short_repr(key)}{hint}; {listing}")
    resolved: dict[str, Any] = {}
    for pname, p in option_params.items():
        if pname in given:
            resolved[pname] = given[pname]
        elif p.default is inspect.Parameter.empty:
            raise ConfigError(f"dataset {short_repr(name)}: option {short_repr(pname)} is required")
        else:
            resolved[pname] = p.default
    for key, value in given.items():
        resolved.setdefault(key, value)
    return resolved, reserved


def _num_classes(data: LoadedData, name: str) -> int:
    if data.num_classes is not None:
        return data.num_classes
    if data.classes is not None:
        return len(data.classes)
    if data.y.numel() == 0:
        raise DataError(f"dataset {short_repr(name)}: no examples found")
    return int(data.y.max()) + 1


def load_dataset(spec: Any, *, root: Any = None, n_examples: int | None = None, download: bool = False,
                 base_dir: Any = None, **options: Any) -> Dataset:
    """Load a dataset by name or from a config mapping ``{"name": ..., "root": ..., "n_examples": ..., ...}``.

    Keyword arguments that are given (not None) override the mapping's values; ``download`` is true if
    either says so. Relative roots resolve against ``base_dir`` (the config file's folder) when given,
    else against the current directory. Raises :class:`ConfigError` for unknown names/options and bad
    values, :class:`DataError` for missing, malformed or corrupted data.
    """
    name, fields = _parse_spec(spec)
    key = name.lower()
    if key not in DATASETS:
        raise ConfigError(unknown_name("dataset", name, list_datasets()))
    loader = DATASETS.get(key)
    canonical = canonical_name(key, loader)

    root = root if root is not None else fields.pop("root", None)
    fields.pop("root", None)
    n_examples = n_examples if n_examples is not None else fields.pop("n_examples", None)
    fields.pop("n_examples", None)
    spec_download = fields.pop("download", False)
    for value in (spec_download, download):
        if not isinstance(value, bool):
            raise ConfigError(f"dataset {short_repr(canonical)} download: expected true or false, got {short_repr(value)}")
    download = download or spec_download
    fields.update({k: v for k, v in options.items() if v is not None})
    subgroups = fields.pop(SUBGROUPS, None)
    subgroups_spec = parse_subgroups(subgroups, base_dir) if subgroups is not None else None

    root_path = _resolve_root(root, base_dir, canonical)
    n_examples = _check_n_examples(n_examples, canonical)
    resolved, reserved = _bind_options(canonical, loader, fields)
    if root_path is not None and "root" not in reserved:
        raise ConfigError(f"dataset {short_repr(canonical)} takes no root (it needs no files), got root={short_repr(os.fspath(root))}")
    if download and "download" not in reserved:
        downloadable = [n for n in list_datasets()
                        if "download" in inspect.signature(DATASETS.get(n)).parameters]
        raise ConfigError(f"dataset {short_repr(canonical)} cannot be downloaded; downloadable: {', '.join(downloadable)}")

    call = dict(resolved)
    if "root" in reserved:
        call["root"] = root_path
    if "download" in reserved:
        call["download"] = download
    if "n_examples" in reserved:
        call["n_examples"] = n_examples
    try:
        data = loader(**call)
    except RobustkitError:
        raise
    except OSError as exc:  # permissions, disk errors: name the file, no traceback
        raise DataError(f"dataset {short_repr(canonical)}: {exc}") from exc
    if not isinstance(data, LoadedData):
        raise RobustkitError(f"dataset loader {short_repr(canonical)} returned {type(data).__name__}, expected LoadedData")

    num_classes = _num_classes(data, canonical)
    x, y = data.x, data.y
    if n_examples is not None:
        available = int(y.shape[0]) if isinstance(y, torch.Tensor) else len(y)
        if n_examples > available:
            split = f" ({resolved['split']} split)" if "split" in resolved else ""
            raise ConfigError(f"n_examples={n_examples} but dataset {short_repr(canonical)}{split} has only {available} examples")
        if n_examples < available:
            x, y = x[:n_examples].clone(), y[:n_examples].clone()

    used_root = data.root if data.root is not None else root_path
    spec_out = {
        "name": canonical,
        "root": os.path.abspath(used_root) if used_root is not None else None,
        "split": resolved.get("split"),
        "n_examples": n_examples,
        "options": {k: _jsonable(v, f"dataset {short_repr(canonical)} option {k}")
                    for k, v in sorted(resolved.items()) if k != "split" and k not in NOT_IN_SPEC},
    }
    groups = None
    if subgroups_spec is not None:
        spec_out[SUBGROUPS] = subgroups_spec
        groups = torch.from_numpy(read_subgroups(subgroups_spec, int(y.shape[0])))
    json.dumps(spec_out)  # guaranteed serialisable by _jsonable; fail loudly here if not
    return Dataset(canonical, x.contiguous(), y.contiguous(), data.classes, num_classes, spec_out, groups=groups)
