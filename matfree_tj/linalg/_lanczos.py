r"""Golub-Kahan-Lanczos bidiagonalisation: top and bottom singular triplets, matrix-free.

The kernel (:func:`gkl_cycle`) extends orthonormal bases :math:`U_m, V_{m+1}` with

.. math::  A V_m = U_m R_m, \qquad A^T U_m = V_m R_m^T + f\, e_m^T,

where :math:`R_m = U_m^T A V_m` is stored in full (upper bidiagonal in exact arithmetic; it
gains an "arrow" column after a thick restart), every new vector is reorthogonalised twice
against the whole basis (classical Gram-Schmidt, twice: "twice is enough", Giraud et al.),
and :math:`f = \beta v_{m+1}` is the residual direction. The singular triplets
:math:`(s_i, x_i, y_i)` of the small :math:`R_m` give Ritz triplets
:math:`(s_i, U_m x_i, V_m y_i)` with :math:`A V_m y_i = s_i U_m x_i` exactly and
:math:`\|A^T U_m x_i - s_i V_m y_i\| = \beta |e_m^T x_i|` (the cheap convergence estimate).

Memory is bounded by thick restarts (Baglama & Reichel 2005; Wu & Simon 2000): after ``m``
steps keep the ``keep`` wanted Ritz vectors plus :math:`v_{m+1}` and continue. The bases are
preallocated ``(m, P)`` arrays extended in place (donated) by two small compiled half-step
kernels per step; the restarted driver calls the operator's own products between them from
Python, so the products (a training run's JVP and VJP) are compiled once per operator and
shared by every cycle, restart, residual check and solver, instead of being compiled into each
solver kernel (seconds each on CPU). SLQ runs the same half-steps inside one traced
``lax.fori_loop`` (:func:`gkl_cycle`), vmapped over its probes.

Convergence flags come from residual norms recomputed with fresh operator products at the end
(``2k`` products), never from the recurrence.

The bottom end (:func:`bottom_singular`) is the same machinery keeping the *smallest* Ritz
vectors at each restart. Working on :math:`A` (not :math:`A^T A`) resolves a small singular
value to absolute accuracy :math:`\sim\epsilon\|A\|` once the Krylov space holds its
singular subspace; how fast that happens depends on gaps relative to :math:`\|A\|^2`, so a
dense cluster of tiny values (1e-9 .. 1e-3 in the paper's MLP) may not converge within a
budget. Flags are therefore per value and certified: ``converged[i]`` implies an exact singular
value within ``residuals[i] / sqrt(2)`` of ``s[i]``.

Breakdown (an exactly invariant Krylov space, e.g. the linear-regression oracle whose
:math:`J^T J` has only ``n + 1`` distinct eigenvalues) continues with a fresh direction
orthogonal to the basis, so the rest of the spectrum is still reached.

``block_size > 1`` runs :func:`gkl_block_cycle`: block products (``op.matmat`` /
``op.rmatmat``), the same column-by-column orthogonalisation and thick restarts.

References
----------
Golub & Kahan, "Calculating the singular values and pseudo-inverse of a matrix", SIAM J. Numer.
Anal. B 2 (1965). Baglama & Reichel, "Augmented implicitly restarted Lanczos bidiagonalization
methods", SIAM J. Sci. Comput. 27 (2005). Wu & Simon, "Thick-restart Lanczos method for large
symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22 (2000).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator, Projected, Raised, Transposed
from ._results import SingularTriplets

__all__ = ["top_singular", "bottom_singular", "gkl_cycle", "gkl_block_cycle"]

_HI = jax.lax.Precision.HIGHEST


def _mm(a, b):
    return jnp.matmul(a, b, precision=_HI)


# --------------------------------------------------------------------------------------
# Validation helpers (Python, before tracing)
# --------------------------------------------------------------------------------------


def check_operator(op: Any, who: str, *, square: bool = False) -> AbstractOperator:
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
    return op


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


# --------------------------------------------------------------------------------------
# The kernel: one jit-compiled GKL cycle with full reorthogonalisation
# --------------------------------------------------------------------------------------


def _orth2(B, w, mask):
    """Orthogonalise ``w`` against the rows of ``B`` selected by ``mask``, twice (CGS2)."""
    c1 = mask * _mm(B, w)
    w = w - _mm(c1, B)
    c2 = mask * _mm(B, w)
    w = w - _mm(c2, B)
    return w, c1 + c2


def _normalise_or_replace(B, w, mask, norm_in, key, dtype, replace):
    """Normalise ``w``; on breakdown (``w`` numerically in span(B)) take a new direction.

    Breakdown means an invariant subspace was found. With ``replace`` the process continues
    with a random vector orthogonal to the basis (its coupling coefficient is zero, so the
    relation stays exact) and goes on to find the rest of the spectrum; without it (SLQ, where
    the quadrature is already exact) the vector is set to zero, so later steps add only zero
    rows and columns to ``R`` (nodes of weight zero). ``lax.cond`` keeps the random branch off
    the common path.
    """
    eps = jnp.finfo(dtype).eps
    nrm = jnp.linalg.norm(w)
    broke = nrm <= 100 * eps * jnp.maximum(norm_in, jnp.finfo(dtype).tiny)

    def fresh(_):
        if not replace:
            return jnp.zeros_like(w)
        # A cheap hash-based pseudo-random direction (generic, so not in the span of the
        # basis); threefry inside the loop would double the compile time for a rare branch.
        i = jnp.arange(w.shape[0], dtype=dtype)
        r = jnp.sin(i * 12.9898 + key * 78.233) * 43758.5453
        r = r - jnp.floor(r) - 0.5
        r, _ = _orth2(B, r, mask)
        rn = jnp.linalg.norm(r)
        return jnp.where(rn > 0, r / jnp.where(rn > 0, rn, 1), 0)

    def scaled(_):
        return w / jnp.where(nrm > 0, nrm, 1)

    w_out = jax.lax.cond(broke, fresh, scaled, None)
    coef = jnp.where(broke, jnp.zeros_like(nrm), nrm)
    return w_out, coef, broke


def _left_step(Ut, R, w, j, key, replace: bool):
    """One left half-step: orthogonalise ``w = A v_j`` against ``u_0 .. u_{j-1}`` (CGS2),
    normalise it into ``u_j`` and write column ``j`` of ``R = U^T A V``."""
    dtype = Ut.dtype
    norm_in = jnp.linalg.norm(w)
    mask = (jnp.arange(Ut.shape[0]) < j).astype(dtype)
    w, c = _orth2(Ut, w, mask)
    u, alpha, broke = _normalise_or_replace(Ut, w, mask, norm_in, key, dtype, replace)
    return Ut.at[j].set(u), R.at[:, j].set(c.at[j].set(alpha)), u, alpha, broke


def _right_step(Vt, z, j, key, replace: bool):
    """One right half-step: orthogonalise ``z = A^T u_j`` against ``v_0 .. v_j`` and normalise
    it into ``v_{j+1}`` (the coefficients are ``R^T``'s, already known); returns ``beta``."""
    dtype = Vt.dtype
    norm_in = jnp.linalg.norm(z)
    mask = (jnp.arange(Vt.shape[0]) <= j).astype(dtype)
    z, _ = _orth2(Vt, z, mask)
    v, beta, broke = _normalise_or_replace(Vt, z, mask, norm_in, key, dtype, replace)
    return Vt.at[j + 1].set(v), v, beta, broke


def _gkl_cycle(op: AbstractOperator, Ut, Vt, R, start, seed, replace: bool = True):
    r"""Run Golub-Kahan steps ``start .. m-1`` on bases ``Ut: (m, M)``, ``Vt: (m+1, N)``.

    Rows ``0 .. start`` of ``Vt`` (``start`` included: the next direction) and rows
    ``0 .. start-1`` of ``Ut`` must be orthonormal; ``R[:start, :start]`` must equal
    ``Ut[:start] A Vt[:start]^T``. Returns ``(Ut, Vt, R, beta, finite, num_breakdowns)`` with
    ``R = U^T A V`` (``m x m``), the last residual norm ``beta`` (its direction in ``Vt[m]``)
    and a flag that every product was finite. ``replace`` (static): continue after a
    breakdown with a random orthogonal direction (True) or with zeros (False).
    Cost: ``2 (m - start)`` products; memory: the
    bases, ``(2m + 1) P``.

    This traced form puts the operator's products inside one ``fori_loop`` (SLQ vmaps it over
    probes, so the products become block products); the restarted top/bottom driver runs the
    same half-steps from Python instead (:func:`_gkl_cycle_eager`).
    """
    m = Ut.shape[0]
    dtype = Vt.dtype
    key = jnp.asarray(seed, dtype)

    def step(j, state):
        Ut, Vt, R, beta, finite, nbreak = state
        ka = key + 2.0 * j.astype(dtype) + 1.0
        Ut, R, u, alpha, broke_a = _left_step(Ut, R, op.mv(Vt[j]), j, ka, replace)
        Vt, _, beta, broke_b = _right_step(Vt, op.rmv(u), j, ka + 1.0, replace)
        finite = finite & jnp.isfinite(alpha) & jnp.isfinite(beta)
        nbreak = nbreak + broke_a.astype(jnp.int32) + broke_b.astype(jnp.int32)
        return Ut, Vt, R, beta, finite, nbreak

    init = (Ut, Vt, R, jnp.zeros((), dtype), jnp.array(True), jnp.zeros((), jnp.int32))
    return jax.lax.fori_loop(start, m, step, init)


gkl_cycle = eqx.filter_jit(_gkl_cycle)

# The half-steps as small compiled kernels (no operator inside: compiled once per basis shape
# and shared by every operator). The bases are donated: each step extends them in place. Plain
# jax.jit: its dispatch costs ~0.4 ms per call against ~0.65 ms for eqx.filter_jit (measured,
# P = 9610), which matters when a product costs about a millisecond.
_left_step_jit = {
    r: jax.jit(functools.partial(_left_step, replace=r), donate_argnums=(0, 1))
    for r in (True, False)
}
_right_step_jit = {
    r: jax.jit(functools.partial(_right_step, replace=r), donate_argnums=(0,))
    for r in (True, False)
}


def _raw_products(op: AbstractOperator):
    """The operator's compiled product functions, without the per-call shape and finiteness
    checks of ``op.mv`` (the vectors come from the solver's own bases, and a non-finite product
    shows in the Lanczos coefficients, which the driver checks once per cycle): each check is a
    host round trip, comparable to a product of a millisecond. Subclasses that override the
    products (deflated, transposed or dense operators) keep their methods."""
    return (lambda v: op.apply("mv", v)), (lambda u: op.apply("rmv", u))


def _gkl_cycle_eager(
    op: AbstractOperator, Ut, Vt, R, start: int, seed: float, replace: bool = True
):
    """:func:`gkl_cycle` driven from Python: the operator's own products (``op.mv``,
    ``op.rmv``, each compiled once per operator and reused by every solver and restart) between
    compiled half-steps. Compiling the products into each solver kernel cost seconds per kernel
    on CPU (the training loop's JVP and VJP, with a cached linearisation's residuals embedded as
    constants); dispatching them from Python costs microseconds against products of
    milliseconds. Same returns as :func:`gkl_cycle`."""
    dtype = Vt.dtype
    m = Ut.shape[0]
    v = Vt[start]
    coefs, broken = [], []
    beta = jnp.zeros((), dtype)
    left, right = _left_step_jit[bool(replace)], _right_step_jit[bool(replace)]
    mv, rmv = _raw_products(op)
    for j in range(int(start), m):
        ka = float(seed) + 2.0 * j + 1.0
        Ut, R, u, alpha, broke_a = left(Ut, R, mv(v), jnp.asarray(j), jnp.asarray(ka, dtype))
        Vt, v, beta, broke_b = right(Vt, rmv(u), jnp.asarray(j), jnp.asarray(ka + 1.0, dtype))
        coefs += [alpha, beta]
        broken += [broke_a, broke_b]
    # host-side bookkeeping (numpy): eager jnp ops would each compile once per cycle length
    finite = bool(np.all(np.isfinite(np.asarray([float(c) for c in coefs]))))
    nbreak = int(sum(bool(b) for b in broken))
    return Ut, Vt, R, beta, finite, nbreak


@eqx.filter_jit
def gkl_block_cycle(op: AbstractOperator, Ut, Vt, R, start, seed, block_size: int):
    r"""Block Golub-Kahan steps: rows ``start .. m-1`` of ``Ut``, ``b = block_size`` at a time.

    Products are block products (``op.matmat`` / ``op.rmatmat`` on ``b`` columns: one shared
    primal run on a training Jacobian); the orthogonalisation is still column by column
    (CGS2 with breakdown replacement), so the relations of :func:`gkl_cycle` hold with a
    band of width ``b``: :math:`A V_m = U_m R_m` and
    :math:`A^T U_m = V_m R_m^T + V_{ext} D` with :math:`V_{ext}` the ``b`` rows after ``m``
    of ``Vt`` (``(m + b, N)``). Needs ``(m - start) % b == 0`` and rows ``start ..
    start + b - 1`` of ``Vt`` orthonormal to the rest. Returns ``(Ut, Vt, R, D, finite)``.
    Cost: ``2 (m - start)`` products.
    """
    m = Ut.shape[0]
    b = block_size
    dtype = Vt.dtype
    rows_u = jnp.arange(m)
    rows_v = jnp.arange(m + b)
    key = jnp.asarray(seed, dtype)
    num_blocks = (m - start) // b

    def block(jb, state):
        Ut, Vt, R, D, finite = state
        o = start + jb * b
        Vb = jax.lax.dynamic_slice_in_dim(Vt, o, b, axis=0)
        W = op.matmat(Vb.T)  # (M, b)

        def left(i, st):
            Ut, R = st
            w = W[:, i]
            norm_in = jnp.linalg.norm(w)
            mask = (rows_u < o + i).astype(dtype)
            w, c = _orth2(Ut, w, mask)
            u, alpha, _ = _normalise_or_replace(
                Ut, w, mask, norm_in, key + 3.0 * (o + i), dtype, True
            )
            Ut = Ut.at[o + i].set(u)
            R = R.at[:, o + i].set(c.at[o + i].set(alpha))
            return Ut, R

        Ut, R = jax.lax.fori_loop(0, b, left, (Ut, R))
        Ub = jax.lax.dynamic_slice_in_dim(Ut, o, b, axis=0)
        Z = op.rmatmat(Ub.T)  # (N, b)

        def right(i, st):
            Vt, D = st
            z = Z[:, i]
            norm_in = jnp.linalg.norm(z)
            row = o + b + i
            mask = (rows_v < row).astype(dtype)
            z, d = _orth2(Vt, z, mask)
            v, beta, _ = _normalise_or_replace(
                Vt, z, mask, norm_in, key + 3.0 * row + 1.0, dtype, True
            )
            Vt = Vt.at[row].set(v)
            d = d.at[row].set(beta)
            # coefficients of A^T u on the rows beyond m (nonzero only in the last block)
            D = D.at[:, o + i].set(d[m:])
            return Vt, D

        Vt, D = jax.lax.fori_loop(0, b, right, (Vt, D))
        finite = finite & jnp.all(jnp.isfinite(R)) & jnp.all(jnp.isfinite(D))
        return Ut, Vt, R, D, finite

    D = jnp.zeros((b, m), dtype)
    init = (Ut, Vt, R, D, jnp.array(True))
    return jax.lax.fori_loop(0, num_blocks, block, init)


@eqx.filter_jit
def _thick_restart_block(Ut, Vt, X, Y, S, idx, block_size: int):
    """Block thick restart: kept Ritz vectors, then the ``b`` residual directions."""
    m = Ut.shape[0]
    keep = idx.shape[0]
    dtype = Vt.dtype
    Xk = X[:, idx].astype(dtype)
    Yk = Y[:, idx].astype(dtype)
    Unew = jnp.zeros_like(Ut).at[:keep].set(_mm(Xk.T, Ut))
    Vnew = jnp.zeros_like(Vt).at[:keep].set(_mm(Yk.T, Vt[:m]))
    Vnew = Vnew.at[keep : keep + block_size].set(Vt[m : m + block_size])
    Rnew = jnp.zeros((m, m), dtype).at[jnp.arange(keep), jnp.arange(keep)].set(S[idx].astype(dtype))
    return Unew, Vnew, Rnew


def ritz(R):
    """SVD of the projected matrix: ``R = X diag(S) Y^T`` with ``S`` descending (float64 numpy)."""
    X, S, Yt = np.linalg.svd(np.asarray(R, dtype=np.float64))
    return X, S, Yt.T


@eqx.filter_jit(donate="all")
def _thick_restart(Ut, Vt, X, Y, S, idx):
    """Keep Ritz vectors ``idx`` (rows ``X^T U``, ``Y^T V``), then the residual direction."""
    m = Ut.shape[0]
    keep = idx.shape[0]
    dtype = Vt.dtype
    Xk = X[:, idx].astype(dtype)
    Yk = Y[:, idx].astype(dtype)
    Unew = jnp.zeros_like(Ut).at[:keep].set(_mm(Xk.T, Ut))
    Vnew = jnp.zeros_like(Vt).at[:keep].set(_mm(Yk.T, Vt[:m])).at[keep].set(Vt[m])
    Rnew = jnp.zeros((m, m), dtype).at[jnp.arange(keep), jnp.arange(keep)].set(S[idx].astype(dtype))
    return Unew, Vnew, Rnew


@jax.jit
def _column(X, i):
    return X[:, i]


@jax.jit
def _residual_norm(Av, U, Atu, V, s, i):
    return jnp.sqrt(jnp.sum((Av - s[i] * U[:, i]) ** 2) + jnp.sum((Atu - s[i] * V[:, i]) ** 2))


def _true_residuals(op: AbstractOperator, U, V, s):
    """``sqrt(||A v_i - s_i u_i||^2 + ||A^T u_i - s_i v_i||^2)`` per column, from fresh
    products: the operator's own single products (compiled once per operator, shared with the
    Lanczos steps), so checking costs no new compilation of the products."""
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
):
    """Recompute residuals from the operator and set honest convergence flags."""
    dtype = op.dtype
    U = jnp.asarray(U, dtype)
    V = jnp.asarray(V, dtype)
    s_j = jnp.asarray(s, dtype)
    res = run_guarded(_true_residuals, op, U, V, s_j)
    num_products += 2 * int(s_j.shape[0])
    if atol is None:
        atol = atol_rel * float(jnp.finfo(dtype).eps) * float(anorm)
    res_np = np.asarray(res, dtype=np.float64)
    if not np.all(np.isfinite(res_np)):
        raise FloatingPointError("Residual products were not finite.")
    conv = res_np <= tol * np.abs(np.asarray(s, dtype=np.float64)) + atol
    if status == "converged" and not conv.all():
        status = "max_products"
    elif status != "converged" and conv.all():
        status = "converged"
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


# --------------------------------------------------------------------------------------
# Restarted GKL driver
# --------------------------------------------------------------------------------------


def _check_v0(v0, N, dtype):
    v0 = jnp.asarray(v0)
    if v0.shape != (N,):
        raise ValueError(f"v0 must have shape ({N},), got {v0.shape}.")
    return v0.astype(dtype)


def _lanczos_svd(
    op,
    k,
    *,
    key,
    which,
    tol,
    atol,
    num_basis,
    keep,
    max_products,
    v0,
    block_size=1,
    progress=None,
    stop_below=None,
):
    M, N = op.shape
    dtype = op.dtype
    r = min(M, N)
    m = num_basis
    eps = float(jnp.finfo(dtype).eps)
    k_start, k_loop = jax.random.split(key)
    seed0 = float(jax.random.uniform(k_loop, (), minval=0.0, maxval=100.0))
    if v0 is None:
        v0 = jax.random.normal(k_start, (N,), dtype)
    else:
        v0 = _check_v0(v0, N, dtype)
    nv = float(jnp.linalg.norm(v0))
    if not (math.isfinite(nv) and nv > 0):
        raise ValueError("v0 must be a finite nonzero vector.")
    b = block_size
    Ut = jnp.zeros((m, M), dtype)
    if b == 1:
        Vt = jnp.zeros((m + 1, N), dtype).at[0].set(v0 / nv)
    else:
        # first block: v0 and b - 1 random directions, orthonormalised
        V0 = jax.random.normal(k_start, (N, b), dtype).at[:, 0].set(v0 / nv)
        V0, _ = jnp.linalg.qr(V0)
        Vt = jnp.zeros((m + b, N), dtype).at[:b].set(V0.T)
    R = jnp.zeros((m, m), dtype)
    start = 0
    num_products = 0
    anorm = 0.0
    cycle = 0
    status = "max_products"
    while True:
        seed = seed0 + 1000.0 * cycle
        if b == 1:
            Ut, Vt, R, beta, finite, _ = run_guarded(
                _gkl_cycle_eager, op, Ut, Vt, R, start, float(seed)
            )
        else:
            Ut, Vt, R, D, finite = run_guarded(
                gkl_block_cycle, op, Ut, Vt, R, jnp.asarray(start), jnp.asarray(seed, dtype), b
            )
        num_products += 2 * (m - start)
        if not bool(finite):
            raise FloatingPointError(
                "A Lanczos step produced NaN or inf (the operator returned non-finite values)."
            )
        X, S, Y = ritz(R)
        anorm = max(anorm, float(S[0]))
        order = np.arange(m) if which == "largest" else np.arange(m)[::-1]
        if b == 1:
            est = float(beta) * np.abs(X[m - 1, order[:k]])
        else:
            est = np.linalg.norm(np.asarray(D, np.float64) @ X[:, order[:k]], axis=0)
        a = atol if atol is not None else 100 * eps * anorm
        if progress is not None:
            done = int(np.sum(est <= tol * S[order[:k]] + a))
            progress(
                f"lanczos ({which}) cycle {cycle}: {num_products} products, {done}/{k} "
                f"estimated converged, s in [{S[order[k - 1]]:.4g}, {S[order[0]]:.4g}]"
            )
        # The recurrence estimate ignores rounding in A v - s u; require a margin below the
        # target so that the final check from fresh products rarely disagrees.
        if np.all(est <= 0.1 * (tol * S[order[:k]] + a)) or m >= r:
            status = "converged"
            break
        if stop_below is not None and S[order[0]] + est[0] < stop_below:
            break  # the caller only needs to know that the top value lies below stop_below
        step_cost = 2 * (m - keep)
        if num_products + step_cost + 2 * k > max_products:
            break
        idx = order[:keep]
        if b == 1:
            Ut, Vt, R = _thick_restart(
                Ut, Vt, jnp.asarray(X), jnp.asarray(Y), jnp.asarray(S), jnp.asarray(idx)
            )
        else:
            Ut, Vt, R = _thick_restart_block(
                Ut, Vt, jnp.asarray(X), jnp.asarray(Y), jnp.asarray(S), jnp.asarray(idx), b
            )
        start = keep
        cycle += 1
    idx = order[:k]
    U = _mm(jnp.asarray(X[:, idx], dtype).T, Ut).T
    V = _mm(jnp.asarray(Y[:, idx], dtype).T, Vt[:m]).T
    return finalise(
        op,
        U,
        V,
        S[idx],
        tol=tol,
        atol_rel=100,
        anorm=anorm,
        which=which,
        method="lanczos",
        num_products=num_products,
        status=status,
        num_restarts=cycle,
        atol=atol,
    )


def _check_common(op, k, key, who, *, square, tol, num_basis, default_basis):
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


def _default_keep(k, m):
    return max(k, min(m - 2, k + max(1, (m - k) // 2)))


def top_singular(
    op: AbstractOperator,
    k: int,
    *,
    key: jax.Array | None = None,
    method: str = "lanczos",
    tol: float = 1e-10,
    atol: float | None = None,
    num_basis: int | None = None,
    keep: int | None = None,
    max_products: int | None = None,
    v0: jax.Array | None = None,
    block_size: int | None = None,
    progress: Callable[[str], None] | None = None,
    verify: bool = True,
    **opts: Any,
) -> SingularTriplets:
    r"""The ``k`` largest singular triplets of ``op`` (descending).

    ``method="lanczos"`` (default): thick-restarted Golub-Kahan-Lanczos bidiagonalisation with
    full reorthogonalisation (twice) in a basis of ``num_basis`` vectors. ``method="randomized"``:
    the randomized SVD of Halko, Martinsson & Tropp (see
    :func:`matfree_tj._randomized.randomized_svd` for its options, passed through ``**opts``).

    Each cycle projects :math:`A` onto Krylov bases, :math:`R = U^T A V`, and takes the SVD
    of the small :math:`R`; the ``keep`` largest Ritz vectors are kept at a restart. A triplet is
    converged when its residual, recomputed from the operator,
    :math:`r_i = (\|A v_i - s_i u_i\|^2 + \|A^T u_i - s_i v_i\|^2)^{1/2}`, satisfies
    :math:`r_i \le tol \cdot s_i + atol`; then some exact singular value lies within
    :math:`r_i/\sqrt2` of :math:`s_i` (and within :math:`r_i^2/gap` for isolated values).

    Parameters
    ----------
    op
        The operator (any shape).
    k
        Number of triplets, ``1 <= k < min(shape)``.
    key
        PRNG key for the start vector (required).
    method
        ``"lanczos"`` or ``"randomized"``.
    tol, atol
        Relative and absolute residual tolerance (``atol`` defaults to
        ``100 eps ||A||``, the floor set by rounding).
    num_basis
        Krylov basis size ``m`` (default ``min(P, max(2k + 20, 40))``); memory
        ``(2m + 1) P`` numbers.
    keep
        Ritz vectors kept at a thick restart (default ``k + (m - k) // 2``).
    max_products
        Budget of operator products (default ``max(50 m, 2000)``), final residual check
        (``2k``) included; when spent, the unconverged triplets are flagged so.
    v0
        Optional start vector.
    block_size
        Columns per block product. Lanczos (default 1): ``b > 1`` runs block Golub-Kahan
        (:func:`gkl_block_cycle`): every product is a block product of ``b`` columns
        (``op.matmat`` / ``op.rmatmat``), which on a training Jacobian shares one primal run
        among the columns (on CPU a 64-column block costs about a third per column of a
        single product). Block Krylov spaces need more products than single-vector ones for
        the same accuracy, so this pays off when the per-column saving is large.
        ``num_basis`` is rounded down to a multiple of ``b``.
        Randomized: the block of the adaptive range finder (default ``k + oversample``).
    progress
        Optional callable receiving one line per restart cycle (products so far, triplets
        estimated converged) -- for long runs. Lanczos only.
    verify
        Lanczos: after convergence, check that no singular value above ``s_k`` was missed
        (a single-vector Krylov space holds one copy of a repeated value) by a short Lanczos
        run on the operator with the found triplets deflated, and take in any value it
        certifies above ``s_k`` (then check again). Costs one small run per round (typically
        40-150 products, counted in ``num_products``); ``status="unverified"`` if the budget
        runs out first. ``False`` skips it: every flagged value is then still a true singular
        value, but not necessarily among the top ``k``.

    Returns
    -------
    SingularTriplets
        ``s, U, V, residuals, converged, num_products, status``.

    Cost: ``2 m`` products for the first cycle, ``2 (m - keep)`` per restart, ``2k`` for the
    residual check; ``O(P m)`` flops per step for the reorthogonalisation.

    References
    ----------
    Golub & Kahan (1965); Baglama & Reichel, SIAM J. Sci. Comput. 27 (2005);
    Halko, Martinsson & Tropp, SIAM Review 53 (2011).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, matfree_tj as mtj
    >>> A = jnp.diag(jnp.arange(1.0, 101.0))
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)
    >>> res = mtj.top_singular(op, 3, key=jax.random.key(0), tol=1e-5)
    >>> [round(float(x), 3) for x in res.s]
    [100.0, 99.0, 98.0]
    """
    if method == "randomized":
        from ._randomized import randomized_svd

        if num_basis is not None or keep is not None or v0 is not None:
            raise TypeError("num_basis, keep and v0 are options of method='lanczos'.")
        return randomized_svd(
            op,
            k,
            key=key,
            tol=tol,
            atol=atol,
            max_products=max_products,
            block_size=block_size,
            **opts,
        )
    if method != "lanczos":
        raise ValueError(f"method must be 'lanczos' or 'randomized', got {method!r}.")
    if opts:
        raise TypeError(f"top_singular(method='lanczos') got unknown options {sorted(opts)}.")
    op, key, k, tol, m = _check_common(
        op,
        k,
        key,
        "top_singular",
        square=False,
        tol=tol,
        num_basis=num_basis,
        default_basis=lambda k: max(2 * k + 20, 40),
    )
    return _run(
        op,
        k,
        key=key,
        which="largest",
        tol=tol,
        atol=atol,
        m=m,
        keep=keep,
        max_products=max_products,
        v0=v0,
        block_size=1 if block_size is None else block_size,
        progress=progress,
        verify=bool(verify),
    )


def _run(
    op,
    k,
    *,
    key,
    which,
    tol,
    atol,
    m,
    keep,
    max_products,
    v0,
    block_size=1,
    progress=None,
    verify=False,
):
    M, N = op.shape
    if M < N:
        # Wide: run on A^T (tall), whose right Krylov basis can become complete, and swap
        # the vectors back (the residuals are symmetric in U and V).
        if v0 is not None:
            v0 = _check_v0(v0, N, op.dtype)
            v0 = op.mv(v0)
        res = _run(
            Transposed(op),
            k,
            key=key,
            which=which,
            tol=tol,
            atol=atol,
            m=m,
            keep=keep,
            max_products=max_products,
            v0=v0,
            block_size=block_size,
            progress=progress,
            verify=verify,
        )
        return dataclasses.replace(res, U=res.V, V=res.U)
    b = check_int("block_size", block_size, 1, max(1, min(op.shape) // 2), "min(shape) // 2")
    if b > 1:
        # whole blocks only: round the basis down to a multiple of b and leave room for the
        # b residual directions
        r = min(op.shape)
        if m + b > r:
            m = r - b
        m = b * (m // b)
        if m < k + b:
            raise ValueError(
                f"With block_size={b} the basis (num_basis rounded down to a multiple of b, at "
                f"most min(shape) - b = {r - b}) must hold k + b = {k + b} vectors; got {m}. "
                "Increase num_basis or use a smaller block_size."
            )
        keep0 = (
            _default_keep(k, m)
            if keep is None
            else check_int("keep", keep, k, m - 1, "num_basis - 1")
        )
        keep = m - b * max(1, (m - keep0) // b)  # >= min(keep0, m - b) >= k
    else:
        if keep is None:
            keep = _default_keep(k, m)
        keep = check_int("keep", keep, k, m - 1, "num_basis - 1")
    if m == min(op.shape):
        keep = min(keep, m - 1)
    if max_products is None:
        max_products = max(50 * m, 2000)
    max_products = check_int("max_products", max_products, 2 * m + 2 * k, 10**12)
    if atol is not None:
        atol = check_tol("atol", atol)
    k_run, k_check = jax.random.split(key)
    res = _lanczos_svd(
        op,
        k,
        key=k_run,
        which=which,
        tol=tol,
        atol=atol,
        num_basis=m,
        keep=keep,
        max_products=max_products,
        v0=v0,
        block_size=b,
        progress=progress,
    )
    if verify and res.status == "converged" and k < min(op.shape):
        res = _find_missed(
            op,
            res,
            which=which,
            key=k_check,
            tol=tol,
            atol=atol,
            max_products=max_products,
            progress=progress,
        )
    return res


def _find_missed(op, res, *, which, key, tol, atol, max_products, progress):
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
    status = "converged"
    # bottom: found values are raised to 2 lift, above every singular value (anorm may be nan
    # if unknown; 1 if every value found is 0 and no larger Ritz value was seen)
    lift = float(np.nanmax([float(res.anorm), 2.0 * float(np.max(s))]))
    lift = lift if lift > 0 else 1.0
    while True:
        Ua, Va = np.concatenate(found_U, axis=1), np.concatenate(found_V, axis=1)
        if Ua.shape[1] >= r - 1:
            break
        mb = min(r - Ua.shape[1], 20 if top else 80)
        left = max_products - used
        if left < 2 * mb + 2:
            status = "unverified"
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
        sub = _lanczos_svd(
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
            keep=_default_keep(1, mb),
            max_products=left,
            v0=v0,
            stop_below=s[kth] - margin_k if top else None,
        )
        used += int(sub.num_products)
        rounds += 1
        s_new, r_new = float(sub.s[0]), float(sub.residuals[0]) / math.sqrt(2)
        if top:
            beyond = s_new - r_new > s[kth] + margin_k  # certified above s_k
            inside = s_new + r_new < s[kth] - margin_k  # certified below: the top-k stands
        else:
            if not bool(sub.converged[0]):
                status = "unverified"  # an unconverged Ritz value is only an upper bound
                break
            beyond = s_new + r_new < s[kth] - margin_k  # certified below s_k
            inside = s_new - r_new > s[kth] + margin_k
        if inside:
            break
        if not beyond:
            if bool(sub.converged[0]):
                break  # a tie with s_k (a copy of the k-th value): the k-set stands
            status = "unverified"
            break
        if not bool(sub.converged[0]):
            status = "unverified"  # a value beyond s_k exists, but its triplet did not converge
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
            status="converged",
            num_restarts=res.num_restarts,
            atol=res.atol,
        )
    else:
        out = dataclasses.replace(res, num_products=used)
    if status != "converged" and out.status == "converged":
        out = dataclasses.replace(out, status=status)
    return out


def bottom_singular(
    op: AbstractOperator,
    k: int,
    *,
    key: jax.Array | None = None,
    tol: float = 1e-8,
    atol: float | None = None,
    num_basis: int | None = None,
    keep: int | None = None,
    max_products: int | None = None,
    v0: jax.Array | None = None,
    block_size: int = 1,
    progress: Callable[[str], None] | None = None,
    verify: bool = True,
) -> SingularTriplets:
    r"""The ``k`` smallest singular triplets of a square ``op`` (ascending), with honest flags.

    Thick-restarted Golub-Kahan-Lanczos that keeps the ``keep`` *smallest* Ritz vectors at each
    restart. Working with :math:`A` itself (not :math:`A^T A`) resolves a small singular value
    to absolute accuracy about :math:`\epsilon \|A\|` instead of :math:`\sqrt{\epsilon}\|A\|`,
    so in float64 values near ``1e-9`` are found to about six digits once the Krylov space has
    captured their singular subspace.

    The bottom end converges slowly: the rate is set by gaps relative to :math:`\|A\|^2` in
    :math:`A^T A`, tiny for a cluster of small values. The result is therefore flagged per
    value: ``converged[i]`` is set only if the residual recomputed from the operator satisfies
    :math:`r_i \le tol \cdot s_i + atol` (``atol`` defaults to ``100 eps ||A||``), which
    guarantees an exact singular value within :math:`r_i/\sqrt 2` of ``s[i]``. Values flagged
    unconverged are upper estimates (Ritz values from a subspace interlace from above) and
    should not be trusted. A single-vector Krylov space can miss a value entirely (copies of a
    repeated value, tight clusters); ``verify=True`` then checks for smaller values that were
    missed, as :func:`top_singular` does for larger ones.

    Parameters
    ----------
    op
        Square operator (``P x P``).
    k
        Number of triplets, ``1 <= k < P``.
    key
        PRNG key (required).
    tol, atol
        Relative and absolute residual tolerance.
    num_basis
        Basis size ``m`` (default ``min(P, max(4k + 40, 80))``: larger helps the bottom end).
    keep
        Ritz vectors kept at a restart (default ``k + (m - k) // 2``).
    max_products
        Product budget (default ``max(50 m, 2000)``).
    v0
        Optional start vector.
    block_size
        Block products of ``b`` columns, as in :func:`top_singular`.
    progress
        Optional callable receiving one line per restart cycle, as in :func:`top_singular`.
    verify
        After convergence, look for a value below ``s_k`` that the Krylov space missed: a
        Lanczos run for the smallest triplet of ``A`` with the found values raised to
        ``2 ||A||`` (:class:`~matfree_tj._operator.Raised`); a value certified below ``s_k``
        joins the result and the check repeats. The bottom end converges slowly, so this run
        can cost as much as the first; if it does not converge within ``max_products``,
        ``status="unverified"`` (the flags stay: each flagged value is still a true singular
        value). ``False`` skips it.

    Returns
    -------
    SingularTriplets
        ``s`` ascending; fields as :func:`top_singular`.

    Cost: as :func:`top_singular`; memory ``(2m + 1) P``.

    References
    ----------
    Baglama & Reichel, "Augmented implicitly restarted Lanczos bidiagonalization methods",
    SIAM J. Sci. Comput. 27 (2005).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, matfree_tj as mtj
    >>> A = jnp.diag(jnp.arange(1.0, 51.0))
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)
    >>> res = mtj.bottom_singular(op, 2, key=jax.random.key(0), tol=1e-4)
    >>> [round(float(x), 3) for x in res.s], bool(res.converged.all())
    ([1.0, 2.0], True)
    """
    op, key, k, tol, m = _check_common(
        op,
        k,
        key,
        "bottom_singular",
        square=True,
        tol=tol,
        num_basis=num_basis,
        default_basis=lambda k: max(4 * k + 40, 80),
    )
    return _run(
        op,
        k,
        key=key,
        which="smallest",
        tol=tol,
        atol=atol,
        m=m,
        keep=keep,
        max_products=max_products,
        v0=v0,
        block_size=block_size,
        progress=progress,
        verify=verify,
    )
