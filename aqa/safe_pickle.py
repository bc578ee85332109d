"""Unpickling that can only rebuild plain data and numpy arrays.

Annotation pickles (MTL-AQA) and DeepMind's I3D checkpoint are pickles from the internet;
``pickle.load`` would run any callable they name. This unpickler resolves only the globals
numpy needs to rebuild arrays and scalars, and refuses everything else.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle

import numpy as np

from aqa.errors import UserError

# numpy moved its internals from numpy.core to numpy._core in 2.0; pickles name either.
_ARRAY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((module, "_reconstruct") for module in _ARRAY_MODULES),
    *((module, "scalar") for module in _ARRAY_MODULES),
    ("collections", "OrderedDict"),
}


def _resolve(module: str, name: str):
    import collections

    if module == "collections":
        return collections.OrderedDict
    if module == "numpy":
        return getattr(np, name)
    # Resolve through whichever of the two module paths this numpy has.
    for candidate in reversed(_ARRAY_MODULES):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this numpy has no '{module}.{name}'")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only builtin containers, numbers, strings and numpy arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load '{module}.{name}': only plain data and numpy arrays are allowed"
            )
        return _resolve(module, name)


def loads_restricted(data: bytes):
    """Unpickle ``data`` allowing only plain data and numpy arrays (Python 2 pickles included)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def load_restricted(path: str | os.PathLike):
    """Load a pickle file safely; any failure is a one-line :class:`UserError` naming the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except OSError as error:
        raise UserError(f"cannot read file ({error.strerror})", path) from None
    try:
        return loads_restricted(data)
    except pickle.UnpicklingError as error:
        raise UserError(f"not a safe pickle: {error}", path) from None
    except Exception as error:  # truncated or garbage bytes raise many different types
        raise UserError(f"not a readable pickle ({type(error).__name__}: {error})", path) from None
