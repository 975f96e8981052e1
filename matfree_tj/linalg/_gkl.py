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

One set of half-steps for a block of ``b`` columns (``b = 1`` being the plain case):
:func:`left_half` orthogonalises ``A V_b`` into the next ``b`` rows of ``U`` and
:func:`right_half` orthogonalises ``A^T U_b`` into the next ``b`` rows of ``V``, column by
column (CGS2 with breakdown replacement), so with ``b > 1``

.. math::  A^T U_m = V_m R_m^T + V_{ext} D

with :math:`V_{ext}` the ``b`` rows of ``V`` after ``m`` and ``D`` (``b x m``) their
coefficients (for ``b = 1``, ``D = \beta e_m^T``). Two drivers of these half-steps:

* :func:`gkl_cycle` -- traced, ``b = 1``: the products inside one ``lax.fori_loop`` (SLQ vmaps
  it over its probes, so the products become block products).
* :func:`gkl_cycle_eager` -- the restarted top/bottom driver's, any ``b``: the operator's own
  compiled products (raw ``mv`` / ``rmv`` for ``b = 1``, ``op.matmat`` / ``op.rmatmat`` for
  ``b > 1``) called from Python between the two compiled half-step kernels, so the products
  are compiled once per operator and shared by every cycle, restart and residual check, and
  the kernels (no operator inside) once per basis shape and shared by every operator.

Cost: two products per step (one ``mv``, one ``rmv``; a block step: ``b`` of each, as one
block product); ``O((M + N) m)`` flops per column for the reorthogonalisation; memory: the
bases, ``m M + (m + b) N`` numbers.

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

from ..core import AbstractOperator

__all__ = ["left_half", "right_half", "gkl_cycle", "gkl_cycle_eager", "mm"]

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


def _columns(X):
    """``(X as (n, b), was_vector)``: the half-steps take one vector or a block of columns."""
    return (X[:, None], True) if X.ndim == 1 else (X, False)


def _over_columns(col, b, init):
    """``col(i, state)`` for ``i < b``: straight-line for one column (the plain step, no loop
    in the kernel), a ``fori_loop`` (one compiled body) for a block."""
    return col(0, init) if b == 1 else jax.lax.fori_loop(0, b, col, init)


def left_half(Ut, R, W, o, seed, replace: bool):
    r"""Left half-step: orthogonalise the columns of ``W = A V_b`` (``V_b`` the rows
    ``o .. o+b-1`` of ``V``) into rows ``o .. o+b-1`` of ``U`` and columns ``o .. o+b-1`` of
    :math:`R = U^T A V`.

    Column ``i`` (row ``j = o + i``) is orthogonalised against ``u_0 .. u_{j-1}`` (CGS2): its
    coefficients are column ``j`` of ``R`` above the diagonal and its norm ``alpha`` the
    diagonal entry. ``W`` is ``(M,)`` (one column; then the new ``u_o`` is returned as a
    vector) or ``(M, b)``. Returns ``(Ut, R, U_b, alphas, broke)`` with ``U_b`` the new rows as
    columns (``(M, b)``, or ``(M,)``), ready for the next product ``A^T U_b``; ``alphas`` and
    ``broke`` (breakdown flags) are ``(b,)``. ``seed``: the breakdown directions' hash
    (column ``j`` uses ``seed + 2j + 1``).
    """
    dtype = Ut.dtype
    Wm, vector = _columns(W)
    b = Wm.shape[1]
    rows = jnp.arange(Ut.shape[0])

    def col(i, state):
        Ut, R, alphas, broke = state
        j = o + i
        w = Wm[:, i]
        norm_in = jnp.linalg.norm(w)
        mask = (rows < j).astype(dtype)
        w, c = _orth2(Ut, w, mask)
        key = seed + 2.0 * j.astype(dtype) + 1.0
        u, alpha, br = _normalise_or_replace(Ut, w, mask, norm_in, key, dtype, replace)
        Ut = Ut.at[j].set(u)
        R = R.at[:, j].set(c.at[j].set(alpha))
        return Ut, R, alphas.at[i].set(alpha), broke.at[i].set(br)

    init = (Ut, R, jnp.zeros((b,), dtype), jnp.zeros((b,), bool))
    Ut, R, alphas, broke = _over_columns(col, b, init)
    Ub = jax.lax.dynamic_slice_in_dim(Ut, o, b, axis=0)
    return Ut, R, (Ub[0] if vector else Ub.T), alphas, broke


def right_half(Vt, D, Z, o, seed, replace: bool):
    r"""Right half-step: orthogonalise the columns of ``Z = A^T U_b`` (``U_b`` the rows
    ``o .. o+b-1`` of ``U``) into rows ``o+b .. o+2b-1`` of ``V``.

    ``Vt`` is ``(m + b, N)`` and ``D`` ``(b, m)``: ``b`` is the block size. Column ``i`` (new
    row ``r = o + b + i``) is orthogonalised against ``v_0 .. v_{r-1}``; its coefficients on
    rows ``0 .. m-1`` are those of ``R^T``, already known, and those on the rows from ``m`` on
    (nonzero only in the last block of a cycle, with the norm ``beta`` on ``v_r``) are column
    ``o + i`` of ``D``: :math:`A^T U_m = V_m R_m^T + V_{ext} D`. ``Z`` is ``(N,)`` or
    ``(N, b)``. Returns ``(Vt, D, V_b, betas, broke)`` with ``V_b`` the new rows as columns
    (``(N, b)``, or ``(N,)``), ready for the next product ``A V_b``. Column ``j = o + i`` uses
    the breakdown hash ``seed + 2j + 2``.
    """
    dtype = Vt.dtype
    Zm, vector = _columns(Z)
    b, m = D.shape
    rows = jnp.arange(Vt.shape[0])

    def col(i, state):
        Vt, D, betas, broke = state
        j = o + i
        row = j + b
        z = Zm[:, i]
        norm_in = jnp.linalg.norm(z)
        mask = (rows < row).astype(dtype)
        z, d = _orth2(Vt, z, mask)
        key = seed + 2.0 * j.astype(dtype) + 2.0
        v, beta, br = _normalise_or_replace(Vt, z, mask, norm_in, key, dtype, replace)
        Vt = Vt.at[row].set(v)
        D = D.at[:, j].set(d.at[row].set(beta)[m:])
        return Vt, D, betas.at[i].set(beta), broke.at[i].set(br)

    init = (Vt, D, jnp.zeros((b,), dtype), jnp.zeros((b,), bool))
    Vt, D, betas, broke = _over_columns(col, b, init)
    Vb = jax.lax.dynamic_slice_in_dim(Vt, o + b, b, axis=0)
    return Vt, D, (Vb[0] if vector else Vb.T), betas, broke


def _gkl_cycle(op: AbstractOperator, Ut, Vt, R, start, seed, replace: bool = True):
    r"""Run Golub-Kahan steps ``start .. m-1`` on bases ``Ut: (m, M)``, ``Vt: (m+1, N)``.

    Rows ``0 .. start`` of ``Vt`` (``start`` included: the next direction) and rows
    ``0 .. start-1`` of ``Ut`` must be orthonormal; ``R[:start, :start]`` must equal
    ``Ut[:start] A Vt[:start]^T``. Returns ``(Ut, Vt, R, beta, finite, num_breakdowns)`` with
    ``R = U^T A V`` (``m x m``), the last residual norm ``beta`` (its direction in ``Vt[m]``)
    and a flag that every product was finite. ``replace`` (static): continue after a
    breakdown with a random orthogonal direction (True) or with zeros (False).
    Cost: ``2 (m - start)`` products; memory: the bases, ``(2m + 1) P``.

    This traced form puts the operator's products inside one ``fori_loop`` (SLQ vmaps it over
    probes, so the products become block products); the restarted top/bottom driver runs the
    same half-steps from Python instead (:func:`gkl_cycle_eager`).
    """
    m = Ut.shape[0]
    dtype = Vt.dtype
    seed = jnp.asarray(seed, dtype)

    def step(j, state):
        Ut, Vt, R, D, finite, nbreak = state
        Ut, R, u, alpha, broke_a = left_half(Ut, R, op.mv(Vt[j]), j, seed, replace)
        Vt, D, _, beta, broke_b = right_half(Vt, D, op.rmv(u), j, seed, replace)
        finite = finite & jnp.all(jnp.isfinite(alpha)) & jnp.all(jnp.isfinite(beta))
        nbreak = nbreak + jnp.sum(broke_a, dtype=jnp.int32) + jnp.sum(broke_b, dtype=jnp.int32)
        return Ut, Vt, R, D, finite, nbreak

    D = jnp.zeros((1, m), dtype)
    init = (Ut, Vt, R, D, jnp.array(True), jnp.zeros((), jnp.int32))
    Ut, Vt, R, D, finite, nbreak = jax.lax.fori_loop(start, m, step, init)
    return Ut, Vt, R, D[0, m - 1], finite, nbreak


gkl_cycle = eqx.filter_jit(_gkl_cycle)

# The half-steps as small compiled kernels (no operator inside: compiled once per basis shape
# and block size, and shared by every operator). The bases are donated: each step extends them
# in place. Plain jax.jit: its dispatch costs ~0.4 ms per call against ~0.65 ms for
# eqx.filter_jit (measured, P = 9610), which matters when a product costs about a millisecond.
_left_half_jit = {
    r: jax.jit(functools.partial(left_half, replace=r), donate_argnums=(0, 1))
    for r in (True, False)
}
_right_half_jit = {
    r: jax.jit(functools.partial(right_half, replace=r), donate_argnums=(0, 1))
    for r in (True, False)
}


@functools.partial(jax.jit, static_argnums=2)
def _rows_as_columns(Vt, start, b: int):
    """Rows ``start .. start+b-1`` of ``Vt`` as ``(N, b)`` columns (``start`` traced: one
    compile per shape and block size, whatever the restart point)."""
    return jax.lax.dynamic_slice_in_dim(Vt, start, b, axis=0).T


@jax.jit
def _coupling(Vb, Z):
    """``Vb^T Z`` (``b x b``) at ``HIGHEST`` precision: the new block's coefficients."""
    return mm(Vb.T, Z)


def gkl_cycle_eager(
    op: AbstractOperator, Ut, Vt, R, D, start: int, seed: float, replace=True, stop=None
):
    r"""Golub-Kahan steps ``start .. m-1``, ``b`` at a time, driven from Python: the operator's
    own compiled products between the compiled half-steps :func:`left_half` and
    :func:`right_half`.

    ``Ut: (m, M)``, ``Vt: (m + b, N)``, ``R: (m, m)``, ``D: (b, m)`` (``b`` the block size,
    from ``D``; ``(m - start) % b == 0``); rows ``start .. start+b-1`` of ``Vt`` must be
    orthonormal to the rows before them and ``R[:start, :start]`` must equal
    ``Ut[:start] A Vt[:start]^T``. Returns ``(Ut, Vt, R, D, finite, num_breakdowns)``: the
    relations :math:`A V_m = U_m R_m`, :math:`A^T U_m = V_m R_m^T + V_{ext} D` hold, and
    ``finite`` says every coefficient was finite.

    The products are the operator's raw compiled products (``op.apply``: no per-call shape
    and finiteness checks, each a host round trip comparable to a product of a millisecond;
    the vectors come from the solver's own bases, and a non-finite product shows in the
    coefficients, checked once per cycle): ``b = 1`` runs per step one ``mv``, one left
    kernel, one ``rmv``, one right kernel; ``b > 1`` the block products ``matmat`` /
    ``rmatmat`` (one shared primal run per block on a training Jacobian), compiled once per
    operator structure and block shape. Compiling the products
    into each solver kernel instead cost seconds per kernel on CPU (the training loop's JVP
    and VJP, with a cached linearisation's residuals embedded as constants).
    ``stop`` (block only, optional): ``stop(end, R, C) -> bool`` called after each block step
    that ends short of ``m``, with ``end`` the basis size so far and ``C = V_{new}^T A^T U_b``
    (``b x b``) the new block's coupling, so that
    :math:`A^T U_{end} = V_{end} R_{end}^T + V_{new} C E_{end}^T`; ``True`` ends the cycle
    there (the caller extracts from ``R[:end, :end]``), saving the rest of the cycle's products
    once its wanted triplets have converged.
    Cost: ``2 (m - start)`` products (fewer when ``stop`` ends the cycle early).
    """
    b, m = D.shape
    dtype = Vt.dtype
    left, right = _left_half_jit[bool(replace)], _right_half_jit[bool(replace)]
    if b == 1:
        kinds = ("mv", "rmv")
        x = Vt[start]
    else:
        kinds = ("matmat", "rmatmat")
        x = _rows_as_columns(Vt, jnp.asarray(start), b)
    seed = jnp.asarray(seed, dtype)
    coefs, broken = [], []
    for o in range(int(start), m, b):
        o_ = jnp.asarray(o)
        Ut, R, y, alphas, broke_a = left(Ut, R, op.apply(kinds[0], x), o_, seed)
        Z = op.apply(kinds[1], y)
        Vt, D, x, betas, broke_b = right(Vt, D, Z, o_, seed)
        coefs += [alphas, betas]
        broken += [broke_a, broke_b]
        if stop is not None and b > 1 and o + b < m and stop(o + b, R, _coupling(x, Z)):
            break
    # host-side bookkeeping (numpy): eager jnp ops would each compile once per cycle length
    coefs = np.concatenate([np.asarray(c) for c in coefs]) if coefs else np.zeros(0)
    finite = bool(np.all(np.isfinite(coefs)))
    nbreak = int(sum(int(np.sum(np.asarray(flags))) for flags in broken))
    return Ut, Vt, R, D, finite, nbreak
