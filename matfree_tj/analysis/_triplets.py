r"""Singular triplets for the experiments, and experiment 2: alignment of left and right
singular vectors.

:func:`singular_triplets` and :func:`moved_directions` return the library's one triplets type,
:class:`~matfree_tj.SingularTriplets`, as float64 numpy with canonical signs (what the analyses
consume), from the matrix-free solvers or the dense oracle. The bulk is used through its
complement, the moved directions (module docs of :mod:`matfree_tj.analysis`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator, add_identity
from ..linalg import (
    SingularTriplets,
    bottom_singular,
    dense_svd,
    project_off,
    top_singular,
)
from ._common import _check_backend, _check_k, _dense_matrix, _np

_WHICH = {"top": "largest", "bottom": "smallest", "all": "all"}


def _as_float64(res: SingularTriplets, **changes: Any) -> SingularTriplets:
    """``res`` as float64 numpy with canonical signs: the form every analysis consumes (the
    library's one triplets type; nonlinear experiments compare vectors across backends)."""
    fields = {
        "s": _np(res.s),
        "U": _np(res.U),
        "V": _np(res.V),
        "residuals": _np(res.residuals),
        "converged": np.asarray(res.converged, bool),
    }
    return dataclasses.replace(res, **{**fields, **changes}).with_canonical_signs()


def singular_triplets(
    op: AbstractOperator,
    k: int | None,
    *,
    key: jax.Array | None = None,
    which: str = "top",
    backend: str = "matrix-free",
    dense: Any = None,
    **opts,
) -> SingularTriplets:
    r"""The ``k`` largest (``which="top"``) or smallest (``"bottom"``) singular triplets of ``op``.

    Matrix-free: :func:`matfree_tj.top_singular` / :func:`matfree_tj.bottom_singular` with
    ``opts`` (needs ``key``); cost as reported in ``num_products`` (Krylov methods: a few ``k``
    products of ``op`` and of ``op^T``). Dense: materialise (``P`` products; or pass the matrix /
    a :class:`~matfree_tj.SingularTriplets` from :func:`~matfree_tj.dense_svd` as ``dense``) and a
    full SVD; ``which="all"`` (``k=None``)
    returns every triplet.
    """
    _check_backend(backend)
    if which not in ("top", "bottom", "all"):
        raise ValueError(f"which must be 'top', 'bottom' or 'all', got {which!r}.")
    shape = tuple(op.shape) if isinstance(op, AbstractOperator) else np.shape(op)
    P = min(shape)
    if which == "all":
        if backend != "dense":
            raise ValueError(
                "which='all' needs backend='dense' (every triplet of a P x P operator)."
            )
        k = P
    k = _check_k(k, P)
    if backend == "dense":
        svd = dense if isinstance(dense, SingularTriplets) else None
        if svd is not None and (svd.U is None or svd.V is None):
            raise ValueError(
                "singular_triplets: dense is an SVD without singular vectors. Compute it "
                "with dense_svd(..., compute_vectors=True), or pass the dense matrix."
            )
        if svd is None:
            A = _dense_matrix(op if dense is None else dense)
            if A.shape != shape:
                raise ValueError(
                    f"singular_triplets: dense has shape {A.shape}, the operator {shape}."
                )
            svd = dense_svd(A, compute_vectors=True)
        order = np.arange(k) if which != "bottom" else np.arange(len(svd))[::-1][:k]
        pick = lambda x: _np(x)[..., order]  # noqa: E731 - columns (or values) in order
        return _as_float64(
            svd,
            s=pick(svd.s),
            U=pick(svd.U),
            V=pick(svd.V),
            residuals=pick(svd.residuals),
            converged=np.asarray(svd.converged)[order],
            which=_WHICH[which],
            num_products=0 if dense is not None else P,
        )
    if key is None:
        raise ValueError("backend='matrix-free' needs an explicit key=jax.random.key(...).")
    fn = top_singular if which == "top" else bottom_singular
    return _as_float64(fn(op, k, key=key, **opts))


def moved_directions(
    J: AbstractOperator,
    k: int,
    *,
    key: jax.Array | None = None,
    backend: str = "matrix-free",
    dense: Any = None,
    **opts,
) -> SingularTriplets:
    r"""Top-``k`` singular triplets of ``J - I``: the directions training moved.

    Their right vectors span the complement of the bulk (module docs). Matrix-free: one product
    of ``J`` (or ``J^T``) per product of ``J - I`` (:func:`matfree_tj.add_identity`); dense: pass
    ``dense`` = the materialised ``J`` (a ``(P, P)`` array, or a
    :class:`~matfree_tj.SingularTriplets` from :func:`~matfree_tj.dense_svd`
    *of J* with vectors, from which ``J`` is rebuilt) to avoid ``P`` more products. ``J - I`` is
    formed here; its SVD is a different one from ``J``'s, so never pass an SVD of ``J - I``.
    """
    JmI = add_identity(J, -1.0)
    dm = None
    if backend == "dense" and dense is not None:
        if isinstance(dense, SingularTriplets):
            if dense.U is None or dense.V is None:
                raise ValueError(
                    "moved_directions: dense is an SVD of J without singular vectors, so J "
                    "cannot be rebuilt to form J - I. Pass the dense matrix of J, or "
                    "dense_svd(J, compute_vectors=True)."
                )
            dense = (_np(dense.U) * _np(dense.s)) @ _np(dense.V).T
        dm = _np(dense)
        if dm.shape != tuple(J.shape):
            raise ValueError(
                f"moved_directions: dense must be the {J.shape} matrix of J, got shape {dm.shape}."
            )
        dm = dm - np.eye(J.shape[0])
    return singular_triplets(JmI, k, key=key, which="top", backend=backend, dense=dm, **opts)


def alignment(trip: SingularTriplets) -> np.ndarray:
    r"""``cos(u_i, v_i)`` for every triplet (well defined: a triplet's sign flips ``u`` and ``v``
    together). Needs only the triplets; no operator products.

    Examples
    --------
    >>> import numpy as np, matfree_tj as mtj
    >>> from matfree_tj.analysis import alignment
    >>> alignment(mtj.dense_svd(np.array([[2.0, 0.0], [0.0, -1.0]]), compute_vectors=True))
    array([ 1., -1.])
    """
    num = np.sum(trip.U * trip.V, axis=0)
    den = np.linalg.norm(trip.U, axis=0) * np.linalg.norm(trip.V, axis=0)
    return num / den


@dataclasses.dataclass(frozen=True)
class AlignmentSummary:
    """Mean ``cos(u_i, v_i)`` over windows of a full spectrum (:func:`alignment_summary`).

    Attributes
    ----------
    closest
        ``{w: mean cos}`` over the ``w`` singular values closest to 1, for each window ``w``
        that fits in the spectrum (the bulk, without choosing region bounds).
    top, bottom
        Mean cos over the ``edge`` largest and the ``edge`` smallest singular values.
    edge
        How many values ``top`` and ``bottom`` average.
    """

    closest: dict[int, float]
    top: float
    bottom: float
    edge: int

    def to_dict(self) -> dict:
        """``{"closest_<w>": ..., "top_<edge>": ..., "bottom_<edge>": ...}``, JSON-ready."""
        out = {f"closest_{w}": float(c) for w, c in self.closest.items()}
        out[f"top_{self.edge}"] = float(self.top)
        out[f"bottom_{self.edge}"] = float(self.bottom)
        return out


def alignment_summary(
    s: Any, cos: Any, windows: Sequence[int] = (500, 2000), edge: int = 10
) -> AlignmentSummary:
    r"""Mean ``cos(u_i, v_i)`` over the ``w`` values closest to 1 (for each ``w`` in ``windows``
    that fits), and over the top and bottom ``edge`` values. Dense triplets (all of them); no
    operator products.

    Examples
    --------
    >>> from matfree_tj.analysis import alignment_summary
    >>> summ = alignment_summary([5.0, 1.0, 1.0, 0.1], [0.2, 1.0, 0.8, 0.0], windows=(2,), edge=1)
    >>> summ.closest, summ.top, summ.bottom
    ({2: 0.9}, 0.2, 0.0)
    """
    s, cos = np.asarray(s), np.asarray(cos)
    order = np.argsort(np.abs(s - 1.0))
    closest = {int(w): float(np.mean(cos[order[:w]])) for w in windows if w <= s.size}
    desc = np.argsort(-s)
    return AlignmentSummary(
        closest,
        float(np.mean(cos[desc[:edge]])),
        float(np.mean(cos[desc[-edge:]])),
        int(edge),
    )


def random_bulk_basis(
    moved: Any, k: int, *, key: jax.Array, num_params: int | None = None
) -> np.ndarray:
    r"""``k`` orthonormal random directions in the bulk: Gaussian vectors projected off the moved
    subspace (``moved``: a :class:`~matfree_tj.SingularTriplets` or a ``(P, m)`` orthonormal basis)
    and
    orthonormalised. No operator products; ``O(P m k)`` flops."""
    B = moved.V if isinstance(moved, SingularTriplets) else np.asarray(moved)
    if B.ndim != 2:
        raise ValueError(
            f"moved must be a SingularTriplets or a (P, m) basis, got shape {B.shape}."
        )
    P = B.shape[0] if num_params is None else int(num_params)
    if B.shape[0] != P:
        raise ValueError(f"moved has {B.shape[0]} rows but num_params={P}.")
    k = _check_k(k, P - B.shape[1], limit="P - m = ")
    G = np.asarray(
        jax.random.normal(key, (P, k), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32),
        dtype=np.float64,
    )
    # project_off reorthogonalises twice; orthogonality to B holds to the working precision.
    Q, _ = np.linalg.qr(_np(project_off(jnp.asarray(G), jnp.asarray(B))))
    return Q


@dataclasses.dataclass(frozen=True)
class ProbeAlignment:
    """How ``J`` carries a set of unit probes ``x``: ``cos(x, J x)`` and the gain ``|J x|``.

    Attributes
    ----------
    cos
        ``(num_probes,)`` cosines between each probe and its image.
    gain
        ``(num_probes,)`` norms ``|J x|`` (1: neither stretched nor shrunk).
    """

    cos: np.ndarray
    gain: np.ndarray

    @property
    def mean_cos(self) -> float:
        return float(np.mean(self.cos))

    @property
    def mean_gain(self) -> float:
        return float(np.mean(self.gain))

    def to_dict(self) -> dict:
        return {
            "cos": [float(c) for c in self.cos],
            "gain": [float(g) for g in self.gain],
            "mean_cos": self.mean_cos,
            "mean_gain": self.mean_gain,
        }


@dataclasses.dataclass(frozen=True)
class BulkAlignmentProbe:
    """Result of :func:`bulk_alignment_probe`.

    Attributes
    ----------
    bulk
        Random unit directions of the bulk (orthogonal to the moved directions).
    random
        Plain random unit directions, the baseline.
    num_products
        Products of ``J`` used (``2 num_probes``).
    """

    bulk: ProbeAlignment
    random: ProbeAlignment
    num_products: int

    def to_dict(self) -> dict:
        """``{"bulk": {...}, "random": {...}, "num_products"}``, JSON-ready."""
        return {
            "bulk": self.bulk.to_dict(),
            "random": self.random.to_dict(),
            "num_products": int(self.num_products),
        }


def bulk_alignment_probe(
    J: AbstractOperator, moved: Any, *, key: jax.Array, num_probes: int = 8
) -> BulkAlignmentProbe:
    r"""How unchanged training carries a random bulk direction, matrix-free.

    For unit ``x`` drawn uniformly from the bulk (:func:`random_bulk_basis`) returns
    ``cos(x, J x)`` and the gain ``|J x|``, and the same for plain random unit vectors as a
    baseline. In the paper's picture bulk directions have ``cos ~ 1`` and gain ``~ 1``.
    Cost: ``2 num_probes`` products of ``J`` (one block product each).

    Examples
    --------
    >>> import jax, numpy as np, matfree_tj as mtj
    >>> from matfree_tj.analysis import bulk_alignment_probe, moved_directions
    >>> lr = mtj.examples.linear_regression(jax.random.key(0), 4, 12, eta=0.5, num_steps=3)
    >>> J = mtj.training_jacobian(lr.train_fn, lr.params0)
    >>> moved = moved_directions(J, 4, backend="dense")  # J = I off these 4 directions
    >>> probe = bulk_alignment_probe(J, moved, key=jax.random.key(1), num_probes=2)
    >>> np.round(probe.bulk.cos, 4), probe.num_products
    (array([1., 1.]), 4)
    """
    P = J.shape[1]
    k1, k2 = jax.random.split(key)
    X = random_bulk_basis(moved, num_probes, key=k1, num_params=P)
    R, _ = np.linalg.qr(_np(jax.random.normal(k2, (P, num_probes))))
    out = {}
    for name, Z in (("bulk", X), ("random", R)):
        Y = _np(J.matmat(jnp.asarray(Z, J.dtype)))
        gain = np.linalg.norm(Y, axis=0)
        out[name] = ProbeAlignment(np.sum(Y * Z, axis=0) / gain, gain)
    return BulkAlignmentProbe(out["bulk"], out["random"], 2 * int(num_probes))
