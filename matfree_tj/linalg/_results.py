r"""Typed results of the solvers: singular triplets (dense and matrix-free) and region counts.

Every solver returns one of these instead of a bare tuple: the values, the vectors, the
accuracy they carry (residual norms, convergence flags, standard errors) and the cost (number
of operator products). One type per concept:

* :class:`SingularTriplets` -- from :func:`~matfree_tj.top_singular`,
  :func:`~matfree_tj.bottom_singular`, :func:`~matfree_tj.linalg.randomized_svd` and
  :func:`~matfree_tj.dense_svd`, with a :class:`Status`.
* :class:`RegionCounts` -- from :func:`~matfree_tj.region_counts`: the chaotic / bulk / stable
  split of the spectrum with per-region standard errors.
* :class:`~matfree_tj.linalg.SpectralDensity` (the SLQ quadrature and its statistics) lives in
  :mod:`._quadrature`.
"""

from __future__ import annotations

import dataclasses
import enum

import equinox as eqx
import jax
import numpy as np

from ._quadrature import SpectralDensity, count_interval, probe_quantile

__all__ = ["Status", "SingularTriplets", "RegionCounts", "RegionStderr"]


class Status(enum.StrEnum):
    """How a solver run ended. A string enumeration: ``res.status == "converged"`` holds,
    printing gives ``converged`` and ``json`` writes the plain string.
    """

    CONVERGED = "converged"
    """Every flag set (and, with ``verify=True``, no value found missing)."""
    MAX_PRODUCTS = "max_products"
    """The product budget was spent before every flag was set."""
    UNVERIFIED = "unverified"
    """Every flag set, but the search for missed values did not finish within the budget."""
    BREAKDOWN = "breakdown"
    """The Krylov space was exhausted."""
    NONFINITE = "nonfinite"
    """An operator product was NaN or inf."""
    BELOW_RESOLUTION = "below_resolution"
    """Every flag set, but some values lie below the resolution floor ``atol`` (by default
    ``100 eps_p ||A||``): each is certified only as a singular value within ``atol`` of zero
    (``SingularTriplets.below_floor``), not to relative accuracy. Set by
    :func:`~matfree_tj.bottom_singular`."""


class SingularTriplets(eqx.Module):
    r"""Singular triplets :math:`A v_i \approx s_i u_i`, :math:`A^T u_i \approx s_i v_i`, with
    the accuracy they carry: THE triplets type of every solver, dense and matrix-free.

    The array fields are jax arrays in the operator's dtype from the matrix-free solvers, and
    float64 numpy arrays from :func:`~matfree_tj.dense_svd`; convert with ``np.asarray`` when
    the kind matters.

    Attributes
    ----------
    s
        ``(k,)`` singular values: descending from :func:`top_singular` and
        :func:`dense_svd`, ascending from :func:`bottom_singular`.
    U, V
        ``(m, k)`` and ``(n, k)`` left and right singular vectors (orthonormal columns);
        ``None`` from ``dense_svd(..., compute_vectors=False)``.
    residuals
        ``(k,)`` :math:`r_i = \sqrt{\|A v_i - s_i u_i\|^2 + \|A^T u_i - s_i v_i\|^2}`.
        Matrix-free: computed from fresh operator products (not from the recurrence). Dense:
        the a-priori bound of a backward-stable SVD (see :func:`~matfree_tj.dense_svd`). By
        the symmetric perturbation theorem applied to :math:`[[0, A], [A^T, 0]]`, some exact
        singular value lies within :math:`r_i / \sqrt 2` of :math:`s_i`.
    converged
        ``(k,)`` bool: ``residuals <= tol * s + atol`` (the tolerances are kept in ``tol`` and
        ``atol``). A value flagged converged is certified to that accuracy; it is a true
        singular value, though not necessarily the i-th one if the solver missed a value.
    num_products
        Operator products used (``mv`` and ``rmv`` each count one; a block product of ``b``
        columns counts ``b``; dense: the ``n`` products of materialisation, 0 for an array).
    status
        A :class:`Status` (compares equal to its string): ``"converged"`` (all ``k`` flags
        set, and with ``verify=True`` no larger value found missing from a top-k, or smaller
        one from a bottom-k), ``"max_products"`` (budget spent first), ``"unverified"`` (all
        flags set, but the check for missed values did not finish within the budget),
        ``"breakdown"`` (the Krylov space was exhausted), ``"nonfinite"``, or (from
        :func:`bottom_singular`) ``"below_resolution"``: every flag set, but some values lie
        below the floor ``atol`` and are certified only as lying within it of zero
        (:attr:`below_floor`).
    method, which
        The algorithm (``"lanczos"``, ``"randomized"``, ``"dense"``) and the end of the
        spectrum (``"largest"``, ``"smallest"``, or ``"all"`` for the dense SVD).
    anorm
        Largest Ritz value seen: an estimate of ``||A||`` from below (sets the default
        ``atol``).
    """

    s: jax.Array | np.ndarray
    U: jax.Array | np.ndarray | None
    V: jax.Array | np.ndarray | None
    residuals: jax.Array | np.ndarray
    converged: jax.Array | np.ndarray
    num_products: int = eqx.field(static=True)
    # a plain string from a caller becomes the enumeration (and a typo fails here)
    status: Status = eqx.field(static=True, converter=Status)
    method: str = eqx.field(static=True)
    which: str = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    num_restarts: int = eqx.field(static=True, default=0)
    anorm: float = eqx.field(static=True, default=float("nan"))

    @property
    def num_converged(self) -> int:
        """Number of triplets flagged converged."""
        return int(np.sum(np.asarray(self.converged)))

    @property
    def below_floor(self) -> np.ndarray:
        r"""``(k,)`` bool: values at or below the resolution floor ``atol``.

        Products rounded to ``eps_p`` carry an error of about :math:`\epsilon_p \|A\|`, so no
        residual certifies a value below the floor ``atol`` (by default
        :math:`100 \epsilon_p \|A\|`: about :math:`2 \cdot 10^{-14}\|A\|` in float64,
        :math:`10^{-5}\|A\|` in float32) to relative accuracy: such a flagged value says only
        that a singular value lies within about ``atol`` of zero.
        """
        return np.asarray(self.s, np.float64) <= self.atol

    @property
    def k(self) -> int:
        """Number of triplets."""
        return int(self.s.shape[0])

    def __len__(self) -> int:
        return self.k

    def accuracy(self) -> dict:
        """JSON-able record of how far to trust the triplets: which end, the values, the
        per-triplet residuals and convergence flags, the solver status (a plain string) and
        the products used."""
        return {
            "which": str(self.which),
            "s": [float(x) for x in np.asarray(self.s)],
            "converged": [bool(c) for c in np.asarray(self.converged)],
            "residuals": [float(r) for r in np.asarray(self.residuals)],
            "status": str(self.status),
            "num_products": int(self.num_products),
            "floor": float(self.atol),
            "below_floor": [bool(x) for x in self.below_floor],
        }

    def with_canonical_signs(self) -> SingularTriplets:
        """A copy with each pair ``(u_i, v_i)`` flipped so that the largest-magnitude entry of
        ``v_i`` is positive (ties: the first such entry; a zero entry keeps its sign).

        A triplet is defined up to a joint sign; fixing it makes backends and solvers return
        the same vectors (retraining from ``theta_0 + eps v_i`` is then comparable across
        them). Without vectors (``V is None``) the result is returned unchanged.

        Examples
        --------
        >>> import numpy as np, matfree_tj as mtj
        >>> svd = mtj.dense_svd(-np.diag([3.0, 1.0]), compute_vectors=True)
        >>> svd.with_canonical_signs().V
        array([[1., 0.],
               [0., 1.]])
        """
        if self.V is None:
            return self
        V = np.asarray(self.V)
        sign = np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])])
        sign = np.where(sign == 0, 1, sign).astype(V.dtype)
        return dataclasses.replace(self, U=self.U * sign, V=self.V * sign)


@dataclasses.dataclass(frozen=True)
class RegionStderr:
    """Standard errors per region; attribute (``.bulk``) and item (``["bulk"]``) access."""

    chaotic: float
    bulk: float
    stable: float

    def __getitem__(self, name: str) -> float:
        if name not in ("chaotic", "bulk", "stable"):
            raise KeyError(f"region must be 'chaotic', 'bulk' or 'stable', got {name!r}.")
        return getattr(self, name)

    def to_dict(self) -> dict:
        return {"chaotic": self.chaotic, "bulk": self.bulk, "stable": self.stable}


@dataclasses.dataclass(frozen=True)
class RegionCounts:
    r"""Numbers of singular values in the three regions of Belrose & Scherlis (2024).

    ``chaotic``: :math:`\sigma > hi`; ``bulk``: :math:`lo \le \sigma \le hi`; ``stable``:
    :math:`\sigma < lo`. They sum to the dimension ``P`` (exactly for ``method="dense"``; for
    ``"slq"`` because each probe's quadrature weights sum to one). ``stderr`` is the standard
    error over probes (all zero for ``"dense"``). ``step_change`` (``"slq"``): how much each
    count moved between ``num_steps // 2`` and ``num_steps`` Lanczos steps on the same probes
    (the quadratures are nested, so this costs nothing): a check on the quadrature bias, which
    the standard error does not see. If it is not small against the stderr, use more steps.
    ``bounds`` (``"slq"``): ``{region: (lower, upper)}``, the means over probes of guaranteed
    per-probe bounds on the quadrature (Chebyshev-Markov-Stieltjes, see
    :meth:`SpectralDensity.per_probe_bounds`): the bias of too few Lanczos steps cannot move
    the estimate outside them. ``bounds_stderr``: ``{region: (se of the lower, se of the
    upper)}`` per-probe bounds. :meth:`interval` widens the bounds by standard errors.
    ``alignment`` (``"slq"``): ``{region: (mean cos(u_i, v_i), stderr)}`` over the singular
    values of each region, from the same quadrature (:meth:`SpectralDensity.alignment`).
    ``density`` (``"slq"``): that quadrature itself (for
    :func:`~matfree_tj.linalg.spectrum_profile`; not in :meth:`to_dict`).
    """

    chaotic: float
    bulk: float
    stable: float
    stderr: RegionStderr
    num_products: int
    method: str
    lo: float
    hi: float
    dim: int
    num_probes: int = 0
    num_steps: int = 0
    step_change: dict | None = None
    bounds: dict | None = None
    alignment: dict | None = None
    bounds_stderr: dict | None = None
    # the quadrature the counts came from (``"slq"``; for spectrum_profile), not serialised
    density: SpectralDensity | None = dataclasses.field(default=None, compare=False, repr=False)

    def __getitem__(self, name: str) -> float:
        if name not in ("chaotic", "bulk", "stable"):
            raise KeyError(f"region must be 'chaotic', 'bulk' or 'stable', got {name!r}.")
        return getattr(self, name)

    def interval(self, name: str, z: float | None = None) -> tuple[float, float]:
        """``(low, high)`` for region ``name`` accounting for both errors: the quadrature
        ``bounds`` widened by ``z`` standard errors (dense: the exact count twice). Each end
        uses the larger of the estimate's standard error and that of its per-probe bound: the
        probes' exact counts lie between their bounds, so the mean lower (upper) bound is
        below (above) the true count up to its own sampling error, which can exceed the
        estimate's when the quadrature does not resolve the region (all estimates alike,
        bounds spread). The default ``z`` is the two-sided 95% Student-t quantile for
        ``num_probes - 1`` degrees of freedom (4.30 for 3 probes, 2.26 for 10; the standard
        errors are themselves estimated from the probes), so the range covers the true count
        about 95% of the time or more."""
        return count_interval(
            self[name],
            None if self.bounds is None else self.bounds[name],
            self.stderr[name],
            self.dim,
            probe_quantile(self.num_probes) if z is None else z,
            None if self.bounds_stderr is None else self.bounds_stderr[name],
        )

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return {
            "chaotic": float(self.chaotic),
            "bulk": float(self.bulk),
            "stable": float(self.stable),
            "stderr": {k: float(v) for k, v in self.stderr.to_dict().items()},
            "num_products": int(self.num_products),
            "method": str(self.method),
            "lo": float(self.lo),
            "hi": float(self.hi),
            "dim": int(self.dim),
            "num_probes": int(self.num_probes),
            "num_steps": int(self.num_steps),
            "step_change": None
            if self.step_change is None
            else {k: float(v) for k, v in self.step_change.items()},
            "bounds": None
            if self.bounds is None
            else {k: [float(v[0]), float(v[1])] for k, v in self.bounds.items()},
            "alignment": None
            if self.alignment is None
            else {k: [float(v[0]), float(v[1])] for k, v in self.alignment.items()},
            "bounds_stderr": None
            if self.bounds_stderr is None
            else {k: [float(v[0]), float(v[1])] for k, v in self.bounds_stderr.items()},
        }
