r"""Intensive PCA: the embedding of a distance matrix by its double-centred eigenvectors.

Given pairwise distances :math:`D` of ``m`` models (Bhattacharyya, :func:`bhattacharyya_distances`),
InPCA (Quinn et al. 2019; Mao et al. 2024) takes the eigenvalues and eigenvectors of

.. math::
    W = -\tfrac12 L D L, \qquad L = I - \tfrac1m \mathbf 1 \mathbf 1^\top,

which for a non-Euclidean :math:`D` has eigenvalues of both signs (a Minkowski embedding: positive
ones are space-like, negative ones time-like). Coordinates are
:math:`x_{uj} = e_{uj}\sqrt{|\lambda_j|}`, so that
:math:`\sum_j \mathrm{sign}(\lambda_j)(x_{uj} - x_{vj})^2 = D_{uv}` when all components are kept.
Components are ranked by :math:`|\lambda|`; the stress explained by the first ``j`` is
:math:`\chi_j = 1 - \sqrt{1 - \sum_{i\le j}\lambda_i^2 / \|W\|_F^2}`
(:math:`\|W\|_F^2 = \sum_i \lambda_i^2` over all ``m`` eigenvalues, computed directly as a
Frobenius norm, so the matrix-free path needs no more eigenvalues than the ``k`` it returns).

Two routes: ``"dense"`` forms ``W`` (``m^2`` numbers) and calls ``eigh`` (``O(m^3)``);
``"lanczos"`` applies ``W`` implicitly, :math:`Wv = -\frac12 c(D\,c(v))` with :math:`c(x) = x -
\bar x`, to ``D`` given as an array, any square operator, or a :class:`DistanceOperator`
streaming ``D`` from predictions, and asks the project's restarted Lanczos
(:func:`~matfree_tj.top_singular`) for the ``k`` largest singular triplets of the symmetric
``W``: :math:`\sigma_i = |\lambda_i|`, :math:`u_i = \mathrm{sign}(\lambda_i)\,v_i`, so both ends
of the spectrum come out in one run, ranked by :math:`|\lambda|` as InPCA wants.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator, MatrixOperator, check_fits
from ..linalg import top_singular
from ._distances import DistanceOperator

__all__ = ["InPCAResult", "inpca", "CentredOperator"]

_HI = jax.lax.Precision.HIGHEST
_AUTO_LANCZOS_M = 5000


@jax.jit
def _centre_cols(X):
    return X - jnp.mean(X, axis=0, keepdims=True)


@jax.jit
def _half_centre(Y):
    return -0.5 * (Y - jnp.mean(Y, axis=0, keepdims=True))


class CentredOperator(AbstractOperator):
    r""":math:`W = -\frac12 L D L` of a square operator ``D`` without forming it: each product
    is one product of ``D`` plus two centrings (``O(m)`` per column). Derived: it calls ``D``'s
    compiled products, so it compiles none of its own."""

    base: AbstractOperator
    compiles_products: ClassVar[bool] = False

    def __init__(self, base: AbstractOperator):
        if not isinstance(base, AbstractOperator) or base.shape[0] != base.shape[1]:
            raise TypeError(
                "CentredOperator needs a square matfree_tj operator (the distances D), got "
                f"{type(base).__name__} of shape {getattr(base, 'shape', None)}."
            )
        self.base = base
        self.shape = base.shape
        self.dtype = base.dtype
        self.chunk_size = base.chunk_size
        self.mesh = base.mesh
        self.check_finite = base.check_finite

    def _mv(self, v):
        return _half_centre(self.base.apply("mv", _centre_cols(v[:, None])[:, 0])[:, None])[:, 0]

    def _rmv(self, u):
        return _half_centre(self.base.apply("rmv", _centre_cols(u[:, None])[:, 0])[:, None])[:, 0]

    def _matmat(self, V):
        return _half_centre(self.base.apply("matmat", _centre_cols(V)))

    def _rmatmat(self, U):
        return _half_centre(self.base.apply("rmatmat", _centre_cols(U)))


@dataclasses.dataclass(frozen=True)
class InPCAResult:
    r"""The ``k`` leading InPCA components of a distance matrix, with their accuracy.

    Attributes
    ----------
    eigenvalues
        ``(k,)`` signed eigenvalues of :math:`W`, sorted by :math:`|\lambda|` descending.
    eigenvectors
        ``(m, k)`` orthonormal eigenvectors (sign: the largest-magnitude entry positive).
    coords
        ``(m, k)`` embedding, ``eigenvectors * sqrt(|eigenvalues|)``.
    explained_stress
        ``(k,)`` :math:`\chi_j = 1 - \sqrt{1 - \sum_{i\le j}\lambda_i^2/\|W\|_F^2}`.
    total_sq
        :math:`\|W\|_F^2 = \sum_{\text{all } i}\lambda_i^2` (the stress denominator).
    signature
        ``(number of positive, number of negative)`` among the ``k`` eigenvalues, counting only
        those whose sign is certified, :math:`|\lambda_i| > r_i + atol`: eigenvalues that are
        zero within their accuracy (a rank-deficient ``W``) count in neither.
    residuals
        ``(k,)`` :math:`\|W e_i - \lambda_i e_i\|` from fresh products: some eigenvalue of
        :math:`W` lies within ``residuals[i]`` of ``eigenvalues[i]`` (symmetric ``W``).
    converged
        ``(k,)`` bool, ``residuals <= tol |eigenvalues| + atol``.
    method
        ``"dense"`` or ``"lanczos"``.
    status
        Lanczos: the solver's status (a plain string: ``"converged"``, ``"max_products"``,
        ``"unverified"``, ...). Dense: ``"converged"``, or ``"inaccurate"`` if a residual
        exceeds its tolerance (not expected of a backward-stable ``eigh``).
    num_products
        Products of ``D`` used (0 for dense; each one a full pass over the pairs for a
        :class:`DistanceOperator`).
    tol, atol
        The tolerances of the flags.
    row_means, grand_mean
        Row means of ``D`` and their mean: the centring that :meth:`embed` applies to new points.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    coords: np.ndarray
    explained_stress: np.ndarray
    total_sq: float
    signature: tuple[int, int]
    residuals: np.ndarray
    converged: np.ndarray
    method: str
    status: str
    num_products: int
    tol: float
    atol: float
    row_means: np.ndarray
    grand_mean: float

    @property
    def num_components(self) -> int:
        return int(self.eigenvalues.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.eigenvectors.shape[0])

    def embed(self, D_new: Any) -> np.ndarray:
        r"""Coordinates of new points from their distances ``D_new`` ``(m_new, m)`` to the ``m``
        reference points (classical-MDS out-of-sample / Nystrom extension, Gower 1968):

        .. math::
            w = -\tfrac12\big(d - \bar d - r + g\big),\qquad
            y_j = \frac{w\cdot e_j}{\lambda_j}\sqrt{|\lambda_j|},

        with ``r`` the reference row means and ``g`` their mean: the same centring as ``W``,
        so a reference point (``d = D[u]``) gets its own coordinates back. Components with
        :math:`\lambda_j = 0` get 0. Cost ``O(m_new m k)``.

        Returns
        -------
        numpy.ndarray
            ``(m_new, k)`` (or ``(k,)`` for a single ``(m,)`` row).
        """
        d = np.asarray(D_new, dtype=np.float64)
        single = d.ndim == 1
        d = d[None] if single else d
        m = self.num_points
        if d.ndim != 2 or d.shape[1] != m:
            raise ValueError(
                f"D_new must have shape (m_new, {m}): distances of new points to the {m} "
                f"reference points, got {d.shape}."
            )
        if not np.all(np.isfinite(d)):
            raise ValueError("D_new contains NaN or inf.")
        w = -0.5 * (d - d.mean(axis=1, keepdims=True) - self.row_means[None, :] + self.grand_mean)
        lam = self.eigenvalues
        scale = np.where(lam != 0, np.sqrt(np.abs(lam)) / np.where(lam != 0, lam, 1.0), 0.0)
        y = (w @ self.eigenvectors) * scale
        return y[0] if single else y

    def to_dict(self, *, include_coords: bool = False) -> dict:
        """Plain JSON-able dict (the ``(m, k)`` arrays only with ``include_coords=True``)."""
        out = {
            "eigenvalues": [float(x) for x in self.eigenvalues],
            "explained_stress": [float(x) for x in self.explained_stress],
            "total_sq": float(self.total_sq),
            "signature": [int(self.signature[0]), int(self.signature[1])],
            "residuals": [float(x) for x in self.residuals],
            "converged": [bool(x) for x in self.converged],
            "method": str(self.method),
            "status": str(self.status),
            "num_products": int(self.num_products),
            "tol": float(self.tol),
            "atol": float(self.atol),
            "num_points": self.num_points,
            "grand_mean": float(self.grand_mean),
        }
        if include_coords:
            out["coords"] = self.coords.tolist()
        return out


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


@jax.jit
def _array_stats(D):
    scale = jnp.max(jnp.abs(D))
    return (
        jnp.all(jnp.isfinite(D)),
        scale,
        jnp.max(jnp.abs(D - D.T)),
        jnp.min(D),
        jnp.max(jnp.abs(jnp.diagonal(D))),
    )


def _check_array(D: jax.Array) -> None:
    finite, scale, asym, low, diag = (float(x) for x in _array_stats(D))
    if not finite:
        raise ValueError("D contains NaN or inf.")
    eps = float(jnp.finfo(D.dtype).eps)
    slack = 100 * eps * scale
    if asym > slack:
        raise ValueError(
            f"D must be symmetric: max |D - D^T| = {asym:.3g} (allowed {slack:.1e} = 100 eps "
            "max|D|). Distances from bhattacharyya_distances(a) are; symmetrise a matrix "
            "assembled otherwise with (D + D.T) / 2."
        )
    if low < -slack:
        raise ValueError(f"D must be >= 0 (a distance), got a minimum of {low:.3g}.")
    if diag > slack:
        raise ValueError(
            f"D must have a zero diagonal (the distance of a model to itself), got max "
            f"|D_uu| = {diag:.3g}."
        )


def _check_k(k: Any, m: int, method: str) -> int:
    hi = m if method == "dense" else m - 1
    try:
        k_int = int(k)
    except (TypeError, ValueError):
        raise TypeError(f"num_components must be an integer, got {k!r}.") from None
    if k_int != k or not (1 <= k_int <= hi):
        raise ValueError(
            f"num_components must satisfy 1 <= k <= {hi} ({'m' if method == 'dense' else 'm - 1'}"
            f" for method={method!r}, m = {m} points), got {k!r}."
        )
    return k_int


# --------------------------------------------------------------------------------------
# The two routes
# --------------------------------------------------------------------------------------


@jax.jit
def _dense_w(D):
    r = jnp.mean(D, axis=1)
    c = jnp.mean(D, axis=0)
    g = jnp.mean(r)
    return -0.5 * (D - r[:, None] - c[None, :] + g), r, g


@jax.jit
def _centred_sq_norm_array(D, r, c, g):
    # fused by XLA into one reduction: W is never stored
    return 0.25 * jnp.sum(jnp.square(D - r[:, None] - c[None, :] + g))


def _canonical_signs(E: np.ndarray) -> np.ndarray:
    sign = np.sign(E[np.argmax(np.abs(E), axis=0), np.arange(E.shape[1])])
    return E * np.where(sign == 0, 1.0, sign)


def _stress(lam: np.ndarray, total_sq: float) -> np.ndarray:
    if total_sq <= 0:
        return np.zeros_like(lam)
    frac = np.clip(np.cumsum(lam**2) / total_sq, 0.0, 1.0)
    return 1.0 - np.sqrt(1.0 - frac)


def _dense(D: jax.Array, k: int, tol: float):
    m = D.shape[0]
    # W, its float64 host copy, LAPACK's work copy and the eigenvectors
    check_fits(
        (m * m) * (D.dtype.itemsize + 3 * 8), f"inpca(method='dense') of {m} points (W and eigh)"
    )
    W, r, g = _dense_w(D)
    Wn = np.asarray(W, np.float64)
    # host LAPACK (syevd): on CPU several times faster than jnp.linalg.eigh at m in the thousands
    lam_all, E_all = np.linalg.eigh(Wn)
    order = np.argsort(-np.abs(lam_all), kind="stable")[:k]
    lam, E = lam_all[order], _canonical_signs(E_all[:, order])
    res = np.linalg.norm(Wn @ E - E * lam, axis=0)
    total_sq = float(np.sum(Wn * Wn))
    eps = float(jnp.finfo(D.dtype).eps)
    atol = 100 * eps * float(np.max(np.abs(lam_all))) if m else 0.0
    info = dict(method="dense", status="converged", num_products=0, atol=atol)
    return lam, E, res, total_sq, np.asarray(r, np.float64), float(g), info


def _lanczos(Dop: AbstractOperator, D_array, k: int, tol: float, key, progress):
    m = Dop.shape[0]
    dt = Dop.dtype
    ones = jnp.full((m,), 1.0 / m, dt)
    r = Dop.mv(ones)  # row means: one product
    g = jnp.mean(r)
    c = r if isinstance(Dop, DistanceOperator) else Dop.rmv(ones)
    extra = 1 if isinstance(Dop, DistanceOperator) else 2
    if D_array is not None:
        total_sq = float(_centred_sq_norm_array(D_array, r, c, g))
    elif isinstance(Dop, DistanceOperator):
        total_sq = 0.25 * Dop.centred_sq_norm(r, g)
        extra += 1  # one more pass over the pairs
    else:  # a generic operator: ||W||_F^2 from W's columns, m products
        Wop_cols = CentredOperator(Dop)
        total_sq, step = 0.0, 256
        for s in range(0, m, step):
            E = jnp.eye(m, min(step, m - s), -s, dtype=dt)
            total_sq += float(jnp.sum(jnp.square(Wop_cols.matmat(E))))
        extra += m
    Wop = CentredOperator(Dop)
    trip = top_singular(Wop, k, key=key, tol=tol, progress=progress)
    U = np.asarray(trip.U, np.float64)
    V = np.asarray(trip.V, np.float64)
    s = np.asarray(trip.s, np.float64)
    sign = np.sign(np.sum(U * V, axis=0))
    lam = s * np.where(sign == 0, 1.0, sign)
    E = _canonical_signs(V)
    # eigen-residuals from fresh products (k columns in one block product)
    WE = np.asarray(Wop.matmat(jnp.asarray(E, dt)), np.float64)
    res = np.linalg.norm(WE - E * lam, axis=0)
    info = dict(
        method="lanczos",
        status=str(trip.status),
        num_products=int(trip.num_products) + k + extra,
        atol=float(trip.atol),
    )
    return lam, E, res, total_sq, np.asarray(r, np.float64), float(g), info


def inpca(
    D: Any,
    *,
    num_components: int,
    method: str = "auto",
    key: jax.Array | None = None,
    tol: float = 1e-10,
    progress: Any = None,
) -> InPCAResult:
    r"""InPCA of a distance matrix: the ``k`` eigenpairs of :math:`W = -\frac12 LDL` largest in
    :math:`|\lambda|`, the embedding and the stress they explain.

    Parameters
    ----------
    D
        ``(m, m)`` distances (symmetric, ``>= 0``, zero diagonal; checked), or a square
        operator of them: a :class:`DistanceOperator` (streams ``D`` from predictions) or any
        :class:`~matfree_tj.AbstractOperator` (``method="lanczos"``).
    num_components
        ``k``: ``1 <= k <= m`` (dense), ``k <= m - 1`` (Lanczos).
    method
        ``"dense"`` (form ``W``, ``eigh``), ``"lanczos"`` (matrix-free) or ``"auto"``: dense
        for an array with ``m < 5000``, otherwise Lanczos.
    key
        PRNG key of the Lanczos start vector (required for ``"lanczos"``; no default key).
    tol
        Relative residual tolerance of the convergence flags (and of the Lanczos solve).
    progress
        Optional callable receiving one line per Lanczos restart.

    Returns
    -------
    InPCAResult

    Cost: dense ``O(m^3)`` flops, ``~4 m^2`` numbers. Lanczos: the products of
    :func:`~matfree_tj.top_singular` on ``W`` (each one product of ``D`` and two centrings;
    typically tens to a few hundred for ``k`` of a few tens), ``k`` more for the eigen-residuals,
    one or two for the row means, and for :math:`\|W\|_F^2` one fused pass over an array ``D``
    (no copy), one pass over the pairs for a :class:`DistanceOperator`, or ``m`` products for
    another operator. Memory ``O(m (k + basis))`` beyond ``D``.

    References
    ----------
    Quinn, Clement, De Bernardis, Niemack, Sethna, PNAS 116 (2019); Mao et al., PNAS 121 (2024);
    Gower, "Adding a point to vector diagrams in multivariate analysis", Biometrika 55 (1968).

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> x = jnp.array([0.0, 1.0, 3.0])
    >>> D = (x[:, None] - x[None, :]) ** 2   # squared Euclidean: W = centred Gram matrix
    >>> res = mtj.inpca(D, num_components=1)
    >>> round(float(res.eigenvalues[0]), 6), round(float(res.explained_stress[0]), 6)
    (4.666667, 1.0)
    """
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}.")
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise TypeError(f"tol must be a number, got {tol!r}.") from None
    if not (math.isfinite(tol) and 0 < tol < 1):
        raise ValueError(f"tol must lie in (0, 1), got {tol}.")
    if isinstance(D, AbstractOperator):
        if D.shape[0] != D.shape[1]:
            raise ValueError(f"D must be square (m, m), got an operator of shape {D.shape}.")
        m = D.shape[0]
        D_array = None
        if method == "auto":
            method = "lanczos"
    else:
        D_array = jnp.asarray(D)
        if not jnp.issubdtype(D_array.dtype, jnp.floating):
            raise TypeError(f"D must be a floating-point array, got dtype {D_array.dtype.name}.")
        if D_array.ndim != 2 or D_array.shape[0] != D_array.shape[1] or D_array.shape[0] < 2:
            raise ValueError(
                f"D must be a square (m, m) distance matrix with m >= 2, got shape "
                f"{tuple(D_array.shape)}."
            )
        _check_array(D_array)
        m = D_array.shape[0]
        if method == "auto":
            method = "dense" if m < _AUTO_LANCZOS_M else "lanczos"
    k = _check_k(num_components, m, method)
    if method == "dense":
        if D_array is None:
            D_array = D.to_dense()
            _check_array(D_array)
        lam, E, res, total_sq, r, g, info = _dense(D_array, k, tol)
    else:
        if key is None:
            raise TypeError(
                "inpca(method='lanczos') needs key=jax.random.key(seed) for the Lanczos start "
                "vector (there is no default key); method='auto' chooses Lanczos for m >= "
                f"{_AUTO_LANCZOS_M} or an operator D."
            )
        Dop = D if D_array is None else MatrixOperator(D_array)
        lam, E, res, total_sq, r, g, info = _lanczos(Dop, D_array, k, tol, key, progress)
    coords = E * np.sqrt(np.abs(lam))
    converged = res <= tol * np.abs(lam) + info["atol"]
    floor = res + info["atol"]
    return InPCAResult(
        eigenvalues=lam,
        eigenvectors=E,
        coords=coords,
        explained_stress=_stress(lam, total_sq),
        total_sq=float(total_sq),
        # a sign counts only where the certificate separates the eigenvalue from zero
        signature=(int(np.sum(lam > floor)), int(np.sum(lam < -floor))),
        residuals=res,
        converged=converged,
        method=info["method"],
        # dense: eigh is backward stable, a flag can only fail through a huge rounding floor
        status=info["status"] if method == "lanczos" or bool(np.all(converged)) else "inaccurate",
        num_products=info["num_products"],
        tol=tol,
        atol=info["atol"],
        row_means=r,
        grand_mean=g,
    )
