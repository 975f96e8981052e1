r"""Subspace geometry: principal cosines and projections (the analyses need them).

The principal (canonical) angles :math:`\theta_i` between the column spaces of ``A`` and ``B``
have cosines equal to the singular values of :math:`Q_A^T Q_B`, with :math:`Q_A, Q_B`
orthonormal bases (Bjorck & Golub 1973). Used e.g. to compare bulk subspaces across seeds
(Belrose & Scherlis 2024).

References
----------
Bjorck & Golub, "Numerical methods for computing angles between linear subspaces",
Math. Comp. 27 (1973).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["principal_cosines", "project_onto", "project_off"]

_HI = jax.lax.Precision.HIGHEST


def _matrix(x, name):
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (P, k) matrix of column vectors, got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def principal_cosines(A: jax.Array, B: jax.Array) -> jax.Array:
    r"""Cosines of the principal angles between ``span(A)`` and ``span(B)``, descending.

    Both are orthonormalised with a reduced QR; the cosines are the singular values of
    :math:`Q_A^T Q_B` (``HIGHEST`` precision), clipped to ``[0, 1]``. There are
    ``min(k_A, k_B)`` of them. Columns must be linearly independent (a rank-deficient input
    gives a meaningless QR factor).

    Cost: ``O(P (k_A^2 + k_B^2 + k_A k_B))`` flops; no operator products.

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> E = jnp.eye(4)
    >>> mtj.principal_cosines(E[:, :2], E[:, 1:3])
    Array([1., 0.], dtype=float32)
    """
    A = _matrix(A, "A")
    B = _matrix(B, "B")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must have the same number of rows, got {A.shape} and {B.shape}.")
    dtype = jnp.result_type(A.dtype, B.dtype)
    Qa, _ = jnp.linalg.qr(A.astype(dtype))
    Qb, _ = jnp.linalg.qr(B.astype(dtype))
    M = jnp.matmul(Qa.T, Qb, precision=_HI)
    return jnp.clip(jnp.linalg.svd(M, compute_uv=False), 0.0, 1.0)


def project_onto(x: jax.Array, basis: jax.Array) -> jax.Array:
    r"""Orthogonal projection :math:`Q Q^T x` of ``x`` onto ``span(basis)``.

    ``x`` is ``(P,)`` or ``(P, j)``.

    ``basis`` (``(P, k)``) is orthonormalised with QR first, so any full-rank basis works.

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> mtj.project_onto(jnp.array([1.0, 2.0, 3.0]), jnp.eye(3)[:, :2])
    Array([1., 2., 0.], dtype=float32)
    """
    basis = _matrix(basis, "basis")
    x = jnp.asarray(x)
    if x.shape[0] != basis.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but basis has {basis.shape[0]}.")
    Q, _ = jnp.linalg.qr(basis)
    return jnp.matmul(Q, jnp.matmul(Q.T, x, precision=_HI), precision=_HI)


def project_off(x: jax.Array, basis: jax.Array) -> jax.Array:
    r"""The component of ``x`` orthogonal to ``span(basis)``: :math:`x - Q Q^T x`, done twice.

    The second pass removes what rounding left of the span (as in CGS2).

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> mtj.project_off(jnp.array([1.0, 2.0, 3.0]), jnp.eye(3)[:, :2])
    Array([0., 0., 3.], dtype=float32)
    """
    basis = _matrix(basis, "basis")
    x = jnp.asarray(x)
    if x.shape[0] != basis.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but basis has {basis.shape[0]}.")
    Q, _ = jnp.linalg.qr(basis)
    for _ in range(2):
        x = x - jnp.matmul(Q, jnp.matmul(Q.T, x, precision=_HI), precision=_HI)
    return x
