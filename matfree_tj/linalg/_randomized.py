r"""Randomized SVD (Halko, Martinsson & Tropp 2011): block range finder with power iterations.

A Gaussian test matrix :math:`\Omega` (``n x l``, ``l = k + oversample``) is pushed through
:math:`(A A^T)^q A`, re-orthonormalising with QR between every product (HMT Algorithm 4.4,
"subspace iteration": without it the columns collapse onto the top singular vector in finite
precision). With :math:`Q` an orthonormal basis of the result, :math:`B = Q^T A` is computed as
:math:`(A^T Q)^T` and its small SVD :math:`B = \tilde U S V^T` gives :math:`U = Q \tilde U`.

Adaptive mode (``adaptive=True``) grows :math:`Q` block by block (Martinsson & Voronin 2016,
"randQB_b") until the posterior estimate of HMT (4.3),
:math:`\|(I - QQ^T) A\| \le 10 \sqrt{2/\pi} \max_j \|(I - QQ^T) A \omega_j\|` (probability at
least :math:`1 - 10^{-b}` for a block of ``b`` Gaussian columns), certifies the top ``k``
residuals to the tolerance, or ``max_rank`` is reached.

Every product is a block product (``op.matmat`` / ``op.rmatmat``): on a training Jacobian a
``b``-column block shares one primal run.

References
----------
Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM Review 53 (2011).
Martinsson & Voronin, "A randomized blocked algorithm for efficiently computing rank-revealing
factorizations of matrices", SIAM J. Sci. Comput. 38 (2016).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator
from ._certify import finalise
from ._checks import check_common, check_int, check_tol, run_guarded
from ._gkl import mm
from ._precision import product_eps
from ._results import SingularTriplets, Status

__all__ = ["randomized_svd"]


def _proj_off(Q, Y):
    """``(I - Q Q^T) Y`` twice (unfilled columns of ``Q`` are zero, so need no mask)."""
    Y = Y - mm(Q, mm(Q.T, Y))
    return Y - mm(Q, mm(Q.T, Y))


@eqx.filter_jit
def _probe(op: AbstractOperator, Q, Omega):
    """New block ``(I - QQ^T) A Omega`` and its largest column norm (the posterior estimate)."""
    Y = _proj_off(Q, op.matmat(Omega))
    return Y, jnp.max(jnp.linalg.norm(Y, axis=0))


@eqx.filter_jit
def _power_and_basis(op: AbstractOperator, Q, Y, num_power: int):
    """Power iterations on the block (QR between), a new orthonormal block ``Qi``, ``A^T Qi``."""
    Y, _ = jnp.linalg.qr(Y)

    def power(_, Y):
        Z, _ = jnp.linalg.qr(op.rmatmat(Y))
        return jnp.linalg.qr(_proj_off(Q, op.matmat(Z)))[0]

    Y = jax.lax.fori_loop(0, num_power, power, Y)  # a loop, not unrolled: one compile of the body
    Qi, _ = jnp.linalg.qr(_proj_off(Q, Y))
    return Qi, op.rmatmat(Qi)


def randomized_svd(
    op: AbstractOperator,
    k: int,
    *,
    key: jax.Array | None = None,
    tol: float = 1e-10,
    atol: float | None = None,
    oversample: int | None = None,
    power_iters: int = 2,
    adaptive: bool = False,
    block_size: int | None = None,
    max_rank: int | None = None,
    max_products: int | None = None,
) -> SingularTriplets:
    r"""Top ``k`` singular triplets by the randomized SVD.

    Usually called as ``top_singular(op, k, key=key, method="randomized", **opts)``.

    Parameters
    ----------
    op
        Any operator ``M x N``.
    k
        Number of triplets, ``1 <= k < min(M, N)``.
    key
        PRNG key for the Gaussian test matrices (required).
    tol, atol
        Residual tolerance for the convergence flags (``r_i <= tol s_i + atol``, ``r_i``
        recomputed from the operator) and, in adaptive mode, for stopping. ``atol`` defaults
        to ``100 eps_p ||A||`` with ``eps_p`` the epsilon of the products' precision; a
        bfloat16 operator runs in float32 (its QR and SVD included), as in
        :func:`~matfree_tj.top_singular`.
    oversample
        Extra columns ``p`` (``l = k + p``; HMT recommend 5-10). Default
        ``min(10, min(M, N) - k)``.
    power_iters
        ``q`` power iterations; the error factor improves like
        :math:`(\sigma_{l+1}/\sigma_k)^{2q+1}`.
    adaptive
        Grow the basis in blocks of ``block_size`` (default ``k + oversample``) until the
        posterior estimate certifies the top ``k`` or ``max_rank`` (default
        ``min(M, N, 8 (k + oversample))``) is reached.
    max_products
        Stop growing once the next block would exceed this budget (adaptive mode).

    Cost: ``(2q + 2) l`` products (``l`` forward, ``l`` reverse per power iteration, plus one
    reverse block for ``B``) plus ``2k`` for the residual check; adaptive: ``(2q + 3) b`` per
    block. Memory ``O((M + N) l)``.

    References
    ----------
    Halko, Martinsson & Tropp, SIAM Review 53 (2011), Algorithms 4.4 and 5.1.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, matfree_tj as mtj
    >>> A = jnp.diag(jnp.array([10.0, 5.0] + [0.01] * 48))
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)
    >>> res = mtj.top_singular(op, 2, key=jax.random.key(0), method="randomized", tol=1e-4)
    >>> [round(float(x), 4) for x in res.s]
    [10.0, 5.0]
    """
    op, key, k, tol, _ = check_common(
        op,
        k,
        key,
        "top_singular(method='randomized')",
        square=False,
        tol=tol,
        num_basis=None,
        default_basis=lambda k: 2 * k + 2,
    )
    M, N = op.shape
    r = min(M, N)
    dtype = op.dtype
    if oversample is None:
        oversample = min(10, r - k)
    oversample = check_int("oversample", oversample, 0, r - k, "min(shape) - k")
    power_iters = check_int("power_iters", power_iters, 0, 100)
    if atol is not None:
        atol = check_tol("atol", atol)
    l0 = k + oversample
    if not adaptive:
        b = l0
        L = l0
    else:
        b = l0 if block_size is None else check_int("block_size", block_size, 1, r)
        if max_rank is None:
            max_rank = min(r, 8 * l0)
        max_rank = check_int("max_rank", max_rank, k, r, "min(shape)")
        L = max_rank
    if max_products is None:
        max_products = 10**12
    max_products = check_int("max_products", max_products, 1, 10**12)
    eps = product_eps(op)  # the products' precision sets the floor, not the working dtype

    Q = jnp.zeros((M, L + b), dtype)  # + b: room for a last partial block
    Bt = jnp.zeros((N, L + b), dtype)
    filled = 0
    num_products = 0
    s_ritz = None
    status = Status.MAX_PRODUCTS
    i = 0
    while filled < L:
        bi = min(b, L - filled)
        Omega = jax.random.normal(jax.random.fold_in(key, i), (N, b), dtype)
        Y, err = run_guarded(_probe, op, Q, Omega)
        num_products += b
        if adaptive and s_ritz is not None:
            bound = 10 * math.sqrt(2 / math.pi) * float(err)
            a = atol if atol is not None else 100 * eps * float(s_ritz[0])
            if np.all(bound <= tol * s_ritz[:k] + a):
                status = Status.CONVERGED
                break
        if adaptive and num_products + (2 * power_iters + 2) * b + 2 * k > max_products:
            break
        Qi, Bti = run_guarded(_power_and_basis, op, Q, Y, power_iters)
        num_products += (2 * power_iters + 1) * b
        Q = jax.lax.dynamic_update_slice(Q, Qi[:, :bi] if bi < b else Qi, (0, filled))
        Bt = jax.lax.dynamic_update_slice(Bt, Bti[:, :bi] if bi < b else Bti, (0, filled))
        filled += bi
        i += 1
        Vb, S, Ubt = np.linalg.svd(
            np.asarray(Bt[:, :filled], dtype=np.float64), full_matrices=False
        )
        s_ritz = S
        if not np.all(np.isfinite(S)):
            raise FloatingPointError("randomized_svd: non-finite values in B = Q^T A.")
        if not adaptive:
            status = Status.CONVERGED  # flags are decided by the residual check below
            break
    if s_ritz is None:
        raise ValueError(f"max_products={max_products} is too small for one block of {b}.")
    U = mm(Q[:, :filled], jnp.asarray(Ubt.T[:, :k], dtype))
    V = jnp.asarray(Vb[:, :k], dtype)
    return finalise(
        op,
        U,
        V,
        s_ritz[:k],
        tol=tol,
        atol_rel=100,
        anorm=float(s_ritz[0]),
        which="largest",
        method="randomized",
        num_products=num_products,
        status=status,
        num_restarts=i,
        atol=atol,
    )
