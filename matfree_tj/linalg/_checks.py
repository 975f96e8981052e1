"""Input checks shared by every solver: run in Python before anything is traced.

Each check names the allowed range in its message ("Expected 1 <= k < P = 6, got k=6"), so a
caller learns what to pass instead of getting a shape error from inside a compiled kernel.
:func:`run_guarded` turns the operator's runtime NaN/inf error into a ``FloatingPointError``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator
from ._precision import widen

__all__ = [
    "check_operator",
    "check_key",
    "check_int",
    "check_tol",
    "check_common",
    "check_v0",
    "run_guarded",
]


def check_operator(op: Any, who: str, *, square: bool = False) -> AbstractOperator:
    """``op`` checked, and seen in the solvers' working precision: a bfloat16 or float16
    operator comes back wrapped (:class:`~matfree_tj.linalg._precision.Widened`), so that the
    solver's own arithmetic runs in float32 (see :mod:`._precision`)."""
    if not isinstance(op, AbstractOperator):
        raise TypeError(
            f"{who}: expected a matfree_tj operator, got {type(op).__name__}. Wrap a dense "
            "matrix A as mtj.MatrixOperator(A), or functions as "
            "mtj.LinearOperator(mv, rmv, shape, dtype)."
        )
    if not jnp.issubdtype(op.dtype, jnp.floating):
        raise TypeError(f"{who}: the operator dtype must be floating, got {op.dtype}.")
    if square and op.shape[0] != op.shape[1]:
        raise ValueError(
            f"{who} needs a square operator (P x P, like a training Jacobian), "
            f"got shape {op.shape}."
        )
    return widen(op)


def check_key(key: Any, who: str) -> jax.Array:
    if key is None:
        raise TypeError(
            f"{who}: a PRNG key is required (key=jax.random.key(0)); there is no silent default."
        )
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"{who}: key must be a JAX PRNG key (jax.random.key(seed)), got {key!r}.")


def check_int(name: str, value: Any, lo: int, hi: int, hi_name: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"Expected an integer {name}, got {value!r}.")
    value = int(value)
    if not lo <= value <= hi:
        rng = f"{lo} <= {name} <= {hi_name or hi}" + (f" = {hi}" if hi_name else "")
        raise ValueError(f"Expected {rng}, got {name}={value}.")
    return value


def check_tol(name: str, value: Any) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Expected a finite {name} >= 0, got {name}={value}.")
    return value


def run_guarded(fn, *args):
    """Call a compiled kernel; turn the operator's NaN/inf runtime error into FloatingPointError."""
    try:
        return fn(*args)
    except RuntimeError as e:  # eqx.error_if from the operator's check_finite
        if "NaN or inf" in str(e):
            raise FloatingPointError(
                "An operator product produced NaN or inf (see the chained error). The training "
                "run or its derivative is not finite: check for divergence or non-finite inputs."
            ) from e
        raise


def check_common(op, k, key, who, *, square, tol, num_basis, default_basis):
    """The checks every top/bottom solver shares: operator, key, ``1 <= k < min(shape)``, ``tol``
    and ``min(k + 2, r) <= num_basis <= r`` (``default_basis(k)`` when not given, capped at
    ``r = min(shape)``). Returns ``(op, key, k, tol, num_basis)``."""
    op = check_operator(op, who, square=square)
    key = check_key(key, who)
    M, N = op.shape
    r = min(M, N)
    if r < 2:
        raise ValueError(f"{who}: the operator must have min(shape) >= 2, got shape {op.shape}.")
    name = "P" if M == N else "min(shape)"
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{who}: expected an integer k, got {k!r}.")
    if not 1 <= int(k) < r:
        raise ValueError(f"{who}: Expected 1 <= k < {name} = {r}, got k={int(k)}.")
    k = int(k)
    tol = check_tol("tol", tol)
    if num_basis is None:  # a function of k, called once k is known to be an integer
        num_basis = min(r, default_basis(k))
    num_basis = check_int("num_basis", num_basis, min(k + 2, r), r, "min(shape)" if M != N else "P")
    return op, key, k, tol, num_basis


def check_v0(v0, N, dtype):
    """A start vector of shape ``(N,)`` in the operator's dtype."""
    v0 = jnp.asarray(v0)
    if v0.shape != (N,):
        raise ValueError(f"v0 must have shape ({N},), got {v0.shape}.")
    return v0.astype(dtype)
