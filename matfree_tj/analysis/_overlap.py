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
from ._common import _np, model_inputs


def _basis(x: Any) -> np.ndarray:
    """Right vectors of a :class:`~matfree_tj.SingularTriplets`, or the array itself."""
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


@dataclasses.dataclass(frozen=True)
class NullspaceOverlap:
    r"""Result of :func:`bulk_nullspace_overlap`: one entry per size ``k`` of the moved set.

    Attributes
    ----------
    ks
        The sizes used (those within the moved basis's width), in the order given.
    fraction, baseline
        Overlap of the bulk (``span(V[:, :k])^\perp``) with the near-nullspace of ``F``
        (``span(R)^\perp``), and its expectation for random subspaces
        (:attr:`Overlap.fraction`, :attr:`Overlap.baseline`).
    bulk_dim, null_dim
        Dimensions of the two subspaces compared.
    moved_in_rowspace, moved_in_rowspace_baseline
        Mean squared principal cosine of the ``k`` moved directions with the row space of
        ``F`` (1: all of them change the function), and its random baseline ``r / P``.
    rowspace_dim
        ``r``, the dimension of the row space of ``F`` given.
    """

    ks: tuple[int, ...]
    fraction: tuple[float, ...]
    baseline: tuple[float, ...]
    bulk_dim: tuple[int, ...]
    null_dim: tuple[int, ...]
    moved_in_rowspace: tuple[float, ...]
    moved_in_rowspace_baseline: tuple[float, ...]
    rowspace_dim: int

    def to_dict(self) -> dict:
        """Every field (tuples as lists), JSON-ready."""
        return {f.name: _listed(getattr(self, f.name)) for f in dataclasses.fields(self)}


_SEED_MEANS = ("fraction", "baseline", "basis_fraction", "basis_baseline")


@dataclasses.dataclass(frozen=True)
class SeedOverlap:
    r"""Result of :func:`seed_overlap`: one entry per pair of runs ``i < j``.

    Attributes
    ----------
    pairs
        ``(i, j)`` indices of the runs compared, in lexicographic order.
    fraction, baseline
        :attr:`Overlap.fraction` of the two bulks and its random baseline.
    basis_fraction, basis_baseline
        :attr:`Overlap.basis_fraction` of the bases given (the moved subspaces) and its
        random baseline; the more sensitive statistic when the bases are small.
    """

    pairs: tuple[tuple[int, int], ...]
    fraction: tuple[float, ...]
    baseline: tuple[float, ...]
    basis_fraction: tuple[float, ...]
    basis_baseline: tuple[float, ...]

    def mean(self, name: str) -> float:
        """The mean over pairs of one field: ``"fraction"``, ``"baseline"``,
        ``"basis_fraction"`` or ``"basis_baseline"``."""
        if name not in _SEED_MEANS:
            raise KeyError(f"name must be one of {_SEED_MEANS}, got {name!r}.")
        return float(np.mean(getattr(self, name)))

    def to_dict(self) -> dict:
        """Every field (tuples as lists) and the four means, JSON-ready."""
        out = {f.name: _listed(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out.update({f"mean_{name}": self.mean(name) for name in _SEED_MEANS})
        return out


def _listed(x: Any) -> Any:
    """Tuples (of tuples) as lists, for JSON records that read as before the typed results."""
    return [_listed(y) for y in x] if isinstance(x, tuple) else x


def _tabulate(cls: type, items: Sequence[tuple], measure: Callable[..., dict], **fixed: Any):
    """``cls`` with one tuple per field, an entry per item, from ``measure(*item) -> {field:
    value}``; the fields in ``fixed`` are given, not measured."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    rows = [measure(*item) for item in items]
    return cls(**{n: tuple(r[n] for r in rows) for n in names}, **fixed)


def bulk_nullspace_overlap(moved: Any, rowspace: Any, ks: Sequence[int]) -> NullspaceOverlap:
    r"""Overlap of the bulk with the near-nullspace of ``F`` against the size of the moved set.

    For each ``k``: bulk ``= span(V[:, :k])^\perp`` (``V`` the moved directions, a
    :class:`~matfree_tj.SingularTriplets` of ``J - I`` or a basis) and near-nullspace ``=
    span(R)^\perp``
    (:func:`function_rowspace`), compared with :func:`subspace_overlap` (``complement=True``).
    Returns a :class:`NullspaceOverlap` (sizes beyond the basis's width are skipped):
    ``fraction`` near 1 (above ``baseline``) means the
    near-nullspace lies in the bulk; equivalently the moved directions lie in the row space of
    ``F`` (``moved_in_rowspace``, mean squared principal cosine, random baseline ``r / P``).
    No operator products.

    Examples
    --------
    >>> import numpy as np
    >>> from matfree_tj.analysis import bulk_nullspace_overlap
    >>> E = np.eye(6)  # moved directions e_0, e_1, e_2; row space of F: e_0, e_1
    >>> ov = bulk_nullspace_overlap(E[:, :3], E[:, :2], [1, 3])
    >>> ov.ks, [round(x, 3) for x in ov.moved_in_rowspace], ov.rowspace_dim
    ((1, 3), [1.0, 0.667], 2)
    """
    V = _basis(moved)
    R = _np(rowspace)
    P = V.shape[0]

    def measure(k: int) -> dict:
        ov = subspace_overlap(V[:, :k], R, complement=True)
        return dict(
            ks=k,
            fraction=ov.fraction,
            baseline=ov.baseline,
            bulk_dim=ov.dim1,
            null_dim=ov.dim2,
            # mean squared cosine of the moved directions with the row space (1: all functional)
            moved_in_rowspace=float(np.sum(ov.cosines**2) / k),
            moved_in_rowspace_baseline=(P - ov.dim2) / P,
        )

    sizes = [(int(k),) for k in ks if 1 <= int(k) <= V.shape[1]]
    return _tabulate(NullspaceOverlap, sizes, measure, rowspace_dim=int(R.shape[1]))


def seed_overlap(bases: Sequence[Any], *, complement: bool = True) -> SeedOverlap:
    r"""Pairwise overlap of the bulks of several runs (e.g. seeds) against the random baseline.

    ``bases``: per run, the moved directions (:class:`~matfree_tj.SingularTriplets` or ``(P, k)``
    basis) when
    ``complement=True`` (the bulk is their complement), or explicit bulk bases otherwise.
    Returns a :class:`SeedOverlap` (one entry per pair, and the means). No operator products;
    ``O(P k^2)`` flops per pair.

    Examples
    --------
    >>> import numpy as np
    >>> from matfree_tj.analysis import seed_overlap
    >>> E = np.eye(6)
    >>> ov = seed_overlap([E[:, :2], E[:, :2], E[:, 2:4]])
    >>> ov.pairs, [round(f, 3) for f in ov.basis_fraction]
    (((0, 1), (0, 2), (1, 2)), [1.0, 0.0, 0.0])
    """
    Bs = [_basis(b) for b in bases]
    if len(Bs) < 2:
        raise ValueError("seed_overlap needs at least two runs.")

    def measure(i: int, j: int) -> dict:
        ov = subspace_overlap(Bs[i], Bs[j], complement=complement)
        return dict(
            pairs=(i, j),
            fraction=ov.fraction,
            baseline=ov.baseline,
            basis_fraction=ov.basis_fraction,
            basis_baseline=ov.basis_baseline,
        )

    pairs = [(i, j) for i in range(len(Bs)) for j in range(i + 1, len(Bs))]
    return _tabulate(SeedOverlap, pairs, measure)
