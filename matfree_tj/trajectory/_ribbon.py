r"""Hyper-ribbon measures of an InPCA embedding: widths, their geometric decay, stress.

A "hyper-ribbon" (Transtrum, Machta, Sethna 2010; Mao et al. 2024, 2025) is a manifold whose
widths along successive principal directions shrink geometrically. In InPCA the width along
component ``i`` is :math:`w_i = \sqrt{|\lambda_i|}`; a geometric decay
:math:`w_i \approx w_0 \rho^{i}` is a straight line :math:`\log w_i = a + i \log\rho`, fitted here
by least squares with the standard error of its slope from the fit residuals.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._inpca import InPCAResult

__all__ = ["RibbonWidths", "ribbon_widths"]


@dataclasses.dataclass(frozen=True)
class RibbonWidths:
    r"""Widths of a hyper-ribbon and their geometric decay.

    Attributes
    ----------
    widths
        ``(k,)`` :math:`\sqrt{|\lambda_i|}`, in the order of the eigenvalues (``|lambda|``
        descending).
    log_slope, log_slope_stderr
        Least-squares slope of :math:`\log w_i` against ``i`` over ``fit_range`` and its
        standard error (``s / sqrt(sum (i - mean i)^2)``, ``s^2`` the residual variance with
        ``n - 2`` degrees of freedom; NaN for a two-point fit).
    decay_ratio, decay_ratio_stderr
        :math:`\rho = e^{\text{slope}}`, the width ratio of successive components, and its
        standard error by the delta method (:math:`\rho\cdot\mathrm{se}(\text{slope})`).
    intercept
        Fitted :math:`\log w` at ``i = 0``.
    fit_range
        ``(start, stop)``: components ``start <= i < stop`` (0-based) entered the fit.
    fit_residual_std
        ``s``: the scatter of :math:`\log w_i` about the line (how geometric the decay is).
    stress_2, stress_3
        Stress explained by the first 2 and 3 components (``None`` with fewer components).
    total_sq
        The stress denominator :math:`\sum_{\text{all}} \lambda_i^2`.
    total_from
        ``"W"`` (``||W||_F^2`` of an :class:`InPCAResult`: exact) or ``"eigenvalues"`` (the
        sum over the eigenvalues given: exact only if they are all of them).
    """

    widths: np.ndarray
    log_slope: float
    log_slope_stderr: float
    decay_ratio: float
    decay_ratio_stderr: float
    intercept: float
    fit_range: tuple[int, int]
    fit_residual_std: float
    stress_2: float | None
    stress_3: float | None
    total_sq: float
    total_from: str

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["widths"] = [float(x) for x in self.widths]
        d["fit_range"] = [int(self.fit_range[0]), int(self.fit_range[1])]
        return d


def _stress_at(lam: np.ndarray, total_sq: float, j: int) -> float | None:
    if lam.shape[0] < j:
        return None
    if total_sq <= 0:
        return 0.0
    return float(1.0 - math.sqrt(max(0.0, 1.0 - min(1.0, float(np.sum(lam[:j] ** 2)) / total_sq))))


def ribbon_widths(
    result_or_eigenvalues: InPCAResult | Any, *, fit_range: tuple[int, int] | None = None
) -> RibbonWidths:
    r"""Widths :math:`\sqrt{|\lambda_i|}` of an InPCA embedding, their geometric decay rate and
    the stress explained by 2 and 3 components.

    Parameters
    ----------
    result_or_eigenvalues
        An :class:`InPCAResult` (the stress then uses its exact :math:`\|W\|_F^2`), or the
        eigenvalues themselves (signed; sorted here by ``|lambda|`` descending; the stress
        denominator is then their own sum of squares, exact only if all are given).
    fit_range
        ``(start, stop)`` of the components in the fit (0-based, half open). Default: from 0 up
        to the first eigenvalue not resolved from zero (within its certified accuracy
        ``residual + atol`` for an :class:`InPCAResult`; within ``100 eps max|lambda|`` for bare
        eigenvalues), so rounding noise of a rank-deficient ``W`` never enters the fit. At
        least 2 components; a standard error needs 3.

    Returns
    -------
    RibbonWidths

    Examples
    --------
    >>> import matfree_tj as mtj
    >>> rw = mtj.ribbon_widths([1.0, -0.25, 0.0625, 0.015625])  # widths 1, 1/2, 1/4, 1/8
    >>> round(rw.decay_ratio, 6), round(rw.log_slope_stderr, 6)
    (0.5, 0.0)
    """
    if isinstance(result_or_eigenvalues, InPCAResult):
        lam = np.asarray(result_or_eigenvalues.eigenvalues, np.float64)
        total_sq, total_from = float(result_or_eigenvalues.total_sq), "W"
        res = result_or_eigenvalues
        floor = np.asarray(res.residuals, np.float64) + float(res.atol)
    else:
        lam = np.asarray(result_or_eigenvalues, np.float64)
        if lam.ndim != 1 or lam.shape[0] < 1:
            raise ValueError(
                f"expected an InPCAResult or a 1-d array of eigenvalues, got shape {lam.shape}."
            )
        if not np.all(np.isfinite(lam)):
            raise ValueError("the eigenvalues contain NaN or inf.")
        lam = lam[np.argsort(-np.abs(lam), kind="stable")]
        total_sq, total_from = float(np.sum(lam**2)), "eigenvalues"
        floor = None
    widths = np.sqrt(np.abs(lam))
    k = widths.shape[0]
    if fit_range is None:
        # the leading run of resolved eigenvalues: above their certified accuracy for a
        # result, above float64 rounding of the largest (100 eps max|lambda|) for bare values
        if floor is None:
            floor = np.full(k, 100 * np.finfo(np.float64).eps * float(np.max(np.abs(lam))))
        unresolved = np.nonzero(np.abs(lam) <= floor)[0]
        start, stop = 0, int(unresolved[0]) if unresolved.size else k
        if stop < 2:
            raise ValueError(
                f"only {stop} of the {k} eigenvalues are resolved from zero (|lambda| above its "
                "accuracy), and a decay fit needs 2: W has rank < 2 (the models' predictions "
                "hardly differ) or too few components were asked for."
            )
    else:
        start, stop = (int(x) for x in fit_range)
    if not (0 <= start and stop <= k and stop - start >= 2):
        raise ValueError(
            f"fit_range must select at least 2 of the {k} components (0 <= start, stop <= {k}, "
            f"stop - start >= 2), got ({start}, {stop})."
        )
    w = widths[start:stop]
    if np.any(w <= 0):
        raise ValueError(
            "a zero width (eigenvalue exactly 0) lies in fit_range: its log is -inf. Choose a "
            "fit_range of nonzero eigenvalues."
        )
    i = np.arange(start, stop, dtype=np.float64)
    y = np.log(w)
    n = i.shape[0]
    ic = i - i.mean()
    sxx = float(ic @ ic)
    slope = float(ic @ (y - y.mean()) / sxx)
    intercept = float(y.mean() - slope * i.mean())
    resid = y - (intercept + slope * i)
    if n > 2:
        s = math.sqrt(float(resid @ resid) / (n - 2))
        se = s / math.sqrt(sxx)
    else:
        s, se = float("nan"), float("nan")
    rho = math.exp(slope)
    return RibbonWidths(
        widths=widths,
        log_slope=slope,
        log_slope_stderr=se,
        decay_ratio=rho,
        decay_ratio_stderr=rho * se,
        intercept=intercept,
        fit_range=(start, stop),
        fit_residual_std=s,
        stress_2=_stress_at(lam, total_sq, 2),
        stress_3=_stress_at(lam, total_sq, 3),
        total_sq=total_sq,
        total_from=total_from,
    )
