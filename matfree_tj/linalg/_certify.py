r"""Certification: residuals from fresh operator products, honest flags, the missed-value search.

A solver's recurrence estimates its residuals; the flags it reports must not rest on them.
:func:`finalise` recomputes, for each returned triplet,

.. math::  r_i = \sqrt{\|A v_i - s_i u_i\|^2 + \|A^T u_i - s_i v_i\|^2}

with two fresh products (``2k`` in all) and flags ``r_i <= tol s_i + atol``. By the symmetric
perturbation theorem applied to :math:`[[0, A], [A^T, 0]]` some exact singular value then lies
within :math:`r_i / \sqrt 2` of :math:`s_i`.

A small residual proves that :math:`s_i` is *a* singular value, not that it is the i-th: a
single-vector Krylov space holds one copy of a repeated value. :func:`find_missed` looks for
values beyond :math:`s_k` on a deflated operator and takes them in.

References
----------
Parlett, "The Symmetric Eigenvalue Problem", SIAM (1998), Thm 4.5.1 (residual bounds).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator, Projected, Raised
from ._checks import run_guarded
from ._precision import product_eps, product_error
from ._restart import default_keep
from ._results import SingularTriplets, Status

__all__ = ["finalise", "find_missed"]


@jax.jit
def _column(X, i):
    return X[:, i]


@jax.jit
def _residual_norm(Av, U, Atu, V, s, i):
    return jnp.sqrt(jnp.sum((Av - s[i] * U[:, i]) ** 2) + jnp.sum((Atu - s[i] * V[:, i]) ** 2))


@jax.jit
def _block_residuals(AV, U, AtU, V, s):
    return jnp.sqrt(jnp.sum((AV - s * U) ** 2, axis=0) + jnp.sum((AtU - s * V) ** 2, axis=0))


def _true_residuals(op: AbstractOperator, U, V, s, block: int = 1):
    """``sqrt(||A v_i - s_i u_i||^2 + ||A^T u_i - s_i v_i||^2)`` per column, from fresh
    products: the operator's own single products (compiled once per operator, shared with the
    Lanczos steps), so checking costs no new compilation of the products. ``block > 1``: block
    products of ``block`` columns (the shape the block solver compiled), the last chunk padded
    with zero columns (their products are not counted: a block product's cost is per call)."""
    if block > 1:
        k = s.shape[0]
        out = []
        for i in range(0, k, block):
            n = min(block, k - i)
            pad = ((0, 0), (0, block - n))
            Vc, Uc = jnp.pad(V[:, i : i + n], pad), jnp.pad(U[:, i : i + n], pad)
            AV, AtU = op.apply("matmat", Vc), op.apply("rmatmat", Uc)
            sc = jnp.pad(s[i : i + n], (0, block - n))
            out.append(np.asarray(_block_residuals(AV, Uc, AtU, Vc, sc))[:n])
        return jnp.asarray(np.concatenate(out))
    out = []
    for i in range(s.shape[0]):
        j = jnp.asarray(i)
        Av, Atu = op.mv(_column(V, j)), op.rmv(_column(U, j))
        out.append(float(_residual_norm(Av, U, Atu, V, s, j)))
    return jnp.asarray(np.asarray(out))


def finalise(
    op,
    U,
    V,
    s,
    *,
    tol,
    atol_rel,
    anorm,
    which,
    method,
    num_products,
    status,
    num_restarts=0,
    atol=None,
    block=1,
):
    """Recompute residuals from the operator and set honest convergence flags.

    ``atol`` defaults to ``atol_rel * eps_p * anorm``, the rounding floor of the products, with
    ``eps_p`` the epsilon of the precision the *products* are computed in
    (:func:`~matfree_tj.linalg._precision.product_eps`), not of the solver's working dtype.
    When the products are narrower than the working dtype (a bfloat16 operator), each residual
    also carries the products' own rounding, ``sqrt(2) eps_p anorm`` (one product each way),
    which the residual computed from them cannot see. The
    solver's own ``status`` is corrected by the flags: ``"converged"`` with an unflagged value
    becomes ``"max_products"``; any other status with every value flagged becomes
    ``"converged"``. Cost: ``2k`` products (``k = len(s)``). Returns a
    :class:`~matfree_tj.linalg.SingularTriplets` of jax arrays in the operator's dtype.
    """
    status = Status(status)
    dtype = op.dtype
    U = jnp.asarray(U, dtype)
    V = jnp.asarray(V, dtype)
    s_j = jnp.asarray(s, dtype)
    res = run_guarded(_true_residuals, op, U, V, s_j, block)
    k = int(s_j.shape[0])
    # block: every column computed counts, the zero padding of the last chunk included
    num_products += 2 * (k if block <= 1 else block * -(-k // block))
    eps_p = product_eps(op)
    if atol is None:
        atol = atol_rel * eps_p * float(anorm)
    res_np = np.asarray(res, dtype=np.float64)
    res_np = res_np + product_error(op, anorm)  # nonzero only for narrow products
    if not np.all(np.isfinite(res_np)):
        raise FloatingPointError("Residual products were not finite.")
    conv = res_np <= tol * np.abs(np.asarray(s, dtype=np.float64)) + atol
    if status == Status.CONVERGED and not conv.all():
        status = Status.MAX_PRODUCTS
    elif status != Status.CONVERGED and conv.all():
        status = Status.CONVERGED
    return SingularTriplets(
        s=s_j,
        U=U,
        V=V,
        residuals=jnp.asarray(res_np),
        converged=jnp.asarray(conv),
        num_products=int(num_products),
        status=status,
        method=method,
        which=which,
        tol=float(tol),
        atol=float(atol),
        num_restarts=int(num_restarts),
        anorm=float(anorm),
    )


def find_missed(
    op: AbstractOperator,
    res: SingularTriplets,
    *,
    solve: Callable[..., SingularTriplets],
    which: str,
    key: jax.Array,
    tol: float,
    atol: float | None,
    max_products: int,
    progress: Callable[[str], None] | None,
    max_basis: int | None = None,
) -> SingularTriplets:
    r"""Look for singular values beyond ``s_k`` that the Krylov space missed, and take them in.

    A single-vector Krylov space holds one direction per distinct singular value, so copies of
    a repeated value (or values it reached too late) can be missing from a top-k (bottom-k)
    whose every residual is small: each flagged value is a true singular value, but not
    necessarily the i-th. The check runs Lanczos for the one extreme triplet of an operator
    whose other singular values are the ones not yet found, from a fresh random start:

    * top: the deflated :math:`(I - U U^T) A (I - V V^T)` (found values become 0);
    * bottom: :math:`A + U (c I - S) V^T` with ``c`` the largest Ritz value seen (found values
      become ``c``; deflating them to 0 would make them the smallest).

    If that value is certified beyond ``s_k`` (residual intervals disjoint) it joins the set,
    the innermost leaves, and the check repeats; if it is certified on the far side (or ties
    with ``s_k``) the result stands. A bottom search that does not converge cannot certify
    anything (a Ritz value bounds the smallest value only from above): ``"unverified"``.

    ``solve`` is the restarted Lanczos driver (``_lanczos._lanczos_svd``), passed in so that
    certification sits below the drivers in the import graph.

    ``max_basis`` (bottom): the basis size the main run ended with (its restarts stalled at
    smaller sizes); the search starts there instead of at 80 vectors.

    Cost: one small Lanczos run per round, counted in ``num_products``; if the budget runs out
    first, ``status`` says ``"unverified"``.
    """
    top = which == "largest"
    M, N = op.shape
    r = min(M, N)
    dtype = op.dtype
    s = np.asarray(res.s, np.float64)
    U, V = np.asarray(res.U), np.asarray(res.V)
    resid = np.asarray(res.residuals, np.float64)
    used = int(res.num_products)
    found_s, found_U, found_V = [s], [U], [V]
    rounds = 0
    status = Status.CONVERGED
    # bottom: found values are raised to 2 lift, above every singular value (anorm may be nan
    # if unknown; 1 if every value found is 0 and no larger Ritz value was seen)
    lift = float(np.nanmax([float(res.anorm), 2.0 * float(np.max(s))]))
    lift = lift if lift > 0 else 1.0
    while True:
        Ua, Va = np.concatenate(found_U, axis=1), np.concatenate(found_V, axis=1)
        if Ua.shape[1] >= r - 1:
            break
        # bottom: start at the basis size the main run ended with (its restarts stalled below
        # that size, and the raised operator's spectrum is the same problem)
        mb = min(r - Ua.shape[1], 20 if top else max(80, max_basis or 0))
        left = max_products - used
        if left < 2 * mb + 2:
            status = Status.UNVERIFIED
            break
        key, k_start = jax.random.split(key)
        Uj, Vj = jnp.asarray(Ua, dtype), jnp.asarray(Va, dtype)
        if top:
            D = Projected(op, Uj, Vj)
        else:
            D = Raised(op, Uj, Vj, 2.0 * lift - np.concatenate(found_s))
        v0 = jax.random.normal(k_start, (N,), dtype)
        kth = int(np.argmin(s) if top else np.argmax(s))
        margin_k = resid[kth] / math.sqrt(2)
        sub = solve(
            D,
            1,
            key=key,
            which=which,
            tol=tol,
            # the k-set's absolute tolerance (100 eps ||A|| unless given): the deflated operator's
            # own norm can be ~0 (k at or above the rank), and a tolerance relative to it is
            # unreachable in floating point
            atol=res.atol if atol is None else atol,
            num_basis=mb,
            keep=default_keep(1, mb),
            max_products=left,
            v0=v0,
            stop_below=s[kth] - margin_k if top else None,
            max_basis=mb,
        )
        used += int(sub.num_products)
        rounds += 1
        s_new, r_new = float(sub.s[0]), float(sub.residuals[0]) / math.sqrt(2)
        if top:
            beyond = s_new - r_new > s[kth] + margin_k  # certified above s_k
            inside = s_new + r_new < s[kth] - margin_k  # certified below: the top-k stands
        else:
            if not bool(sub.converged[0]):
                status = Status.UNVERIFIED  # an unconverged Ritz value is only an upper bound
                break
            beyond = s_new + r_new < s[kth] - margin_k  # certified below s_k
            inside = s_new - r_new > s[kth] + margin_k
        if inside:
            break
        if not beyond:
            if bool(sub.converged[0]):
                break  # a tie with s_k (a copy of the k-th value): the k-set stands
            status = Status.UNVERIFIED
            break
        if not bool(sub.converged[0]):
            status = (
                Status.UNVERIFIED
            )  # a value beyond s_k exists, but its triplet did not converge
            break
        if progress is not None:
            side = "above" if top else "below"
            progress(
                f"lanczos ({which}): a value {s_new:.6g} {side} s_k = {s[kth]:.6g} was "
                "missed (a repeated value?); taking it in and checking again"
            )
        found_s.append(np.asarray(sub.s[:1], np.float64))
        found_U.append(np.asarray(sub.U)[:, :1])
        found_V.append(np.asarray(sub.V)[:, :1])
        # replace the innermost of the current k-set by the new value
        s = s.copy()
        U, V, resid = U.copy(), V.copy(), resid.copy()
        s[kth], U[:, kth], V[:, kth] = s_new, sub.U[:, 0], sub.V[:, 0]
        resid[kth] = float(sub.residuals[0])
    order = np.argsort(-s if top else s)
    if rounds and len(found_s) > 1:
        out = finalise(
            op,
            U[:, order],
            V[:, order],
            s[order],
            tol=res.tol,
            atol_rel=100,
            anorm=max(float(np.max(s)), float(res.anorm)),
            which=which,
            method=res.method,
            num_products=used,
            status=Status.CONVERGED,
            num_restarts=res.num_restarts,
            atol=res.atol,
        )
    else:
        out = dataclasses.replace(res, num_products=used)
    if status != Status.CONVERGED and out.status == Status.CONVERGED:
        out = dataclasses.replace(out, status=status)
    return out
