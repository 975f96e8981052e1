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

References
----------
Wu & Simon, "Thick-restart Lanczos method for large symmetric eigenvalue problems", SIAM J.
Matrix Anal. Appl. 22 (2000). Baglama & Reichel, "Augmented implicitly restarted Lanczos
bidiagonalization methods", SIAM J. Sci. Comput. 27 (2005).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._gkl import mm

__all__ = ["ritz", "thick_restart", "default_keep"]


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
