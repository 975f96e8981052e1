r"""The whole spectrum from one SLQ run: :math:`\sigma_i` against ``i`` for all ``i``, with a band.

The paper draws :math:`\sigma_i` against ``i`` (log axis) and :math:`|\sigma_i - 1|` against ``i``
from a dense SVD. Matrix-free, the same picture follows from the quadrature that makes the
region counts (:class:`~matfree_tj.SpectralDensity`), with no further products: the counting
function

.. math:: N(\sigma) = \#\{j : \sigma_j \ge \sigma\} = c(\sigma) + n\, G(\sigma),

(``c`` deflated values counted exactly, ``n = P - c`` left to the quadrature and :math:`G` the
fraction of those at or above :math:`\sigma`) is monotone, and :math:`\sigma_i \ge \sigma`
exactly when :math:`N(\sigma) \ge i`. So a curve for :math:`N` inverts into a curve for
:math:`\sigma_i`, and a band on :math:`N` at each :math:`\sigma` inverts into a band on
:math:`\sigma_i` at each ``i``: if :math:`N_{lo} \le N \le N_{hi}`, then
:math:`\sigma_i \ge \sup\{\sigma : N_{lo}(\sigma) \ge i\}` and
:math:`\sigma_i \le \inf\{\sigma : N_{hi}(\sigma) < i\}`.

:func:`spectrum_profile` does this with both errors of the counts (as
:meth:`matfree_tj.RegionCounts.interval` does for three intervals): the quadrature's own, through
the guaranteed per-probe bounds of :meth:`SpectralDensity.per_probe_cdf_bounds`, and the probes'
spread, through a Student-t multiple of the standard error over probes.

References
----------
Golub & Meurant, "Matrices, Moments and Quadrature with Applications", Princeton (2010), ch. 6
(the Chebyshev-Markov-Stieltjes inequalities). Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 38
(2017). Belrose & Scherlis, arXiv:2412.07003 (2024), Fig. 1 (the dense picture).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._quadrature import SpectralDensity, probe_quantile

__all__ = ["SpectrumProfile", "spectrum_profile"]


@dataclasses.dataclass(frozen=True)
class SpectrumProfile:
    r""":math:`\sigma_i` against ``i`` for all ``i`` (on a grid of indices), with a band.

    Attributes
    ----------
    index
        ``(k,)`` ascending 1-based indices (``1`` the largest value, ``dim`` the smallest):
        log-spaced from both ends plus the region boundaries, or those asked for.
    estimate
        ``(k,)`` estimated :math:`\sigma_i`: the counting function of the Gauss rules (each
        probe's distribution function interpolated linearly through the middles of its steps,
        which stays inside its guaranteed bounds) averaged over probes and inverted at
        ``i - 1/2``. Top indices ``1..c`` hold the deflated values (exact to ``rounding``).
    lower, upper
        ``(k,)`` the band: for each ``i``, :math:`\sigma_i` lies in ``[lower, upper]`` with
        probability about ``level`` or more (pointwise in ``i``, not simultaneously for all).
        It holds the guaranteed quadrature bounds widened at each end by ``t`` standard
        errors over probes (``t`` the Student-t quantile of ``level``), inverted from counts
        to values, then widened by ``rounding``. Where the band is ``[0, x]`` the quadrature
        says nothing about how small the values are: the stable end, below the smallest
        Gauss nodes, and anything below ``rounding``.
    top_values
        The values counted exactly (deflated triplets), descending, at indices ``1..c``.
    bottom_values
        Exactly computed smallest values (e.g. converged :func:`~matfree_tj.bottom_singular`),
        ascending, at indices ``dim, dim - 1, ...`` (empty if none were given); the estimate
        and band hold them there, and the band's lower end is at least their largest elsewhere.
    dim
        ``P``.
    level
        The band's coverage probability (pointwise).
    rounding
        Absolute accuracy of the nodes in :math:`\sigma` (the arithmetic's floor): the band
        is widened by it on both sides, and an estimate below it is not resolved.
    cap
        The largest value the band allows for an index beyond the deflated ones: the smallest
        deflated value (the deflated triplets are the top ones), else the largest Gauss node
        seen (Lanczos finds the extreme values first). The one assumption of the band.
    num_probes, num_steps
        Of the quadrature.
    """

    index: np.ndarray
    estimate: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    top_values: np.ndarray
    bottom_values: np.ndarray
    dim: int
    level: float
    rounding: float
    cap: float
    num_probes: int
    num_steps: int

    @property
    def top_index(self) -> np.ndarray:
        """Indices ``1..c`` of :attr:`top_values`."""
        return np.arange(1, self.top_values.size + 1)

    @property
    def bottom_index(self) -> np.ndarray:
        """Indices ``dim, dim - 1, ...`` of :attr:`bottom_values`."""
        return self.dim - np.arange(self.bottom_values.size)

    def distance_from_one(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""``(estimate, lower, upper)`` of :math:`|\sigma_i - 1|` on :attr:`index`: the band
        maps through :math:`|x - 1|` (lower ``0`` where the band contains ``1``)."""
        est = np.abs(self.estimate - 1.0)
        a, b = np.abs(self.lower - 1.0), np.abs(self.upper - 1.0)
        inside = (self.lower <= 1.0) & (self.upper >= 1.0)
        return est, np.where(inside, 0.0, np.minimum(a, b)), np.maximum(a, b)

    def coverage(self, values: Any) -> float:
        """Fraction of :attr:`index` whose ``values[i - 1]`` (all ``P`` values, descending,
        e.g. from :func:`~matfree_tj.dense_svd`) lie inside the band (a check against a dense
        spectrum)."""
        s = np.sort(np.asarray(values, dtype=np.float64))[::-1]
        if s.size != self.dim:
            raise ValueError(f"Expected {self.dim} singular values, got {s.size}.")
        v = s[self.index - 1]
        return float(np.mean((v >= self.lower) & (v <= self.upper)))

    def to_dict(self) -> dict:
        """Plain JSON-able dict (lists of floats)."""
        return {
            "index": [int(i) for i in self.index],
            "estimate": [float(x) for x in self.estimate],
            "lower": [float(x) for x in self.lower],
            "upper": [float(x) for x in self.upper],
            "top_values": [float(x) for x in self.top_values],
            "bottom_values": [float(x) for x in self.bottom_values],
            "dim": int(self.dim),
            "level": float(self.level),
            "rounding": float(self.rounding),
            "cap": float(self.cap),
            "num_probes": int(self.num_probes),
            "num_steps": int(self.num_steps),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SpectrumProfile:
        """The inverse of :meth:`to_dict` (e.g. to redraw a figure from a JSON record)."""
        arrays = ("estimate", "lower", "upper", "top_values", "bottom_values")
        return cls(
            index=np.asarray(d["index"], dtype=np.int64),
            **{k: np.asarray(d[k], dtype=np.float64) for k in arrays},
            dim=int(d["dim"]),
            level=float(d["level"]),
            rounding=float(d["rounding"]),
            cap=float(d["cap"]),
            num_probes=int(d["num_probes"]),
            num_steps=int(d["num_steps"]),
        )


def _probe_grid(nodes: np.ndarray, weights: np.ndarray, x: np.ndarray):
    """Per probe on the points ``x`` (ascending): the guaranteed ``(lower, upper)`` of the
    fraction of the probe's mass at or above ``x`` and the interpolated estimate of it, each
    ``(num_probes, len(x))``. The bounds are :meth:`SpectralDensity.per_probe_cdf_bounds`
    (which hold for ``<`` as well as ``<=``) at every point at once."""
    num, m = nodes.shape
    W = np.concatenate([np.zeros((num, 1)), np.cumsum(weights, axis=1)], axis=1)
    W = np.minimum(W / W[:, -1:], 1.0)
    lower_cdf = np.empty((num, x.size))
    upper_cdf = np.empty((num, x.size))
    mid_cdf = np.empty((num, x.size))
    for p in range(num):
        s = nodes[p]
        n_le = np.searchsorted(s, x, side="right")
        n_lt = np.searchsorted(s, x, side="left")
        lower_cdf[p] = W[p, np.maximum(n_le - 1, 0)]
        upper_cdf[p] = W[p, np.minimum(n_lt + 1, m)]
        # through the middle of each step, from 0 at sigma = 0; all of it above the top node
        mids = W[p, :-1] + 0.5 * np.diff(W[p])
        xs, ys = (s, mids) if s[0] <= 0 else (np.r_[0.0, s], np.r_[0.0, mids])
        mid_cdf[p] = np.interp(x, xs, ys, left=0.0, right=1.0)
    return 1.0 - upper_cdf, 1.0 - lower_cdf, 1.0 - mid_cdf


def _stderr(a: np.ndarray) -> np.ndarray:
    return np.std(a, axis=0, ddof=1) / math.sqrt(a.shape[0])


def _default_index(dim: int, num_points: int) -> np.ndarray:
    """Log-spaced from both ends of ``1..dim`` (dense near ``1`` and near ``dim``)."""
    half = max(num_points // 2, 2)
    ramp = np.unique(np.round(np.logspace(0.0, math.log10(dim), half)).astype(np.int64))
    return np.unique(np.concatenate([ramp, dim + 1 - ramp]))


def spectrum_profile(
    density: SpectralDensity,
    *,
    level: float = 0.95,
    index: Any = None,
    num_points: int = 400,
    boundaries: Any = (),
    rounding: float = 0.0,
    bottom: Any = None,
) -> SpectrumProfile:
    r"""Every singular value :math:`\sigma_i` against its index, with a band, from one SLQ run.

    Inverts the counting function :math:`N(\sigma) = \#\{j: \sigma_j \ge \sigma\}` of the
    quadrature (see the module docstring): the estimate from the Gauss rules, the band from
    their guaranteed bounds and the probes' spread. No operator products.

    The band, at each index ``i`` (pointwise):

    * At each :math:`\sigma`, each probe's fraction of mass at or above :math:`\sigma` lies
      between guaranteed bounds (Chebyshev-Markov-Stieltjes, exact arithmetic); the mean over
      probes of the true fractions is unbiased for :math:`G(\sigma)` (Hutchinson). So
      :math:`N(\sigma) \ge N_{lo}(\sigma) = c(\sigma) + n(\bar g_{lo} - t\, s_{lo})` and
      :math:`N(\sigma) \le N_{hi}(\sigma) = c(\sigma) + n(\bar g_{hi} + t\, s_{hi})`, each
      with probability about ``(1 + level) / 2``: :math:`\bar g` the probe means of the
      bounds, ``s`` the larger of their standard error and the estimate's (as
      :func:`~matfree_tj.linalg.count_interval`), ``t`` = :func:`probe_quantile` of ``level``.
    * Both are made monotone (conservatively: a running minimum / maximum) and inverted:
      ``lower[i] = sup{sigma: N_lo(sigma) >= i}`` (0 if none),
      ``upper[i] = inf{sigma: N_hi(sigma) < i}`` (:attr:`SpectrumProfile.cap` if none). The
      failure of either end at index ``i`` is the failure of the count bound just beside
      :math:`\sigma_i`, so each end fails with probability about ``(1 - level) / 2``.
    * Then ``rounding`` is subtracted and added (Weyl: nodes computed with an error of that
      size are exact for an operator within it of ``A``).

    Where it says little: near ``P`` the smallest Gauss node of each probe carries its weight
    down to ``0`` (the lower end is then ``0``: a stable end with thousands of values near
    ``1e-9`` is *not* resolved by a few hundred steps; :func:`~matfree_tj.bottom_singular`
    values can be passed as ``bottom``), and in a narrow cluster (the bulk, within ``1e-3``
    of ``1``) the band spans the cluster's neighbourhood at the quadrature's resolution
    :attr:`SpectralDensity.resolution`, so :math:`|\sigma_i - 1|` is bounded above there, not
    resolved. With one probe the band is the trivial ``[0, cap]``.

    Parameters
    ----------
    density
        The quadrature (:func:`~matfree_tj.singular_value_density`), deflated or not.
    level
        Pointwise coverage of the band, in ``(0, 1)`` (default 0.95).
    index
        1-based indices to report (default: ``num_points`` log-spaced from both ends, plus
        ``c``, ``c + 1`` and the indices of ``boundaries``).
    num_points
        Size of the default index grid (>= 4).
    boundaries
        Values of :math:`\sigma` (e.g. the region bounds ``lo, hi``) whose estimated indices
        (and the next ones) join the default grid, so the drawn curve has its corners there.
    rounding
        Absolute accuracy of the nodes (default 0: exact arithmetic; e.g. about
        :math:`100 \epsilon \|A\|` for products in a dtype with machine epsilon
        :math:`\epsilon`, the floor the solvers certify to).
    bottom
        Optional exactly computed smallest values (any order; they must be the smallest
        ``b``, e.g. the converged ones of :func:`~matfree_tj.bottom_singular`): exact at
        ``P, P - 1, ..., P - b + 1`` (estimate and band, widened by ``rounding``), and the
        lower end of the band at every other index is at least their largest.

    Returns
    -------
    SpectrumProfile
        ``index``, ``estimate``, ``lower``, ``upper``, the exact values and what the band
        means.

    Cost: no products; numpy work and memory ``O(num_probes^2 * num_steps)`` (every probe's
    bounds at every node of every probe: 3 x 20 x 40,000 floats, 19 MB, for 20 probes x 1000
    steps).

    The Hutchinson argument assumes independent probes with :math:`E[q q^T] = I / n`; normalised
    probes projected off deflated vectors are isotropic only approximately (a bias far below
    the probe spread for ``c << P``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np, matfree_tj as mtj
    >>> from matfree_tj.linalg import spectrum_profile
    >>> s = jnp.linspace(0.1, 3.0, 60)
    >>> op = mtj.MatrixOperator(jnp.diag(s))
    >>> d = mtj.singular_value_density(op, key=jax.random.key(0), num_probes=6, num_steps=20)
    >>> prof = spectrum_profile(d)
    >>> prof.coverage(s)  # the exact values lie inside the band
    1.0
    """
    if not isinstance(density, SpectralDensity):
        raise TypeError(
            f"spectrum_profile needs a SpectralDensity (from singular_value_density), got "
            f"{type(density).__name__}."
        )
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"Expected 0 < level < 1, got level={level}.")
    rounding = float(rounding)
    if not (rounding >= 0.0 and math.isfinite(rounding)):
        raise ValueError(f"Expected a finite rounding >= 0, got {rounding}.")
    P = int(density.dim)
    d = np.sort(np.asarray(density.deflated, dtype=np.float64))[::-1]
    c = d.size
    n = P - c
    nodes = np.asarray(density.nodes, dtype=np.float64)
    weights = np.asarray(density.weights, dtype=np.float64)
    num = nodes.shape[0]
    rank = np.argsort(nodes, axis=1, kind="stable")  # ascending, each node with its weight
    nodes, weights = np.take_along_axis(nodes, rank, 1), np.take_along_axis(weights, rank, 1)

    # Every function below is constant between consecutive points of S (each probe's bounds
    # change only at its own nodes, c(sigma) only at deflated values): evaluating at S and
    # just above each point of S gives them exactly.
    S = np.unique(np.concatenate([[0.0], nodes.ravel(), d]))
    S_up = np.nextafter(S, np.inf)
    X = np.concatenate([S, S_up])
    g_lo, g_hi, g_mid = _probe_grid(nodes, weights, X)
    c_ge = c - np.searchsorted(d[::-1], X, side="left")  # deflated values >= X
    estimate_counts = c_ge + n * np.mean(g_mid, axis=0)
    # the estimated counting function, ascending in sigma (so descending in count)
    order = np.argsort(X, kind="stable")
    xs = X[order]
    ns = np.minimum.accumulate(estimate_counts[order])  # exactly monotone despite rounding
    if num >= 2:
        t = probe_quantile(num, float(level))
        se_mid = _stderr(g_mid)
        n_lo = c_ge + n * (np.mean(g_lo, axis=0) - t * np.maximum(_stderr(g_lo), se_mid))
        n_hi = c_ge + n * (np.mean(g_hi, axis=0) + t * np.maximum(_stderr(g_hi), se_mid))
        n_lo, n_hi = np.clip(n_lo, c_ge, c_ge + n), np.clip(n_hi, c_ge, c_ge + n)
    else:  # one probe: its spread cannot be estimated; the band makes no claim
        n_lo, n_hi = c_ge.astype(np.float64), (c_ge + n).astype(np.float64)
    k = S.size
    # N_lo at the points of S (sup of {N_lo >= i} is attained there), made non-increasing in
    # sigma by a running minimum (never above N_lo: conservative)
    lo_env = np.minimum.accumulate(n_lo[:k])
    # N_hi: on [s_j, s_{j+1}) it takes its values at s_j and just above; the smallest sigma
    # where the non-increasing envelope (running maximum from the right) drops below i
    both = np.maximum(n_hi[:k], n_hi[k:])
    after = np.r_[np.maximum.accumulate(both[::-1])[::-1][1:], -np.inf]
    hi_env = np.maximum(n_hi[k:], after)

    cap = float(d.min()) if c else float(nodes.max())
    if index is None:
        if int(num_points) < 4:
            raise ValueError(f"Expected num_points >= 4, got {num_points}.")
        extra = [c, c + 1]
        bounds = np.atleast_1d(np.asarray(boundaries, dtype=np.float64))
        if not np.all(np.isfinite(bounds)):
            raise ValueError(f"boundaries must be finite values of sigma, got {boundaries!r}.")
        for b in bounds:
            j = int(round(float(np.interp(b, xs, ns))))  # estimated number of values >= b
            extra += [j, j + 1]
        idx = np.concatenate([_default_index(P, int(num_points)), extra])
        idx = np.unique(idx[(idx >= 1) & (idx <= P)])
    else:
        raw = np.asarray(index)
        if raw.dtype == bool or not (
            np.issubdtype(raw.dtype, np.integer)
            or (np.issubdtype(raw.dtype, np.floating) and np.all(raw == np.round(raw)))
        ):
            raise TypeError(f"index must hold integers (1 = the largest value), got {index!r}.")
        idx = np.unique(raw.astype(np.int64))
        if idx.size == 0 or idx[0] < 1 or idx[-1] > P:
            raise ValueError(f"Expected indices in 1..{P} (1 = the largest value), got {index!r}.")
    i = idx.astype(np.float64)

    # lower: the largest point of S with lo_env >= i (lo_env is non-increasing along S)
    n_ok = np.searchsorted(-lo_env, -i, side="right")
    lower = np.where(n_ok > 0, S[np.maximum(n_ok - 1, 0)], 0.0)
    # upper: the first point of S after which hi_env < i
    j_first = np.searchsorted(-hi_env, -i, side="right")
    upper = np.where(j_first < k, S[np.minimum(j_first, k - 1)], cap)
    upper = np.maximum(upper, lower)

    bottom_values = (
        np.zeros(0) if bottom is None else np.sort(np.asarray(bottom, dtype=np.float64).ravel())
    )
    if bottom_values.size > P - c:
        raise ValueError(
            f"Got {bottom_values.size} bottom values, but only {P - c} indices are not deflated."
        )
    if not np.all(np.isfinite(bottom_values) & (bottom_values >= 0)):
        raise ValueError(f"bottom values must be finite singular values >= 0, got {bottom!r}.")
    nb = bottom_values.size

    # estimate: invert the interpolated counts at i - 1/2
    estimate = np.interp(-(i - 0.5), -ns, xs)
    # the deflated values are exact at their indices
    top = idx <= c
    estimate = np.where(top, d[np.minimum(idx, c) - 1] if c else 0.0, estimate)
    lower = np.where(top, estimate, lower)
    upper = np.where(top, estimate, upper)
    if nb:
        # the exact smallest values at P, P - 1, ...; every value above them is >= their largest
        low_end = idx > P - nb
        exact = bottom_values[np.clip(P - idx, 0, nb - 1)]
        estimate = np.where(low_end, exact, estimate)
        lower = np.where(low_end, exact, np.maximum(lower, bottom_values[-1]))
        upper = np.where(low_end, exact, np.maximum(upper, lower))
    lower, upper = np.maximum(lower - rounding, 0.0), upper + rounding
    estimate = np.clip(estimate, lower, upper)

    return SpectrumProfile(
        index=idx,
        estimate=estimate,
        lower=lower,
        upper=upper,
        top_values=d,
        bottom_values=bottom_values,
        dim=P,
        level=float(level),
        rounding=rounding,
        cap=cap,
        num_probes=int(density.num_probes),
        num_steps=int(density.num_steps),
    )
