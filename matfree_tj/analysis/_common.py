"""Shared pieces of :mod:`matfree_tj.analysis`: the backend and region names, argument checks
and small conversions. Imports nothing from the other analysis modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator

BACKENDS = ("matrix-free", "dense")
REGIONS = ("chaotic", "bulk", "stable")
_HI = jax.lax.Precision.HIGHEST


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    return backend


def _check_bounds(lo: float, hi: float) -> None:
    if not 0.0 <= float(lo) <= 1.0 <= float(hi):
        raise ValueError(
            f"Expected 0 <= lo <= 1 <= hi for the region bounds, got lo={lo}, hi={hi}."
        )


def _is_int(k: Any) -> bool:
    """A Python or numpy integer, not a bool (``True`` is not a size)."""
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _check_k(k: Any, n: int, what: str = "k", limit: str = "") -> int:
    """``k`` as an int in ``[1, n]``, or a clear error (a float like 2.7 is not truncated)."""
    if not _is_int(k):
        raise TypeError(f"{what} must be an integer, got {k!r} ({type(k).__name__}).")
    if not 1 <= int(k) <= n:
        raise ValueError(f"Expected 1 <= {what} <= {limit}{n}, got {k}.")
    return int(k)


def _np(x: Any) -> np.ndarray:
    return np.asarray(jax.device_get(x), dtype=np.float64)


def _dense_matrix(op: Any) -> np.ndarray:
    return _np(op.to_dense() if isinstance(op, AbstractOperator) else op)


def _get(obj: Any, name: str) -> float:
    """``obj.name`` or ``obj[name]`` (region-count results expose both)."""
    try:
        return float(getattr(obj, name))
    except AttributeError:
        return float(obj[name])


def _say(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def model_inputs(X: Any, dtype: Any) -> jax.Array:
    """``X`` as a JAX array for a model: floating inputs in the parameters' ``dtype``; integer or
    boolean inputs (token ids for an embedding, masks) unchanged, since casting them to floats
    would break indexing.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree_tj.analysis import model_inputs
    >>> model_inputs(jnp.arange(3), jnp.float32).dtype, model_inputs(jnp.ones(2), jnp.float32).dtype
    (dtype('int32'), dtype('float32'))
    """
    X = jnp.asarray(X)
    return X.astype(dtype) if jnp.issubdtype(X.dtype, jnp.floating) else X
