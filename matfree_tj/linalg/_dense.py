r"""The dense backend: materialise an operator and take its SVD with LAPACK (the checking oracle).

``jnp.linalg.svd`` with vectors was seen to return NaN on CPU for the reference 4810 x 4810
training Jacobian, so the SVD runs in numpy/scipy LAPACK (``gesdd``, falling back to the slower
but more robust ``gesvd``), in float64 by default. The result is the same
:class:`~matfree_tj.linalg.SingularTriplets` the matrix-free solvers return (float64 numpy
arrays, ``method="dense"``, ``which="all"``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import scipy.linalg

from ..core import AbstractOperator, check_fits
from ._results import SingularTriplets, Status

__all__ = ["dense_svd"]


def _triplets(s, U, V, shape, dtype, num_products) -> SingularTriplets:
    """Wrap a LAPACK SVD with its a-priori accuracy, ``max(m, n) eps s_max`` per triplet (see
    :func:`dense_svd`)."""
    r = s.shape[0]
    s_max = float(s[0]) if r else 0.0
    bound = max(shape) * float(np.finfo(dtype).eps) * s_max
    return SingularTriplets(
        s=s,
        U=U,
        V=V,
        residuals=np.full(r, bound),
        converged=np.ones(r, dtype=bool),
        num_products=int(num_products),
        status=Status.CONVERGED,
        method="dense",
        which="all",
        tol=0.0,
        atol=bound,
        anorm=s_max,
    )


def _check_memory(m: int, n: int, op_dtype: Any, itemsize: int, vectors: bool) -> None:
    """Refuse, before materialising anything, an SVD whose memory will not fit: the operator's
    dense matrix (if it has to be materialised), its copy in the factorisation dtype, LAPACK's
    working copy, and ``U``, ``V^T`` and workspace of order ``k^2`` (``k = min(m, n)``)."""
    k = min(m, n)
    dense = m * n * np.dtype(op_dtype).itemsize if op_dtype else 0
    factor = 2 * m * n + ((m + n) * k + 4 * k * k if vectors else 4 * k * k)
    check_fits(
        dense + factor * itemsize,
        f"dense_svd of a {m} x {n} matrix" + (" with vectors" if vectors else ""),
        device=jax.devices()[0],
    )


def dense_svd(
    op: AbstractOperator | Any, compute_vectors: bool = False, *, dtype: Any = np.float64
) -> SingularTriplets:
    r"""All singular values (and optionally vectors) of ``op``, densely.

    Parameters
    ----------
    op
        An operator (materialised with ``op.to_dense()``: ``n`` forward products)
        or an array.
    compute_vectors
        Also return ``U`` and ``V`` (``(m, r)`` and ``(n, r)``, ``r = min(m, n)``); otherwise
        they are ``None``.
    dtype
        Precision of the factorisation (float64 by default, whatever the operator's dtype).

    Returns
    -------
    SingularTriplets
        ``s`` descending (all ``r`` values), ``U``, ``V`` (or ``None``) as numpy arrays of
        ``dtype``; ``method="dense"``, ``which="all"``, ``status="converged"`` and every flag
        set. ``residuals`` is not measured but an a-priori bound, the same for every triplet:
        LAPACK's SVD is backward stable (the exact SVD of :math:`A + E` with
        :math:`\|E\| \le p(m, n)\, \epsilon\, s_{max}`, ``eps`` of ``dtype``, ``p`` a modestly
        growing function), so each computed value lies within :math:`\|E\|` of an exact one
        (Weyl) and each residual :math:`\|A v_i - s_i u_i\|` is of that order plus the rounding
        of the products. The typical size is :math:`\sqrt{\min(m, n)}\, \epsilon\, s_{max}`,
        but measured float64 residuals exceed it (7.3 against 5.5 units of
        :math:`\epsilon s_{max}` for a random 40 x 30 matrix), so the bound reported takes
        ``p = max(m, n)``, the worst-case rounding constant of a length-``max(m, n)`` product:
        :math:`\max(m, n)\, \epsilon\, s_{max}`. ``atol`` holds the same bound (``tol = 0``).
        It covers the factorisation only: an operator materialised in float32 carries its own
        rounding.
        ``num_products``: ``n`` (materialisation) for an operator, 0 for an array.

    Cost: ``n`` forward products (operators), ``O(m n min(m, n))`` flops and ``O(m n)`` memory;
    the oracle for small problems only.

    References
    ----------
    Demmel, "Applied Numerical Linear Algebra", SIAM (1997), section 5.4 (backward stability of
    the SVD and Weyl's bound); LAPACK Users' Guide, section 4.9 (error bounds for the SVD).

    Examples
    --------
    >>> import numpy as np, matfree_tj as mtj
    >>> svd = mtj.dense_svd(np.diag([3.0, 1.0, 2.0]))
    >>> svd.s
    array([3., 2., 1.])
    >>> svd.method, svd.which, svd.status == "converged", svd.U is None
    ('dense', 'all', True, True)
    """
    is_op = isinstance(op, AbstractOperator)
    if is_op or np.ndim(op) == 2:  # anything else is refused below as "not a matrix"
        m, n = tuple(op.shape) if is_op else np.shape(op)
        _check_memory(m, n, op.dtype if is_op else None, np.dtype(dtype).itemsize, compute_vectors)
    A = op.to_dense() if is_op else op
    A = np.asarray(jax.device_get(A), dtype=dtype)
    if A.ndim != 2:
        raise ValueError(f"dense_svd needs a matrix, got shape {A.shape}.")
    if not np.all(np.isfinite(A)):
        raise FloatingPointError("dense_svd: the matrix has NaN or inf entries.")
    num_products = A.shape[1] if is_op else 0
    for driver in ("gesdd", "gesvd"):
        try:
            if compute_vectors:
                U, s, Vh = scipy.linalg.svd(
                    A, full_matrices=False, lapack_driver=driver, check_finite=False
                )
                if np.all(np.isfinite(s)) and np.all(np.isfinite(U)) and np.all(np.isfinite(Vh)):
                    return _triplets(s, U, Vh.T, A.shape, dtype, num_products)
            else:
                s = scipy.linalg.svd(A, compute_uv=False, lapack_driver=driver, check_finite=False)
                if np.all(np.isfinite(s)):
                    return _triplets(s, None, None, A.shape, dtype, num_products)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("dense_svd: LAPACK (gesdd and gesvd) failed to converge.")
