r"""Ritz extraction and thick restarts (Wu & Simon 2000; Baglama & Reichel 2005).

After a cycle the small SVD :math:`R_m = X S Y^T` (:func:`ritz`) gives Ritz triplets
:math:`(s_i, U_m x_i, V_m y_i)` with :math:`A V_m y_i = s_i U_m x_i` exactly and
:math:`\|A^T U_m x_i - s_i V_m y_i\| = \beta |e_m^T x_i|`. A thick restart keeps ``keep``
wanted Ritz vectors as the first rows of the bases, puts the residual direction
:math:`v_{m+1}` (block: the ``b`` residual rows) after them, and sets
:math:`R = \operatorname{diag}(s_{kept})`: the relations of :mod:`._gkl` still hold, with the
coupling of the kept vectors to the new direction appearing as an "arrow" column of ``R``
when the next cycle orthogonalises against them. Memory stays ``(2m + 1) P``.

Cost: ``O(P m keep)`` flops per restart, no operator products.

For the bottom end, :func:`harmonic_ritz` and :func:`harmonic_restart` offer the harmonic
alternative (the SVD of :math:`[R^T; D]`, the harmonic Ritz values of :math:`A^T A` on
:math:`V_m`; Baglama & Reichel 2005): the kept pairs satisfy :math:`A^T u_i = s_i v_i`
exactly, their residuals lie in the ``b`` directions of :func:`residual_block` (``b``
products), and the next cycle runs on :math:`A^T`.

References
----------
Wu & Simon, "Thick-restart Lanczos method for large symmetric eigenvalue problems", SIAM J.
Matrix Anal. Appl. 22 (2000). Baglama & Reichel, "Augmented implicitly restarted Lanczos
bidiagonalization methods", SIAM J. Sci. Comput. 27 (2005).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._gkl import mm

__all__ = [
    "ritz",
    "thick_restart",
    "default_keep",
    "harmonic_ritz",
    "residual_block",
    "harmonic_restart",
]


def default_keep(k: int, m: int) -> int:
    """Ritz vectors kept at a restart: ``k + (m - k) // 2`` (at least ``k``, at most ``m - 2``):
    half the free room keeps the next wanted values' approximations, half is new Krylov space."""
    return max(k, min(m - 2, k + max(1, (m - k) // 2)))


def ritz(R):
    """SVD of the projected matrix: ``R = X diag(S) Y^T`` with ``S`` descending (float64 numpy)."""
    X, S, Yt = np.linalg.svd(np.asarray(R, dtype=np.float64))
    return X, S, Yt.T


@eqx.filter_jit(donate="all")
def thick_restart(Ut, Vt, X, Y, S, idx):
    """Keep Ritz vectors ``idx`` (rows ``X^T U``, ``Y^T V``), then the ``b`` residual directions
    (the rows of ``Vt`` after ``m``; ``b = Vt.shape[0] - m``, one for the single-vector
    process); ``R`` becomes the kept values' diagonal. The bases are donated."""
    m = Ut.shape[0]
    b = Vt.shape[0] - m
    keep = idx.shape[0]
    dtype = Vt.dtype
    Xk = X[:, idx].astype(dtype)
    Yk = Y[:, idx].astype(dtype)
    Unew = jnp.zeros_like(Ut).at[:keep].set(mm(Xk.T, Ut))
    Vnew = jnp.zeros_like(Vt).at[:keep].set(mm(Yk.T, Vt[:m]))
    Vnew = Vnew.at[keep : keep + b].set(Vt[m : m + b])
    Rnew = jnp.zeros((m, m), dtype).at[jnp.arange(keep), jnp.arange(keep)].set(S[idx].astype(dtype))
    return Unew, Vnew, Rnew


# -- harmonic extraction for the bottom end ------------------------------------------------


def harmonic_ritz(R, D):
    r"""SVD of :math:`C = [R^T; D]` (``(m + b) x m``): ``C = Yh diag(S) X^T``, ``S`` descending,
    ``Yh`` ``(m + b) x m`` (float64 numpy).

    With :math:`A V_m = U_m R`, :math:`A^T U_m = V_{m+b} C` holds exactly, so
    :math:`u_i = U_m x_i`, :math:`v_i = V_{m+b} \tilde y_i` satisfy :math:`A^T u_i = s_i v_i`
    exactly and :math:`s_i = \min \|A^T u\|` over the unit ``u`` in ``span(U_m)``
    orthogonal to the previous ones: the harmonic Ritz values of :math:`A^T A` on
    ``span(V_m)`` (:math:`(A^T A - \theta) V y \perp A^T A V_m` reduces to the eigenproblem
    of :math:`C^T C`). Their residual lies in one direction per residual row:
    :math:`A v_i - s_i u_i = E \tilde y_{i, m:}` with :math:`E = (I - U_m U_m^T) A V_{ext}`
    (:func:`residual_block`), so ``b`` products give every triplet's residual.
    """
    C = np.concatenate([np.asarray(R, np.float64).T, np.asarray(D, np.float64)], axis=0)
    Yh, S, Xt = np.linalg.svd(C, full_matrices=False)
    return Xt.T, S, Yh


@jax.jit
def residual_block(Ut, W, key):
    r"""``E = (I - U U^T) W`` (CGS2, ``W = A V_ext``: ``(M, b)``, or ``(M,)``) and an
    orthonormal basis ``Q`` (``(M, b)``) of its range, orthogonal to the rows of ``Ut``.

    ``Q`` is the next cycle's start block after a harmonic restart. A column of ``E`` that
    vanishes (an invariant subspace: the kept vectors are exact) is replaced by a random
    direction orthogonal to everything before it, so the next cycle still adds new space.
    Returns ``(E, Q)``.
    """
    vector = W.ndim == 1
    W = W[:, None] if vector else W
    dtype = Ut.dtype
    E = W - mm(Ut.T, mm(Ut, W))
    E = E - mm(Ut.T, mm(Ut, E))
    scale = jnp.maximum(jnp.max(jnp.linalg.norm(W, axis=0)), jnp.finfo(dtype).tiny)
    eps = jnp.finfo(dtype).eps
    b = W.shape[1]
    rand = jax.random.normal(key, W.shape, dtype)
    Q = jnp.zeros_like(W)
    for i in range(b):  # b is static and small: Gram-Schmidt column by column, twice
        q = E[:, i]
        for _ in range(2):
            q = q - mm(Ut.T, mm(Ut, q)) - mm(Q, mm(Q.T, q))
        nrm = jnp.linalg.norm(q)
        r = rand[:, i]
        for _ in range(2):
            r = r - mm(Ut.T, mm(Ut, r)) - mm(Q, mm(Q.T, r))
        q = jnp.where(
            nrm > 100 * eps * scale, q / jnp.where(nrm > 0, nrm, 1), r / jnp.linalg.norm(r)
        )
        Q = Q.at[:, i].set(q)
    return (E[:, 0], Q) if vector else (E, Q)


@eqx.filter_jit(donate="all-except-first")
def harmonic_restart(Q, Ut, Vt, X, Yh, S, idx):
    r"""A thick restart on the harmonic triplets, for the *transposed* operator.

    Keeps ``u_i = U_m x_i``, ``v_i = V_{m+b} \tilde y_i`` (``i`` in ``idx``), for which
    :math:`A^T u_i = s_i v_i` exactly and :math:`A v_i = s_i u_i + E \tilde y_{i,m:}`
    (:func:`harmonic_ritz`). Read with :math:`B = A^T`, these are the relations a thick
    restart of :mod:`._gkl` needs: :math:`B U_k = V_k \operatorname{diag}(s)` and
    :math:`B^T V_k = U_k \operatorname{diag}(s) + Q (\ldots)`, with ``Q`` (the orthonormal
    range of ``E``, :func:`residual_block`) as the ``b`` next directions. So the next cycle
    runs on :math:`A^T` with the kept ``v_i`` as its left basis (``Ut``), the kept ``u_i``
    then ``Q^T`` as its right basis (``Vt``), ``R = diag(s)``; the driver swaps back at the
    next restart. Square operators only (the bases keep their shapes).
    """
    m = Ut.shape[0]
    b = Vt.shape[0] - m
    keep = idx.shape[0]
    dtype = Vt.dtype
    Xk = X[:, idx].astype(dtype)
    Yk = Yh[:, idx].astype(dtype)
    Unew = jnp.zeros_like(Ut).at[:keep].set(mm(Yk.T, Vt))
    Vnew = jnp.zeros_like(Vt).at[:keep].set(mm(Xk.T, Ut))
    Vnew = Vnew.at[keep : keep + b].set(Q.T)
    Rnew = jnp.zeros((m, m), dtype).at[jnp.arange(keep), jnp.arange(keep)].set(S[idx].astype(dtype))
    return Unew, Vnew, Rnew
