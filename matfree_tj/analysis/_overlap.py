r"""Subspace overlaps for :mod:`matfree_tj.analysis` (experiments 7 and 8 of the study).

The bulk is used implicitly, through its complement (module docs of :mod:`matfree_tj.analysis`).
Principal cosines come from :func:`matfree_tj.principal_cosines`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..linalg import principal_cosines

__all__ = [
    "Overlap",
    "subspace_overlap",
    "function_jacobian",
    "function_rowspace",
    "bulk_nullspace_overlap",
    "seed_overlap",
]


def _np(x: Any) -> np.ndarray:
    return np.asarray(jax.device_get(x), dtype=np.float64)


def model_inputs(X: Any, dtype: Any) -> jax.Array:
    """``X`` as a JAX array for a model: floating inputs in the parameters' ``dtype``; integer or
    boolean inputs (token ids for an embedding, masks) unchanged, since casting them to floats
    would break indexing."""
    X = jnp.asarray(X)
    return X.astype(dtype) if jnp.issubdtype(X.dtype, jnp.floating) else X


def _basis(x: Any) -> np.ndarray:
    """Right vectors of a :class:`~matfree_tj.analysis.Triplets`, or the array itself."""
    return _np(x.V if hasattr(x, "V") and hasattr(x, "s") else x)


# ------------------------------------------------------------------------------------------
# 7, 8. Subspace overlaps
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Overlap:
    r"""Overlap of two subspaces ``S1``, ``S2`` of ``R^P`` (dimensions ``dim1``, ``dim2``).

    ``fraction = ||P_1 P_2||_F^2 / min(dim1, dim2)`` is the mean squared principal cosine (1:
    one contains the other; 0: orthogonal); ``baseline = max(dim1, dim2) / P`` is its expectation
    for independent uniformly random subspaces. ``cosines`` are the principal cosines of the
    bases given (of the complements when ``complement=True``; the remaining cosines of
    ``S1``, ``S2`` are 1). ``basis_fraction = ||A^T B||_F^2 / min(a, b)`` is the same statistic
    for the spans of the bases themselves, with random baseline ``basis_baseline = max(a, b) / P``;
    when the bases are small complements it is the more sensitive of the two.
    """

    fraction: float
    baseline: float
    dim1: int
    dim2: int
    cosines: np.ndarray
    basis_fraction: float
    basis_baseline: float

    def to_dict(self) -> dict:
        return dict(
            fraction=self.fraction,
            baseline=self.baseline,
            dim1=self.dim1,
            dim2=self.dim2,
            basis_fraction=self.basis_fraction,
            basis_baseline=self.basis_baseline,
            cosines=[float(c) for c in self.cosines],
        )


def _orth(A: Any) -> np.ndarray:
    Q, _ = np.linalg.qr(_np(A))
    return Q


def subspace_overlap(A: Any, B: Any, *, complement: bool = False) -> Overlap:
    r"""Overlap of ``span(A)`` and ``span(B)``, or of their orthogonal complements.

    With ``complement=True`` the subspaces compared are ``span(A)^\perp`` and ``span(B)^\perp``
    (e.g. two bulks, each given by its moved directions), through the identity
    :math:`\|P_{A^\perp} P_{B^\perp}\|_F^2 = P - a - b + \|A^\top B\|_F^2`: only the small bases
    are touched, ``O(P a b)`` flops. Principal cosines from :func:`matfree_tj.principal_cosines`.

    Examples
    --------
    >>> import numpy as np
    >>> from matfree_tj.analysis import subspace_overlap
    >>> E = np.eye(4)
    >>> ov = subspace_overlap(E[:, :2], E[:, 1:3])  # share one of two directions
    >>> round(ov.fraction, 6), ov.baseline
    (0.5, 0.5)
    """
    A, B = _orth(A), _orth(B)
    if A.shape[0] != B.shape[0]:
        raise ValueError(
            f"A and B must have the same number of rows, got {A.shape[0]}, {B.shape[0]}."
        )
    P, a, b = A.shape[0], A.shape[1], B.shape[1]
    cos = np.clip(_np(principal_cosines(jnp.asarray(A), jnp.asarray(B))), 0.0, 1.0)
    sq = float(np.sum(cos**2))
    if complement:
        d1, d2 = P - a, P - b
        num = P - a - b + sq
    else:
        d1, d2, num = a, b, sq
    if min(d1, d2) < 1:
        raise ValueError("The compared subspaces must have dimension >= 1.")
    return Overlap(
        float(num / min(d1, d2)),
        float(max(d1, d2) / P),
        int(d1),
        int(d2),
        cos,
        float(sq / min(a, b)),
        float(max(a, b) / P),
    )


def function_jacobian(
    apply: Callable, params: Any, X: Any, *, unravel: Callable | None = None
) -> np.ndarray:
    r"""Dense parameter-to-function Jacobian ``F = d vec(apply(theta, X)) / d theta``: ``(N C, P)``.

    ``params``: flat ``(P,)`` with ``unravel``, or a :class:`~matfree_tj.TrainingJacobian` (its
    final parameters). Floating ``X`` is cast to the parameters' dtype, integer ``X`` (token ids)
    is passed unchanged. Cost: ``N C`` reverse passes of the model (no training); memory
    ``N C P`` floats, so subsample ``X`` for large models.
    """
    if unravel is None:
        params, unravel = params.params_T_flat, params.unravel
    theta = jnp.asarray(params)
    X = model_inputs(X, theta.dtype)
    F = jax.jit(jax.jacrev(lambda th: apply(unravel(th), X).reshape(-1)))(theta)
    return _np(F)


def function_rowspace(F: Any, *, rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    r"""``(s, R)``: singular values of ``F`` and an orthonormal ``(P, r)`` basis of its row space
    restricted to ``s > rtol * s_max``. The near-nullspace of ``F`` is ``span(R)^\perp``
    (used implicitly). Cost: a thin SVD, ``O(P (N C)^2)``."""
    F = _np(F)
    _, s, Vt = np.linalg.svd(F, full_matrices=False)
    r = int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0
    return s, Vt[:r].T.copy()


def bulk_nullspace_overlap(moved: Any, rowspace: Any, ks: Sequence[int]) -> dict:
    r"""Overlap of the bulk with the near-nullspace of ``F`` against the size of the moved set.

    For each ``k``: bulk ``= span(V[:, :k])^\perp`` (``V`` the moved directions, a
    :class:`Triplets` of ``J - I`` or a basis) and near-nullspace ``= span(R)^\perp``
    (:func:`function_rowspace`), compared with :func:`subspace_overlap` (``complement=True``).
    Returns ``{"ks", "fraction", "baseline", "bulk_dim", "null_dim", "moved_in_rowspace",
    "moved_in_rowspace_baseline"}``: ``fraction`` near 1 (above ``baseline``) means the
    near-nullspace lies in the bulk; equivalently the moved directions lie in the row space of
    ``F`` (``moved_in_rowspace``, mean squared principal cosine, random baseline ``r / P``).
    No operator products.
    """
    V = _basis(moved)
    out: dict = {
        k: []
        for k in (
            "ks",
            "fraction",
            "baseline",
            "bulk_dim",
            "null_dim",
            "moved_in_rowspace",
            "moved_in_rowspace_baseline",
        )
    }
    for k in ks:
        if not 1 <= int(k) <= V.shape[1]:
            continue
        ov = subspace_overlap(V[:, : int(k)], rowspace, complement=True)
        out["ks"].append(int(k))
        out["fraction"].append(ov.fraction)
        out["baseline"].append(ov.baseline)
        out["bulk_dim"].append(ov.dim1)
        out["null_dim"].append(ov.dim2)
        # mean squared cosine of the moved directions with the row space (1: all functional)
        out["moved_in_rowspace"].append(float(np.sum(ov.cosines**2) / int(k)))
        out["moved_in_rowspace_baseline"].append((V.shape[0] - ov.dim2) / V.shape[0])
    return out


def seed_overlap(bases: Sequence[Any], *, complement: bool = True) -> dict:
    r"""Pairwise overlap of the bulks of several runs (e.g. seeds) against the random baseline.

    ``bases``: per run, the moved directions (:class:`Triplets` or ``(P, k)`` basis) when
    ``complement=True`` (the bulk is their complement), or explicit bulk bases otherwise.
    Returns ``{"pairs": [[i, j], ...], "fraction": [...], "baseline": [...], "mean_fraction"}``.
    No operator products.
    """
    Bs = [_basis(b) for b in bases]
    if len(Bs) < 2:
        raise ValueError("seed_overlap needs at least two runs.")
    out: dict = {
        "pairs": [],
        "fraction": [],
        "baseline": [],
        "basis_fraction": [],
        "basis_baseline": [],
    }
    for i in range(len(Bs)):
        for j in range(i + 1, len(Bs)):
            ov = subspace_overlap(Bs[i], Bs[j], complement=complement)
            out["pairs"].append([i, j])
            out["fraction"].append(ov.fraction)
            out["baseline"].append(ov.baseline)
            out["basis_fraction"].append(ov.basis_fraction)
            out["basis_baseline"].append(ov.basis_baseline)
    out["mean_fraction"] = float(np.mean(out["fraction"]))
    out["mean_baseline"] = float(np.mean(out["baseline"]))
    out["mean_basis_fraction"] = float(np.mean(out["basis_fraction"]))
    out["mean_basis_baseline"] = float(np.mean(out["basis_baseline"]))
    return out
