r"""The dense backend: materialise an operator and take its SVD with LAPACK (the checking oracle).

``jnp.linalg.svd`` with vectors was seen to return NaN on CPU for the reference 4810 x 4810
training Jacobian, so the SVD runs in numpy/scipy LAPACK (``gesdd``, falling back to the slower
but more robust ``gesvd``), in float64 by default.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import numpy as np
import scipy.linalg

from ..core import AbstractOperator

__all__ = ["DenseSVD", "dense_svd"]


class DenseSVD(eqx.Module):
    """Full SVD ``A = U diag(s) V^T``: ``s`` descending; ``U``, ``V`` columns (None if not
    asked)."""

    s: np.ndarray
    U: np.ndarray | None = None
    V: np.ndarray | None = None


def dense_svd(
    op: AbstractOperator | Any, compute_vectors: bool = False, *, dtype: Any = np.float64
) -> DenseSVD:
    r"""All singular values (and optionally vectors) of ``op``, densely.

    Parameters
    ----------
    op
        A :class:`AbstractOperator` (materialised with ``op.to_dense()``: ``n`` forward products)
        or an array.
    compute_vectors
        Also return ``U`` and ``V`` (``(m, r)`` and ``(n, r)``, ``r = min(m, n)``).
    dtype
        Precision of the factorisation (float64 by default, whatever the operator's dtype).

    Cost: ``O(m n min(m, n))`` flops and ``O(m n)`` memory; the oracle for small problems only.

    Examples
    --------
    >>> import numpy as np, matfree_tj as mtj
    >>> mtj.dense_svd(np.diag([3.0, 1.0, 2.0])).s
    array([3., 2., 1.])
    """
    A = op.to_dense() if isinstance(op, AbstractOperator) else op
    A = np.asarray(jax.device_get(A), dtype=dtype)
    if A.ndim != 2:
        raise ValueError(f"dense_svd needs a matrix, got shape {A.shape}.")
    if not np.all(np.isfinite(A)):
        raise FloatingPointError("dense_svd: the matrix has NaN or inf entries.")
    for driver in ("gesdd", "gesvd"):
        try:
            if compute_vectors:
                U, s, Vh = scipy.linalg.svd(
                    A, full_matrices=False, lapack_driver=driver, check_finite=False
                )
                if np.all(np.isfinite(s)) and np.all(np.isfinite(U)) and np.all(np.isfinite(Vh)):
                    return DenseSVD(s=s, U=U, V=Vh.T)
            else:
                s = scipy.linalg.svd(A, compute_uv=False, lapack_driver=driver, check_finite=False)
                if np.all(np.isfinite(s)):
                    return DenseSVD(s=s)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("dense_svd: LAPACK (gesdd and gesvd) failed to converge.")
