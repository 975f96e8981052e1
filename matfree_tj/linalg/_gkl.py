r"""The Golub-Kahan-Lanczos kernel: one cycle of bidiagonalisation with full reorthogonalisation.

A cycle extends orthonormal bases :math:`U_m, V_{m+1}` with

.. math::  A V_m = U_m R_m, \qquad A^T U_m = V_m R_m^T + f\, e_m^T,

where :math:`R_m = U_m^T A V_m` is stored in full (upper bidiagonal in exact arithmetic; it
gains an "arrow" column after a thick restart, see :mod:`._restart`), every new vector is
reorthogonalised twice against the whole basis (classical Gram-Schmidt, twice: "twice is
enough", Giraud et al. 2005), and :math:`f = \beta v_{m+1}` is the residual direction.

Breakdown (an exactly invariant Krylov space, e.g. the linear-regression oracle whose
:math:`J^T J` has only ``n + 1`` distinct eigenvalues) continues with a fresh direction
orthogonal to the basis, so the rest of the spectrum is still reached.

Three drivers of the same half-steps:

* :func:`gkl_cycle` -- traced: the products inside one ``lax.fori_loop`` (SLQ vmaps it over
  its probes, so the products become block products).
* :func:`gkl_cycle_eager` -- the restarted top/bottom driver's: the operator's own compiled
  products called from Python between two small compiled half-step kernels, so the products
  are compiled once per operator and shared by every cycle, restart and residual check.
* :func:`gkl_block_cycle` -- ``b`` columns at a time with block products
  (``op.matmat`` / ``op.rmatmat``) and a residual block :math:`V_{ext} D` in place of
  :math:`f e_m^T`.

Cost: two products per step (one ``mv``, one ``rmv``); ``O((M + N) m)`` flops per step for the
reorthogonalisation; memory: the bases, ``m M + (m + 1) N`` numbers.

References
----------
Golub & Kahan, "Calculating the singular values and pseudo-inverse of a matrix", SIAM J. Numer.
Anal. B 2 (1965). Giraud, Langou, Rozloznik & van den Eshof, "Rounding error analysis of the
classical Gram-Schmidt orthogonalization process", Numer. Math. 101 (2005).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core._operator import LinearOperator, product_fns

__all__ = ["gkl_cycle", "gkl_cycle_eager", "gkl_block_cycle", "mm"]

_HI = jax.lax.Precision.HIGHEST


def mm(a, b):
    """``a @ b`` at ``HIGHEST`` precision (float32 matmuls run as TF32 on recent GPUs otherwise,
    and the reorthogonalisation then silently fails)."""
    return jnp.matmul(a, b, precision=_HI)


def _orth2(B, w, mask):
    """Orthogonalise ``w`` against the rows of ``B`` selected by ``mask``, twice (CGS2)."""
    c1 = mask * mm(B, w)
    w = w - mm(c1, B)
    c2 = mask * mm(B, w)
    w = w - mm(c2, B)
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


def _gkl_cycle(op: LinearOperator, Ut, Vt, R, start, seed, replace: bool = True):
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
    same half-steps from Python instead (:func:`gkl_cycle_eager`).
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


def _raw_products(op: LinearOperator):
    """The operator's compiled product functions, without the per-call shape and finiteness
    checks of ``op.mv`` (the vectors come from the solver's own bases, and a non-finite product
    shows in the Lanczos coefficients, which the driver checks once per cycle): each check is a
    host round trip, comparable to a product of a millisecond. Subclasses that override the
    products (deflated, transposed or dense operators) keep their methods."""
    return product_fns(op)


def gkl_cycle_eager(op: LinearOperator, Ut, Vt, R, start: int, seed: float, replace: bool = True):
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
def gkl_block_cycle(op: LinearOperator, Ut, Vt, R, start, seed, block_size: int):
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
