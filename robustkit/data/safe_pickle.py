"""A restricted unpickler for the official CIFAR batches.

The CIFAR python files are pickles downloaded from the internet, and an ordinary ``pickle.load`` runs any
callable the file names. This unpickler resolves only the globals needed to rebuild numpy arrays (the
array reconstructor, ``ndarray``, ``dtype``, numpy scalars, and ``_codecs.encode`` that Python 3 uses for
bytes in protocol-2 pickles); dicts, lists, strings and numbers need no globals at all. Any other global --
``os.system``, ``builtins.eval``, a class to instantiate -- makes loading fail with :class:`DataError`.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.errors import DataError

# The live objects numpy itself pickles arrays and scalars with (module names differ between numpy 1 and 2,
# so they are taken from numpy's own reduce output instead of importing deprecated module paths).
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("_codecs", "encode"): codecs.encode,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global that a data file has no business calling."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that refuses every global outside :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"global {module}.{name} is not allowed") from None


def load_pickle(path: Path) -> Any:
    """Load a data pickle safely (``encoding="bytes"``, as Python 2 pickles like CIFAR's need)."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobal as exc:
        raise DataError(f"{path}: refusing to unpickle: {exc} (only numpy arrays, lists, dicts, strings "
                        f"and numbers may appear in a data file)") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise DataError(f"{path}: corrupted or truncated pickle ({type(exc).__name__}: {exc})") from exc
