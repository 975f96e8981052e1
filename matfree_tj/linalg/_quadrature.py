r"""Gauss quadrature of a spectral measure: the SLQ result and the statistics drawn from it.

:class:`SpectralDensity` holds, per probe, the nodes and weights of the Gauss rule from
Lanczos on :math:`A^T A`; its methods turn them into counts with standard errors, guaranteed
per-probe bounds (Chebyshev-Markov-Stieltjes), the alignment quadrature and a smoothed
density. The free functions are the statistics shared with
:class:`~matfree_tj.linalg.RegionCounts` and the analysis layer: the three regions' spans, the
Student-t multiple for a probe mean, a count's range, a jackknifed ratio and the standard error
over probes. No operator products here: everything is numpy on the ``(num_probes, m)`` rule.

References
----------
Golub & Meurant, "Matrices, Moments and Quadrature with Applications", Princeton (2010), ch. 6.
Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature", SIAM J.
Matrix Anal. Appl. 38 (2017).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np

__all__ = [
    "SpectralDensity",
    "ResolutionWarning",
    "region_spans",
    "probe_quantile",
    "count_interval",
    "ratio_with_jackknife",
    "probe_stderr",
]


class ResolutionWarning(UserWarning):
    """A spectral estimate was asked for finer detail than its number of Lanczos steps resolves."""


@dataclasses.dataclass(frozen=True)
class SpectralDensity:
    r"""Stochastic Lanczos quadrature estimate of the singular-value distribution.

    For probe :math:`p` (unit vector :math:`q_p`) Lanczos on :math:`A^T A` gives Gauss nodes
    :math:`\theta_{pi}` and weights :math:`w_{pi}` with :math:`q_p^T f(A^T A) q_p \approx
    \sum_i w_{pi} f(\theta_{pi})`. Here the nodes are stored as singular values
    :math:`\sigma_{pi} = \sqrt{\theta_{pi}}` (computed from the Golub-Kahan bidiagonal, which
    resolves small :math:`\sigma` to absolute accuracy :math:`\epsilon \|A\|`).

    Attributes
    ----------
    nodes
        ``(num_probes, num_steps)`` singular-value nodes per probe (ascending).
    weights
        ``(num_probes, num_steps)`` Gauss weights per probe (each row sums to one).
    dim
        ``P``, the number of singular values (columns of ``A``).
    num_products, num_steps, num_probes
        Cost and configuration.
    sigma_max
        Largest node seen (an estimate of :math:`\|A\|`), used for the resolution check.
    deflated
        Singular values of converged triplets removed before the quadrature (counted exactly;
        the quadrature then covers the other ``P - c`` values).
    half
        The same quadrature truncated to ``num_steps // 2`` steps (the leading block of each
        probe's projected matrix: Lanczos is nested), for the convergence check of counts.
    cross_weights
        ``(num_probes, num_steps)`` weights of the *alignment* quadrature (see
        :meth:`alignment`): :math:`c_{pi} = (q_p^T \tilde u_{pi})(q_p^T \tilde v_{pi})` for
        the left and right Ritz vectors of node :math:`i`; signed, and they do not sum to one.
    deflated_cos
        ``cos(u_i, v_i)`` of the deflated triplets (same order as ``deflated``).
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int
    num_products: int
    num_steps: int
    num_probes: int
    sigma_max: float
    probes: str = "rademacher"
    deflated: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    half: SpectralDensity | None = None
    cross_weights: np.ndarray | None = None
    deflated_cos: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    @property
    def num_deflated(self) -> int:
        """Number of converged triplets removed exactly before the quadrature."""
        return int(np.size(self.deflated))

    @property
    def resolution(self) -> float:
        r"""Typical node spacing in :math:`\sigma`, :math:`\pi \sigma_{max} / (2 m)`.

        Gauss nodes of an m-step Lanczos on a spread spectrum of :math:`A^T A` in
        :math:`[0, \sigma_{max}^2]` follow the arcsine law; their spacing in :math:`\sigma`
        is about this. Intervals narrower than it are not resolved (a warning is issued).
        """
        return math.pi * self.sigma_max / (2.0 * self.num_steps)

    def per_probe_counts(
        self, lo: float = -np.inf, hi: float = np.inf, *, closed: str = "both"
    ) -> np.ndarray:
        """``(num_probes,)`` estimates ``P * sum_i w_pi 1[lo <= sigma_pi <= hi]``."""
        mask = in_interval(self.nodes, lo, hi, closed)
        n, exact = self._split(lo, hi, closed)
        return n * np.sum(self.weights * mask, axis=1) + exact

    def _split(self, lo: float, hi: float, closed: str) -> tuple[int, int]:
        """``(P - c, deflated values in the interval)``: the probes live in the complement of
        the ``c`` deflated directions, which are counted exactly."""
        d = np.asarray(self.deflated)
        return self.dim - d.size, int(np.sum(in_interval(d, lo, hi, closed)))

    def per_probe_cdf_bounds(self, x: float) -> tuple[np.ndarray, np.ndarray]:
        r"""Guaranteed bounds on each probe's spectral distribution function at ``x``.

        For probe :math:`q_p` let :math:`F_p(x) = \sum_j (v_j^T q_p)^2 1[\sigma_j \le x]`,
        the quantity whose Gauss-quadrature estimate :meth:`per_probe_counts` averages. By the
        Chebyshev-Markov-Stieltjes inequalities (the m-point Gauss rule puts at each of its
        nodes the largest mass that any measure with the same first 2m moments can have), with
        ascending nodes :math:`x_1 < \dots < x_m`, weights :math:`w_i` and
        :math:`W_k = \sum_{i \le k} w_i`: :math:`F_p(x) \ge W_{j-1}` for the last node
        :math:`x_j \le x` and :math:`F_p(x) \le W_i` for the first node :math:`x_i \ge x`;
        both also hold for :math:`1[\sigma_j < x]`. The gap is the weight of the one or two
        nodes next to ``x``, so it shrinks as more steps resolve ``x``. Exact in exact
        arithmetic (the Lanczos here reorthogonalises fully). Returns ``(lower, upper)``, each
        ``(num_probes,)``, as fractions of the probe's unit mass.
        """
        s = self.nodes
        num = s.shape[0]
        if x == np.inf:
            return np.ones(num), np.ones(num)
        if x == -np.inf:
            return np.zeros(num), np.zeros(num)
        W = np.concatenate([np.zeros((num, 1)), np.cumsum(self.weights, axis=1)], axis=1)
        W = np.minimum(W / W[:, -1:], 1.0)
        rows = np.arange(num)
        n_le = np.sum(s <= x, axis=1)  # the last node <= x is number n_le (0: none)
        n_lt = np.sum(s < x, axis=1)  # the first node >= x is number n_lt + 1
        return (W[rows, np.maximum(n_le - 1, 0)], W[rows, np.minimum(n_lt + 1, s.shape[1])])

    def per_probe_bounds(
        self, lo: float = -np.inf, hi: float = np.inf, *, closed: str = "both"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Guaranteed ``(lower, upper)`` on each probe's count in the interval, scaled like
        :meth:`per_probe_counts`: the quadrature's own error (from
        :meth:`per_probe_cdf_bounds`), which the standard error does not see. The mean over
        probes of the *exact* per-probe counts (the unbiased Hutchinson estimate, whose spread
        the standard error measures) lies between the means of these bounds, and so does
        the Gauss estimate."""
        n, exact = self._split(lo, hi, closed)
        hi_lower, hi_upper = self.per_probe_cdf_bounds(hi)
        lo_lower, lo_upper = self.per_probe_cdf_bounds(lo)
        return (
            n * np.clip(hi_lower - lo_upper, 0.0, 1.0) + exact,
            n * np.clip(hi_upper - lo_lower, 0.0, 1.0) + exact,
        )

    def _check_resolution(self, lo: float, hi: float) -> None:
        if self.num_steps >= self.dim - self.num_deflated:
            return  # a complete Krylov space: the quadrature is exact for any interval
        if np.isfinite(lo) and np.isfinite(hi) and hi - lo < self.resolution:
            # steps that resolve the width, but never more than a complete Krylov space
            complete = self.dim - self.num_deflated
            width = hi - lo
            needed = (
                complete
                if width <= 0
                else min(complete, int(math.ceil(math.pi * self.sigma_max / (2.0 * width))))
            )
            warnings.warn(
                f"The interval [{lo:.4g}, {hi:.4g}] (width {width:.3g}) is narrower than the "
                f"quadrature resolution ~{self.resolution:.3g} of num_steps={self.num_steps} "
                f"with sigma_max~{self.sigma_max:.3g}: the count may be biased. Use "
                f"num_steps >= {needed}"
                + (" (a complete Krylov space: exact)." if needed == complete else "."),
                ResolutionWarning,
                stacklevel=3,
            )

    def count(self, lo: float, hi: float, *, closed: str = "both") -> tuple[float, float]:
        r"""Estimated number of singular values in ``[lo, hi]`` and its standard error.

        The estimate is the mean over probes of :math:`P \sum_i w_{pi} 1[lo \le \sigma_{pi}
        \le hi]` (Hutchinson on the spectral projector, Gauss quadrature per probe); the
        standard error is the sample standard deviation over probes divided by
        :math:`\sqrt{\text{num\_probes}}` (``nan`` with one probe). Use ``lo=-inf`` or
        ``hi=inf`` for half-lines.
        """
        if not lo <= hi:
            raise ValueError(f"Expected lo <= hi, got lo={lo}, hi={hi}.")
        self._check_resolution(lo, hi)
        c = self.per_probe_counts(lo, hi, closed=closed)
        return float(np.mean(c)), probe_stderr(c)

    def per_probe_alignment_sums(
        self, lo: float = -np.inf, hi: float = np.inf, *, closed: str = "both"
    ) -> np.ndarray:
        r"""``(num_probes,)`` estimates of :math:`\sum_{lo \le \sigma_j \le hi} u_j^T v_j`.

        Hutchinson on the non-symmetric matrix :math:`M = U g(\Sigma) V^T` (``g`` the
        indicator of the interval): :math:`E[q^T M q] = \operatorname{tr} M / P =
        \sum_j g(\sigma_j) u_j^T v_j / P` for probes with :math:`E[q q^T] = I / P`. Per probe
        the Golub-Kahan relation :math:`A V_m = U_m R_m` gives
        :math:`q^T M q \approx q^T U_m X g(S) Y^T e_1` for :math:`R_m = X S Y^T` (exact for
        polynomial ``g`` of degree below ``m``, and for any ``g`` once the Krylov space is
        complete): the same nodes as the counts, weighted by
        :attr:`cross_weights`. Deflated triplets contribute their exact ``cos(u_i, v_i)``.
        """
        if self.cross_weights is None:
            raise ValueError("This SpectralDensity carries no alignment weights.")
        mask = in_interval(self.nodes, lo, hi, closed)
        n, _ = self._split(lo, hi, closed)
        d = np.asarray(self.deflated)
        exact = float(np.sum(np.asarray(self.deflated_cos)[in_interval(d, lo, hi, closed)]))
        return n * np.sum(self.cross_weights * mask, axis=1) + exact

    def alignment(
        self, lo: float = -np.inf, hi: float = np.inf, *, closed: str = "both"
    ) -> tuple[float, float]:
        r"""Mean ``cos(u_j, v_j)`` over the singular values in ``[lo, hi]``, and its standard
        error, from the same Lanczos runs as the counts (no extra products).

        The ratio of the probe means of :meth:`per_probe_alignment_sums` and
        :meth:`per_probe_counts`; the standard error is the jackknife over probes (``nan``
        with one probe). This is the paper's "left and right singular vectors of the bulk
        nearly coincide" (Belrose & Scherlis 2024, Fig. 2) measured without singular vectors:
        ``1`` when :math:`u_j = v_j` for every value in the interval, about ``0`` for
        unrelated ones (the estimate is clipped to ``[-1, 1]``). The quadrature resolves
        ``[lo, hi]`` as well as it does for the counts (see :attr:`resolution` and
        ``step_change``); ``nan`` if the interval holds no mass.
        """
        if not lo <= hi:
            raise ValueError(f"Expected lo <= hi, got lo={lo}, hi={hi}.")
        sums = self.per_probe_alignment_sums(lo, hi, closed=closed)
        counts = self.per_probe_counts(lo, hi, closed=closed)
        mean, se = ratio_with_jackknife(sums, counts)
        # a mean cosine lies in [-1, 1]; the ratio estimate can stray by its error
        return (float(np.clip(mean, -1.0, 1.0)) if np.isfinite(mean) else mean), se

    def density(self, grid: Any, *, bandwidth: float | None = None) -> np.ndarray:
        r"""Smoothed density of singular values on ``grid``, integrating to ``P``.

        :math:`\rho(x) = P \cdot \text{mean}_p \sum_i w_{pi} \, \phi_h(x - \sigma_{pi})` with a
        Gaussian kernel of width ``bandwidth`` (default: :attr:`resolution`).
        """
        x = np.asarray(grid, dtype=np.float64)
        h = self.resolution if bandwidth is None else float(bandwidth)
        if not h > 0:
            raise ValueError(f"Expected bandwidth > 0, got {h}.")
        z = (x[..., None, None] - self.nodes) / h
        k = np.exp(-0.5 * z**2) / (h * math.sqrt(2 * math.pi))
        d = np.asarray(self.deflated)
        smooth = (self.dim - d.size) * np.mean(np.sum(self.weights * k, axis=-1), axis=-1)
        if d.size:
            zd = (x[..., None] - d) / h
            smooth = smooth + np.sum(np.exp(-0.5 * zd**2), axis=-1) / (h * math.sqrt(2 * math.pi))
        return smooth


def region_spans(lo: float, hi: float) -> tuple:
    """``(name, a, b, closed)`` of the three regions: chaotic ``sigma > hi``, bulk
    ``lo <= sigma <= hi``, stable ``sigma < lo`` (the arguments of ``per_probe_counts``)."""
    return (
        ("chaotic", hi, np.inf, "neither"),
        ("bulk", lo, hi, "both"),
        ("stable", -np.inf, lo, "neither"),
    )


def probe_quantile(num_probes: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for a mean over ``num_probes`` probes whose standard error
    is estimated from the same probes (``num_probes - 1`` degrees of freedom); 2.0 when the
    number is unknown (dense counts carry no standard error)."""
    if num_probes is None or int(num_probes) < 2:
        return 2.0
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2.0, int(num_probes) - 1))


def count_interval(
    count: float, bounds, stderr: float, dim: int, z: float = 2.0, bounds_stderr=None
) -> tuple[float, float]:
    """A count's range: its quadrature ``bounds`` (``(lower, upper)``; ``None``: the count
    itself) widened by ``z`` standard errors, clipped to ``[0, dim]``: at each end the larger
    of ``stderr`` (the estimate's) and that end's own in ``bounds_stderr`` (``(se_lower,
    se_upper)`` of the per-probe bounds, if known). A non-finite standard error (one probe: its
    sampling error cannot be estimated) gives the whole ``[0, dim]``: the range then makes no
    claim, rather than a false one from the bounds alone."""
    if stderr is None or not np.isfinite(float(stderr)):
        return 0.0, float(dim)
    lower, upper = (count, count) if bounds is None else bounds
    se_lo = se_hi = float(stderr)
    if bounds_stderr is not None:
        se_lo, se_hi = max(se_lo, float(bounds_stderr[0])), max(se_hi, float(bounds_stderr[1]))
    return float(max(lower - z * se_lo, 0.0)), float(min(upper + z * se_hi, dim))


def in_interval(x: np.ndarray, lo: float, hi: float, closed: str) -> np.ndarray:
    """Mask of ``x`` in the interval from ``lo`` to ``hi``; ``closed`` says which ends count."""
    if closed == "both":
        return (x >= lo) & (x <= hi)
    if closed == "left":
        return (x >= lo) & (x < hi)
    if closed == "right":
        return (x > lo) & (x <= hi)
    if closed == "neither":
        return (x > lo) & (x < hi)
    raise ValueError(f"closed must be 'both', 'left', 'right' or 'neither', got {closed!r}.")


def ratio_with_jackknife(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """``(sum(num) / sum(den), jackknife standard error over the entries)``; ``nan`` where
    the denominator vanishes (or, for the error, with fewer than two entries)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    total = float(np.sum(den))
    if not abs(total) > 0:
        return float("nan"), float("nan")
    ratio = float(np.sum(num)) / total
    n = num.size
    if n < 2:
        return ratio, float("nan")
    loo_den = total - den
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = (float(np.sum(num)) - num) / loo_den
    if not np.all(np.isfinite(loo)):
        return ratio, float("nan")
    return ratio, float(math.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


def probe_stderr(c: np.ndarray) -> float:
    """Standard error of the mean over probes, ``std(c, ddof=1) / sqrt(n)``; ``nan`` for one."""
    c = np.asarray(c, dtype=np.float64)
    if c.size < 2:
        return float("nan")
    return float(np.std(c, ddof=1) / math.sqrt(c.size))
