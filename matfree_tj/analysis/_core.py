r"""Analyses of a training Jacobian: the experiments of Belrose & Scherlis (2024), matrix-free.

Every function here is something a researcher calls on their own model and training run. Each
docstring says what it needs (a :class:`~matfree_tj.TrainingJacobian` ``J``, singular triplets,
an ``apply`` function) and what it costs in operator products (``J v`` ~ 2-3 training runs,
``J^T u`` ~ 3-5) or in training runs. None of them knows how the triplets were computed: they
come from :func:`singular_triplets`, which calls the library's solvers
(:func:`matfree_tj.top_singular`, :func:`matfree_tj.bottom_singular`) or, with
``backend="dense"``, the dense oracle :func:`matfree_tj.dense_svd`.

Experiments and what they need
------------------------------
(``P`` parameters; a "product" is one ``J v`` or one ``J^T u``; a training run is ~1/3 of a
``J v``.)

=====================================  ==============================  ===========================
experiment                             functions                       needs / cost
=====================================  ==============================  ===========================
1. spectrum, region counts             :func:`spectrum_summary`        ``J``; SLQ: 2 x probes x
                                                                       steps products + top-k
2. alignment cos(u_i, v_i)             :func:`alignment`,              triplets (no products);
                                       :func:`bulk_alignment_probe`    probe: 2 x probes products
3. perturbation / linearisation        :func:`perturbation_response`   ``J.train_fn``; one training
                                                                       run per eps
4. in/out-of-distribution effect       :func:`output_sensitivity`,     ``apply``; forward passes
                                       :func:`ood_inputs`              only
5. restricted training                 :func:`restricted_training`     bases; one training run per
                                                                       (basis, k)
6. data vs labels                      :func:`compare_spectra`         one ``J`` per run
7. bulk vs null(F) on test data        :func:`function_jacobian`,      ``apply``; N x C reverse
                                       :func:`function_rowspace`,      passes, thin SVD
                                       :func:`bulk_nullspace_overlap`
8. bulk overlap across seeds           :func:`seed_overlap`            moved directions per seed
=====================================  ==============================  ===========================

Triplets come from :func:`singular_triplets` (top / bottom of ``J``) and
:func:`moved_directions` (top of ``J - I``); with ``backend="matrix-free"`` they cost Krylov
products (reported in ``num_products``), with ``backend="dense"`` one materialisation (``P``
products, ``P^2`` memory) and an ``O(P^3)`` SVD. For ``P`` in the millions use the matrix-free
backend with ``k`` in the tens to hundreds; the bulk is then handled through its complement.

Conventions
-----------
Regions
    ``chaotic``: :math:`\sigma > hi`; ``bulk``: :math:`lo \le \sigma \le hi`; ``stable``:
    :math:`\sigma < lo` (``lo=0.9``, ``hi=1.1`` by default, as in the paper's figures).
Moved directions and the bulk subspace
    The right singular vectors of :math:`J - I` with the largest singular values are exactly the
    initial-parameter directions whose perturbation training changes the most. We call the span
    of the top ``k`` of them the *moved* subspace, and define the bulk subspace as its orthogonal
    complement. This definition needs only ``k`` matrix-free triplets of ``J - I``
    (:func:`matfree_tj.add_identity`), so it scales to any ``P``; the bulk itself (dimension
    ``P - k``) is never formed, it is used implicitly through projections
    (:func:`matfree_tj.project_off`) and through the identity
    :math:`\|P_{A^\perp} P_{B^\perp}\|_F^2 = P - a - b + \|A^\top B\|_F^2` for orthonormal
    ``A`` (P, a) and ``B`` (P, b) (see :func:`subspace_overlap`). The dense backend computes the
    same subspace from a dense SVD of ``J - I``, so the two backends are directly comparable.
Randomness
    Every stochastic function takes an explicit ``key``; there is no default key.

References
----------
Belrose & Scherlis, "Understanding Gradient Descent through the Training Jacobian",
arXiv:2412.07003 (2024). Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos
quadrature", SIMAX (2017). Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM
Review (2011).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ..core import LinearOperator, add_identity, make_train_fn
from ..linalg import (
    DenseSVD,
    bottom_singular,
    count_interval,
    dense_svd,
    probe_quantile,
    project_off,
    region_counts,
    top_singular,
)
from ._overlap import (
    Overlap,
    bulk_nullspace_overlap,
    function_jacobian,
    function_rowspace,
    model_inputs,
    seed_overlap,
    subspace_overlap,
)

__all__ = [
    "BACKENDS",
    "REGIONS",
    "SpectrumSummary",
    "Triplets",
    "Overlap",
    "spectrum_summary",
    "counts_from_values",
    "auto_num_steps",
    "singular_triplets",
    "moved_directions",
    "alignment",
    "alignment_by_region",
    "alignment_summary",
    "bulk_alignment_probe",
    "random_bulk_basis",
    "perturbation_response",
    "ood_inputs",
    "output_sensitivity",
    "restricted_training",
    "compare_spectra",
    "function_jacobian",
    "function_rowspace",
    "subspace_overlap",
    "bulk_nullspace_overlap",
    "seed_overlap",
]

BACKENDS = ("matrix-free", "dense")
REGIONS = ("chaotic", "bulk", "stable")
_HI = jax.lax.Precision.HIGHEST


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    return backend


def _check_bounds(lo: float, hi: float) -> None:
    if not 0.0 <= float(lo) <= 1.0 <= float(hi):
        raise ValueError(
            f"Expected 0 <= lo <= 1 <= hi for the region bounds, got lo={lo}, hi={hi}."
        )


def _is_int(k: Any) -> bool:
    """A Python or numpy integer, not a bool (``True`` is not a size)."""
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _check_k(k: Any, n: int, what: str = "k", limit: str = "") -> int:
    """``k`` as an int in ``[1, n]``, or a clear error (a float like 2.7 is not truncated)."""
    if not _is_int(k):
        raise TypeError(f"{what} must be an integer, got {k!r} ({type(k).__name__}).")
    if not 1 <= int(k) <= n:
        raise ValueError(f"Expected 1 <= {what} <= {limit}{n}, got {k}.")
    return int(k)


def _np(x: Any) -> np.ndarray:
    return np.asarray(jax.device_get(x), dtype=np.float64)


def _dense_matrix(op: Any) -> np.ndarray:
    return _np(op.to_dense() if isinstance(op, LinearOperator) else op)


def _get(obj: Any, name: str) -> float:
    """``obj.name`` or ``obj[name]`` (region-count results expose both)."""
    try:
        return float(getattr(obj, name))
    except AttributeError:
        return float(obj[name])


# ------------------------------------------------------------------------------------------
# 1. Spectrum summary
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpectrumSummary:
    """Region counts (with standard errors) and the top singular values of one operator.

    ``singular_values`` holds all ``P`` values with the dense backend and ``None`` otherwise.
    ``settings`` (matrix-free) records how the counts were made and how far to trust them:
    ``num_probes``, ``num_steps``, ``num_deflated``, ``sigma_rest`` (the largest value left to
    the quadrature), ``top_products``, ``top_seconds``, ``step_change`` (each count's change
    from half to all of the Lanczos steps), ``quadrature_bounds`` (``{region: (lower,
    upper)}``: the guaranteed range of each count's probe average whatever the quadrature's
    bias; see :attr:`matfree_tj.RegionCounts.bounds`), ``quadrature_bounds_stderr`` (the
    standard errors of those bounds over probes, used by :meth:`interval`) and ``alignment``
    (``{region: (mean cos(u_i, v_i), stderr)}`` from the same quadrature, no extra products; see
    :meth:`matfree_tj.SpectralDensity.alignment`). Dense, with singular vectors: ``settings``
    holds the exact ``alignment`` (stderr 0).
    """

    backend: str
    num_params: int
    lo: float
    hi: float
    counts: dict
    stderr: dict
    top_singular_values: np.ndarray
    singular_values: np.ndarray | None
    num_products: int
    seconds: float
    settings: dict | None = None

    def interval(self, name: str, z: float | None = None) -> tuple[float, float]:
        """``(low, high)`` for a region's count: the quadrature bounds widened by ``z``
        standard errors (default: the 95% Student-t quantile for the number of probes; see
        :meth:`matfree_tj.RegionCounts.interval`); dense: the exact count."""
        if name not in REGIONS:
            raise KeyError(f"region must be one of {REGIONS}, got {name!r}.")
        settings = self.settings or {}
        qb = settings.get("quadrature_bounds")
        qse = settings.get("quadrature_bounds_stderr")
        if z is None:
            z = probe_quantile(settings.get("num_probes"))
        return count_interval(
            self.counts[name],
            None if qb is None else qb[name],
            self.stderr[name],
            self.num_params,
            z,
            None if qse is None else qse[name],
        )

    def to_dict(self, include_all_values: bool = False) -> dict:
        d = dict(
            backend=self.backend,
            num_params=self.num_params,
            lo=self.lo,
            hi=self.hi,
            counts={k: float(v) for k, v in self.counts.items()},
            stderr={k: float(v) for k, v in self.stderr.items()},
            top_singular_values=[float(x) for x in self.top_singular_values],
            num_products=int(self.num_products),
            seconds=float(self.seconds),
        )
        if self.settings is not None:
            d["settings"] = dict(self.settings)
        if include_all_values and self.singular_values is not None:
            d["singular_values"] = [float(x) for x in self.singular_values]
        return d


def counts_from_values(s: Any, lo: float = 0.9, hi: float = 1.1) -> dict:
    """Exact region counts ``{chaotic: #(s > hi), bulk: #(lo <= s <= hi), stable: #(s < lo)}``.

    Examples
    --------
    >>> from matfree_tj.analysis import counts_from_values
    >>> counts_from_values([20.0, 1.0, 1.01, 1e-9])
    {'chaotic': 1, 'bulk': 2, 'stable': 1}
    """
    return {r: int(np.sum(m)) for r, m in _region_masks(s, lo, hi).items()}


def _region_masks(s: Any, lo: float, hi: float) -> dict:
    """``{region: boolean mask over s}``: chaotic ``s > hi``, bulk ``lo <= s <= hi``, stable
    ``s < lo`` (the exact counterpart of :func:`matfree_tj._results.region_spans`)."""
    s = np.asarray(s)
    return {"chaotic": s > hi, "bulk": (s >= lo) & (s <= hi), "stable": s < lo}


def alignment_by_region(s: Any, cos: Any, lo: float = 0.9, hi: float = 1.1) -> dict:
    """Exact mean ``cos(u_i, v_i)`` per region from all singular values ``s`` and their
    cosines ``cos``: ``{region: (mean, 0.0)}`` (``nan`` for an empty region), the dense
    counterpart of :attr:`matfree_tj.RegionCounts.alignment`.

    Examples
    --------
    >>> from matfree_tj.analysis import alignment_by_region
    >>> alignment_by_region([3.0, 1.0, 1.0, 0.1], [0.5, 1.0, 0.9, 0.0])["bulk"]
    (0.95, 0.0)
    """
    cos = np.asarray(cos, dtype=np.float64)
    return {
        r: (float(np.mean(cos[m])) if m.any() else float("nan"), 0.0)
        for r, m in _region_masks(s, lo, hi).items()
    }


def spectrum_summary(
    J: LinearOperator,
    *,
    key: jax.Array,
    backend: str = "matrix-free",
    lo: float = 0.9,
    hi: float = 1.1,
    num_top: int = 10,
    num_probes: int | None = None,
    num_steps: int | None = None,
    num_deflate: int | None = None,
    svd: DenseSVD | None = None,
    top_opts: Mapping | None = None,
    progress: Callable[[str], None] | None = None,
    max_products: int | None = None,
) -> SpectrumSummary:
    r"""Singular values of ``J`` and the chaotic / bulk / stable counts with error bars.

    Parameters
    ----------
    J
        Any square operator (usually :func:`matfree_tj.training_jacobian`).
    key
        Randomness for the probes and the starting vectors.
    backend
        ``"matrix-free"`` (default): counts by stochastic Lanczos quadrature
        (:func:`matfree_tj.region_counts`; the error bars are its standard errors; by default
        ``num_steps`` = :func:`auto_num_steps` of the measured :math:`\sigma_1`, so the quadrature
        resolves ``[lo, hi]``) and the top ``num_top`` values by
        :func:`matfree_tj.top_singular`. ``"dense"``: materialise ``J`` (``P`` forward products,
        ``O(P^2)`` memory), full SVD (``O(P^3)``); counts are exact (stderr 0).
    lo, hi
        Region bounds, ``0 <= lo <= 1 <= hi``.
    svd
        A precomputed :func:`matfree_tj.dense_svd` of ``J`` (dense backend: skips the cost).
    num_probes
        SLQ probes (default 10).
    num_deflate
        Matrix-free: the top ``num_deflate`` triplets are computed first (converged ones are
        counted exactly and projected out of the quadrature), so the Lanczos nodes only need
        to resolve ``[lo, hi]`` against :math:`\sigma_{k+1}` rather than :math:`\sigma_1`.
        Default ``min(150, max(num_top, P // 32))``; ``0``: plain SLQ. On the reference model
        (P = 4810) this took the counts from 3.5% of P off the dense ones (no deflation,
        151 steps) to 0.2% (deflate 150, 10 probes x 300 steps), with fewer products.
    top_opts
        Extra keyword arguments for :func:`matfree_tj.top_singular` (``method``, ``tol``...;
        default ``tol=1e-6``).
    progress
        Optional callable receiving progress lines (each stage, its products and seconds,
        and an estimate of the SLQ stage's time from the rate measured in the first).
    max_products
        Matrix-free: a budget of operator products for the whole summary (``None``: no
        budget). The top-k stage gets at most half of it; the SLQ stage fits in the rest by
        taking fewer probes (down to 2), then fewer steps than the resolution rule asks for.
        A budget-limited quadrature is flagged (``settings["budget_limited"]``, a warning)
        and its bias shows in ``settings["quadrature_bounds"]``.

    Cost
    ----
    Matrix-free: ``num_probes x num_steps`` products of ``J^T J`` (each one ``J v`` and one
    ``J^T u``) plus the top-``max(num_top, num_deflate)`` solver's products (reported in
    ``num_products``).

    Examples
    --------
    >>> import jax, matfree_tj as mtj
    >>> from matfree_tj import analysis
    >>> m = mtj.examples.digits_mlp(hidden=8, num_train=128, num_epochs=2)
    >>> J = mtj.training_jacobian(m.train_fn, m.params0)
    >>> summ = analysis.spectrum_summary(J, key=jax.random.key(0), backend="dense")
    >>> sum(summ.counts.values()) == J.shape[0]
    True
    """
    _check_backend(backend)
    _check_bounds(lo, hi)
    P = J.shape[1]
    top_max = P if backend == "dense" else P - 1  # Krylov solvers need k < P
    if not 1 <= int(num_top) <= top_max:
        raise ValueError(
            f"Expected 1 <= num_top <= {top_max} (backend {backend!r}), got {num_top}."
        )
    t0 = time.perf_counter()
    if backend == "dense":
        given = svd is not None
        if not given:
            svd = dense_svd(J)
        s = _np(svd.s)
        counts = counts_from_values(s, lo, hi)
        stderr = dict.fromkeys(REGIONS, 0.0)
        settings = None
        if svd.U is not None and svd.V is not None:
            cos = np.sum(_np(svd.U) * _np(svd.V), axis=0)
            settings = {"alignment": alignment_by_region(s, cos, lo, hi)}
        return SpectrumSummary(
            "dense",
            P,
            float(lo),
            float(hi),
            counts,
            stderr,
            s[:num_top],
            s,
            0 if given else P,
            time.perf_counter() - t0,
            settings=settings,
        )
    k_rc, k_top = jax.random.split(key)
    if num_deflate is None:
        num_deflate = min(150, max(int(num_top), P // 32))
    if int(num_deflate) < 0:
        raise ValueError(f"num_deflate must be >= 0 (0: no deflation), got {num_deflate}.")
    num_deflate = min(int(num_deflate), P - 2)
    # The top values first: they are deflated from the quadrature, and the largest value left
    # (sigma_{k+1}) sets the resolution that num_steps must reach.
    t_opts = {"tol": 1e-6, **dict(top_opts or {})}
    if max_products is not None:
        max_products = int(max_products)
        if max_products < 16 * max(int(num_top), num_deflate, 1):
            raise ValueError(
                f"max_products={max_products} is too small for the top "
                f"{max(int(num_top), num_deflate)} triplets and a quadrature; allow at least "
                f"{16 * max(int(num_top), num_deflate, 1)} (or lower num_deflate)."
            )
        t_opts["max_products"] = min(
            int(t_opts.get("max_products", max_products)), max_products // 2
        )
    if progress is not None and t_opts.get("method", "lanczos") == "lanczos":
        t_opts.setdefault("progress", progress)
    k_first = max(int(num_top), num_deflate)
    _say(progress, f"top {k_first} singular triplets (Lanczos, tol {t_opts['tol']:g})")
    top = top_singular(J, k_first, key=k_top, **t_opts)
    t_top = time.perf_counter() - t0
    conv = np.asarray(top.converged, dtype=bool)
    s_top = _np(top.s)
    use_deflation = num_deflate > 0 and conv.any() and conv.sum() < P
    sigma_rest = float(np.min(s_top[conv])) if use_deflation else float(np.max(s_top))
    opts = {
        "num_steps": auto_num_steps(sigma_rest, lo, hi, P, factor=6.0),
        "num_probes": 10 if num_probes is None else int(num_probes),
    }
    if num_steps is not None:
        opts["num_steps"] = int(num_steps)
    budget_limited = False
    if max_products is not None:
        left = max_products - int(top.num_products)
        if 2 * opts["num_probes"] * opts["num_steps"] > left:
            budget_limited = True
            opts["num_probes"] = max(2, min(opts["num_probes"], left // (2 * opts["num_steps"])))
            opts["num_steps"] = max(2, min(opts["num_steps"], left // (2 * opts["num_probes"])))
            warnings.warn(
                f"spectrum_summary: max_products={max_products} leaves {left} products for "
                f"the counts: {opts['num_probes']} probes x {opts['num_steps']} steps, fewer "
                "than asked for; see settings['quadrature_bounds'] for the bias this allows.",
                stacklevel=2,
            )
    deflate = top if use_deflation else None
    n_slq = 2 * opts["num_probes"] * opts["num_steps"]
    per_product = t_top / max(int(top.num_products), 1)
    _say(
        progress,
        f"top {k_first}: {int(conv.sum())} converged, {int(top.num_products)} products, "
        f"{t_top:.1f}s; SLQ counts: {opts['num_probes']} probes x {opts['num_steps']} steps "
        f"({n_slq} products, about {n_slq * per_product / 60:.1f} min at that rate), "
        f"{int(conv.sum()) if deflate is not None else 0} deflated",
    )
    rc = region_counts(J, key=k_rc, lo=lo, hi=hi, method="slq", deflate=deflate, **opts)
    _say(progress, f"SLQ done in {time.perf_counter() - t0 - t_top:.1f}s")
    counts = {r: _get(rc, r) for r in REGIONS}
    stderr = {r: _get(rc.stderr, r) for r in REGIONS}
    n_prod = int(getattr(rc, "num_products", 0)) + int(getattr(top, "num_products", 0))
    return SpectrumSummary(
        "matrix-free",
        P,
        float(lo),
        float(hi),
        counts,
        stderr,
        np.sort(s_top)[::-1][: int(num_top)],
        None,
        n_prod,
        time.perf_counter() - t0,
        settings=dict(
            num_probes=opts["num_probes"],
            num_steps=opts["num_steps"],
            num_deflated=int(conv.sum()) if deflate is not None else 0,
            sigma_rest=sigma_rest,
            top_products=int(top.num_products),
            top_seconds=t_top,
            step_change=rc.step_change,
            quadrature_bounds=rc.bounds,
            quadrature_bounds_stderr=rc.bounds_stderr,
            alignment=rc.alignment,
            budget_limited=budget_limited,
        ),
    )


def _say(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def auto_num_steps(
    sigma_max: float, lo: float, hi: float, dim: int, *, factor: float = 3.5, minimum: int = 80
) -> int:
    r"""Lanczos steps that resolve the bulk interval ``[lo, hi]`` in a spectrum up to ``sigma_max``.

    Gauss nodes of an ``m``-step Lanczos on :math:`J^T J` are spaced about
    :math:`\pi \sigma_{max} / (2 m)` in :math:`\sigma`; we take ``factor`` times the ``m`` that
    makes that spacing ``hi - lo`` (at least ``minimum``, at most ``dim``). Measured on the
    reference model (sigma_1 = 16, P = 4810, 20 probes): factor 1.2 (151 steps) left a quadrature
    bias of 5-10 % per region, many standard errors (which see probe variance only); factor 3.6
    (450 steps) agreed with the dense counts within 2.2 standard errors.

    Examples
    --------
    >>> from matfree_tj.analysis import auto_num_steps
    >>> auto_num_steps(16.0, 0.9, 1.1, 4810)
    440
    """
    need = math.ceil(
        float(factor) * math.pi * float(sigma_max) / (2.0 * max(float(hi) - float(lo), 1e-12))
    )
    return int(min(max(need, int(minimum)), int(dim)))


def compare_spectra(
    ops: Mapping[str, LinearOperator], *, key: jax.Array, backend: str = "matrix-free", **kwargs
) -> dict:
    r""":func:`spectrum_summary` of several runs side by side (experiment 6: data versus labels).

    ``ops`` maps a name (e.g. ``"original"``, ``"shuffled labels"``, ``"noise inputs"``) to the
    training Jacobian of that run. Cost: one :func:`spectrum_summary` per entry.
    """
    keys = jax.random.split(key, len(ops))
    return {
        name: spectrum_summary(op, key=k, backend=backend, **kwargs)
        for (name, op), k in zip(ops.items(), keys, strict=True)
    }


# ------------------------------------------------------------------------------------------
# Triplets
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Triplets:
    """Singular triplets ``A v_i = s_i u_i`` (float64 numpy): ``U``, ``V`` are ``(P, k)`` columns.

    ``which`` is ``"top"`` (``s`` descending), ``"bottom"`` (ascending) or ``"all"`` (descending).
    Signs are canonical: the largest-magnitude entry of each ``v_i`` is positive.
    """

    s: np.ndarray
    U: np.ndarray
    V: np.ndarray
    which: str
    num_products: int = 0
    converged: np.ndarray | None = None
    residuals: np.ndarray | None = None
    status: str | None = None

    def __len__(self) -> int:
        return int(self.s.shape[0])

    def accuracy(self) -> dict:
        """JSON-able record of how far to trust the triplets: values, per-triplet residuals
        ``sqrt(||A v - s u||^2 + ||A^T u - s v||^2)`` and convergence flags (matrix-free; dense
        triplets are exact to rounding: ``None``), solver status and products used."""
        return {
            "which": self.which,
            "s": [float(x) for x in self.s],
            "converged": None if self.converged is None else [bool(c) for c in self.converged],
            "residuals": None if self.residuals is None else [float(r) for r in self.residuals],
            "status": self.status,
            "num_products": int(self.num_products),
        }


def _fix_signs(U: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip each pair ``(u_i, v_i)`` so the largest-magnitude entry of ``v_i`` is positive.

    A triplet is defined up to a joint sign; fixing it makes backends and solvers return the same
    vectors, so nonlinear experiments (retraining from ``theta_0 + eps v``) are comparable.
    """
    idx = np.argmax(np.abs(V), axis=0)
    sign = np.sign(V[idx, np.arange(V.shape[1])])
    sign[sign == 0] = 1.0
    return U * sign, V * sign


def singular_triplets(
    op: LinearOperator,
    k: int | None,
    *,
    key: jax.Array | None = None,
    which: str = "top",
    backend: str = "matrix-free",
    dense: Any = None,
    **opts,
) -> Triplets:
    r"""The ``k`` largest (``which="top"``) or smallest (``"bottom"``) singular triplets of ``op``.

    Matrix-free: :func:`matfree_tj.top_singular` / :func:`matfree_tj.bottom_singular` with
    ``opts`` (needs ``key``); cost as reported in ``num_products`` (Krylov methods: a few ``k``
    products of ``op`` and of ``op^T``). Dense: materialise (``P`` products; or pass the matrix /
    a :class:`~matfree_tj.DenseSVD` as ``dense``) and a full SVD; ``which="all"`` (``k=None``)
    returns every triplet.
    """
    _check_backend(backend)
    if which not in ("top", "bottom", "all"):
        raise ValueError(f"which must be 'top', 'bottom' or 'all', got {which!r}.")
    shape = tuple(op.shape) if isinstance(op, LinearOperator) else np.shape(op)
    P = min(shape)
    if which == "all":
        if backend != "dense":
            raise ValueError(
                "which='all' needs backend='dense' (every triplet of a P x P operator)."
            )
        k = P
    k = _check_k(k, P)
    if backend == "dense":
        svd = dense if isinstance(dense, DenseSVD) else None
        if svd is not None and (svd.U is None or svd.V is None):
            raise ValueError(
                "singular_triplets: dense is a DenseSVD without singular vectors. Compute it "
                "with dense_svd(..., compute_vectors=True), or pass the dense matrix."
            )
        if svd is None:
            A = _dense_matrix(op if dense is None else dense)
            if A.shape != shape:
                raise ValueError(
                    f"singular_triplets: dense has shape {A.shape}, the operator {shape}."
                )
            svd = dense_svd(A, compute_vectors=True)
        s, U, V = _np(svd.s), _np(svd.U), _np(svd.V)
        cost = 0 if dense is not None else P
        if which == "bottom":
            s, U, V = s[::-1], U[:, ::-1], V[:, ::-1]
        U, V = _fix_signs(U[:, :k], V[:, :k])
        return Triplets(s[:k].copy(), U, V, which, cost)
    if key is None:
        raise ValueError("backend='matrix-free' needs an explicit key=jax.random.key(...).")
    fn = top_singular if which == "top" else bottom_singular
    res = fn(op, k, key=key, **opts)
    conv = getattr(res, "converged", None)
    resid = getattr(res, "residuals", None)
    U, V = _fix_signs(_np(res.U), _np(res.V))
    return Triplets(
        _np(res.s),
        U,
        V,
        which,
        int(getattr(res, "num_products", 0)),
        None if conv is None else np.asarray(conv),
        None if resid is None else _np(resid),
        getattr(res, "status", None),
    )


def moved_directions(
    J: LinearOperator,
    k: int,
    *,
    key: jax.Array | None = None,
    backend: str = "matrix-free",
    dense: Any = None,
    **opts,
) -> Triplets:
    r"""Top-``k`` singular triplets of ``J - I``: the directions training moved.

    Their right vectors span the complement of the bulk (module docs). Matrix-free: one product
    of ``J`` (or ``J^T``) per product of ``J - I`` (:func:`matfree_tj.add_identity`); dense: pass
    ``dense`` = the materialised ``J`` (a ``(P, P)`` array, or a :class:`~matfree_tj.DenseSVD`
    *of J* with vectors, from which ``J`` is rebuilt) to avoid ``P`` more products. ``J - I`` is
    formed here; its SVD is a different one from ``J``'s, so never pass an SVD of ``J - I``.
    """
    JmI = add_identity(J, -1.0)
    dm = None
    if backend == "dense" and dense is not None:
        if isinstance(dense, DenseSVD):
            if dense.U is None or dense.V is None:
                raise ValueError(
                    "moved_directions: dense is a DenseSVD of J without singular vectors, so J "
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


# ------------------------------------------------------------------------------------------
# 2. Alignment of left and right singular vectors
# ------------------------------------------------------------------------------------------


def alignment(trip: Triplets) -> np.ndarray:
    r"""``cos(u_i, v_i)`` for every triplet (well defined: a triplet's sign flips ``u`` and ``v``
    together). Needs only the triplets; no operator products.

    Examples
    --------
    >>> import numpy as np
    >>> from matfree_tj.analysis import Triplets, alignment
    >>> alignment(Triplets(np.ones(2), np.eye(2), np.array([[1.0, 0.0], [0.0, -1.0]]), "all"))
    array([ 1., -1.])
    """
    num = np.sum(trip.U * trip.V, axis=0)
    den = np.linalg.norm(trip.U, axis=0) * np.linalg.norm(trip.V, axis=0)
    return num / den


def alignment_summary(
    s: Any, cos: Any, windows: Sequence[int] = (500, 2000), edge: int = 10
) -> dict:
    r"""Mean ``cos(u_i, v_i)`` over the ``w`` values closest to 1 (for each ``w`` in ``windows``
    that fits), and over the top and bottom ``edge`` values. Dense triplets (all of them)."""
    s, cos = np.asarray(s), np.asarray(cos)
    order = np.argsort(np.abs(s - 1.0))
    out = {f"closest_{w}": float(np.mean(cos[order[:w]])) for w in windows if w <= s.size}
    desc = np.argsort(-s)
    out[f"top_{edge}"] = float(np.mean(cos[desc[:edge]]))
    out[f"bottom_{edge}"] = float(np.mean(cos[desc[-edge:]]))
    return out


def random_bulk_basis(
    moved: Any, k: int, *, key: jax.Array, num_params: int | None = None
) -> np.ndarray:
    r"""``k`` orthonormal random directions in the bulk: Gaussian vectors projected off the moved
    subspace (``moved``: a :class:`Triplets` or a ``(P, m)`` orthonormal basis) and
    orthonormalised. No operator products; ``O(P m k)`` flops."""
    B = moved.V if isinstance(moved, Triplets) else np.asarray(moved)
    if B.ndim != 2:
        raise ValueError(f"moved must be a Triplets or a (P, m) basis, got shape {B.shape}.")
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


def bulk_alignment_probe(
    J: LinearOperator, moved: Any, *, key: jax.Array, num_probes: int = 8
) -> dict:
    r"""How unchanged training carries a random bulk direction, matrix-free.

    For unit ``x`` drawn uniformly from the bulk (:func:`random_bulk_basis`) returns
    ``cos(x, J x)`` and the gain ``|J x|``, and the same for plain random unit vectors as a
    baseline. In the paper's picture bulk directions have ``cos ~ 1`` and gain ``~ 1``.
    Cost: ``2 num_probes`` products of ``J`` (one block product each).
    """
    P = J.shape[1]
    k1, k2 = jax.random.split(key)
    X = random_bulk_basis(moved, num_probes, key=k1, num_params=P)
    R, _ = np.linalg.qr(_np(jax.random.normal(k2, (P, num_probes))))
    out = {}
    for name, Z in (("bulk", X), ("random", R)):
        Y = _np(J.matmat(jnp.asarray(Z, J.dtype)))
        gain = np.linalg.norm(Y, axis=0)
        cos = np.sum(Y * Z, axis=0) / gain
        out[name] = {
            "cos": cos.tolist(),
            "gain": gain.tolist(),
            "mean_cos": float(cos.mean()),
            "mean_gain": float(gain.mean()),
        }
    out["num_products"] = 2 * int(num_probes)
    return out


# ------------------------------------------------------------------------------------------
# 3. Perturbation along a direction: does the linearisation hold?
# ------------------------------------------------------------------------------------------


def _flat_train(J: Any) -> Callable:
    train_fn, unravel = J.train_fn, J.unravel

    def f(theta):
        return ravel_pytree(eqx.filter(train_fn(unravel(theta)), eqx.is_array))[0]

    return jax.jit(f)


def perturbation_response(
    J: Any,
    v: Any,
    *,
    eps: Any = None,
    u: Any = None,
    sigma: float | None = None,
    test_loss: Callable | None = None,
) -> dict:
    r"""Retrain from ``theta_0 + eps v`` for many ``eps`` and compare with the linearisation.

    With ``delta(eps) = theta_T(theta_0 + eps v) - theta_T(theta_0)`` and ``J v = sigma u``
    (``|u| = 1``) reports, per ``eps``: the projection ``<u, delta>`` against ``eps sigma``, the
    remainder ``|delta - <u, delta> u|``, the linearisation error
    ``|delta - eps sigma u| / (eps sigma)``, and ``test_loss(params)`` of the perturbed run if
    given. ``linear_up_to`` is the largest ``eps`` below which that error stays under 0.1.

    Parameters
    ----------
    J
        A :class:`~matfree_tj.TrainingJacobian` (uses ``train_fn``, ``params0_flat``,
        ``params_T_flat``, ``unravel``).
    v
        Direction ``(P,)`` (normalised here), e.g. a right singular vector or a bulk direction.
    eps
        Scales (default ``logspace(-3, 3, 30)``: six orders of magnitude, as the paper); sorted
        ascending (duplicates dropped), the order of ``rows``.
    u, sigma
        A singular pair with ``J v = sigma u``. If omitted, ``sigma = |J v|`` and
        ``u = J v / sigma`` are computed with one product, so any ``v`` works.

    Cost: ``len(eps)`` training runs (+1 product of ``J`` if ``u``/``sigma`` are omitted).
    """
    v = _np(v)
    P = J.shape[1]
    if v.shape != (P,):
        raise ValueError(f"perturbation_response: v must have shape ({P},), got {v.shape}.")
    vnorm = float(np.linalg.norm(v))
    if not np.isfinite(vnorm) or vnorm == 0.0:
        raise ValueError(
            f"perturbation_response: v must be a finite nonzero direction, |v| = {vnorm}."
        )
    v = v / vnorm
    eps = np.logspace(-3, 3, 30) if eps is None else np.asarray(eps, dtype=np.float64)
    if eps.ndim != 1 or eps.size < 1 or not np.all(np.isfinite(eps)) or np.any(eps <= 0):
        raise ValueError("eps must be a non-empty 1-d array of finite positive scales.")
    # Ascending: rows come back in that order and linear_up_to reads them as a sweep.
    eps = np.unique(eps)
    dt = J.dtype
    if u is None or sigma is None:
        Jv = _np(J.mv(jnp.asarray(v, dt)))
        sigma = float(np.linalg.norm(Jv))
        u = Jv / sigma if sigma > 0 else Jv
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma <= 0.0:
        raise ValueError(
            f"perturbation_response: sigma = {sigma} (given, or |J v|); it must be finite and "
            "positive (v in J's nullspace or a failed product leaves no direction u to compare "
            "with)."
        )
    u = _np(u)
    if u.shape != (P,):
        raise ValueError(f"perturbation_response: u must have shape ({P},), got {u.shape}.")
    u = u / np.linalg.norm(u)
    train = _flat_train(J)
    theta0, thetaT = J.params0_flat, _np(J.params_T_flat)
    rows = []
    for e in eps:
        th = train(theta0 + jnp.asarray(e * v, dt))
        delta = _np(th) - thetaT
        proj = float(u @ delta)
        row = dict(
            eps=float(e),
            projection=proj,
            expected=float(e * sigma),
            remainder=float(np.linalg.norm(delta - proj * u)),
            delta_norm=float(np.linalg.norm(delta)),
            linearisation_error=float(np.linalg.norm(delta - e * sigma * u) / (e * sigma)),
        )
        if test_loss is not None:
            row["test_loss"] = float(test_loss(J.unravel(th)))
        rows.append(row)
    err = np.array([r["linearisation_error"] for r in rows])
    bad = np.nonzero(~(err < 0.1))[0]
    linear_up_to = (
        float(eps[: bad[0]].max())
        if bad.size and bad[0] > 0
        else (float(eps.max()) if not bad.size else 0.0)
    )
    out = dict(
        sigma=float(sigma),
        cos_uv=float(u @ v),
        linear_up_to=linear_up_to,
        rows=rows,
        num_training_runs=int(eps.size),
    )
    if test_loss is not None:
        out["test_loss_unperturbed"] = float(test_loss(J.unravel(J.params_T_flat)))
    return out


# ------------------------------------------------------------------------------------------
# 4. In- and out-of-distribution effect of a final-parameter perturbation
# ------------------------------------------------------------------------------------------


def ood_inputs(X_train: Any, X_test: Any, *, key: jax.Array) -> dict:
    r"""The paper's three input sets: ``train`` inputs, standard Gaussian ``noise`` inputs (as
    many as the test set), and ``inverted`` test images ``1 - X_test``."""
    X_test = jnp.asarray(X_test)
    return {
        "train": jnp.asarray(X_train),
        "noise": jax.random.normal(key, X_test.shape, X_test.dtype),
        "inverted": 1.0 - X_test,
    }


def output_sensitivity(
    apply: Callable,
    params: Any,
    directions: Any,
    inputs: Mapping[str, Any],
    *,
    scale: float = 1.0,
    unravel: Callable | None = None,
    divergence: str = "auto",
) -> dict:
    r"""Max over examples of ``KL(p(. | x; theta) || p(. | x; theta + scale d))`` per direction.

    Parameters
    ----------
    apply
        ``apply(params_pytree, X) -> outputs``: class logits ``(N, C)`` or regression outputs
        ``(N,)`` / ``(N, d)``.
    params
        Final parameters: a flat ``(P,)`` vector with ``unravel``, or a
        :class:`~matfree_tj.TrainingJacobian` (its ``params_T_flat`` and ``unravel``).
    directions
        ``(P, m)`` directions (normalised here), e.g. right singular vectors across the spectrum.
    inputs
        Name -> inputs, e.g. :func:`ood_inputs`.
    divergence
        ``"softmax"``: KL between the softmax distributions of the logits (classifiers, the
        paper's measure); ``"gaussian"``: KL between unit-variance Gaussians centred on the
        outputs, :math:`\|f(x; \theta) - f(x; \theta')\|^2 / 2` (regression);
        ``"auto"`` (default): ``"softmax"`` for outputs ``(N, C)`` with ``C >= 2``,
        ``"gaussian"`` for ``(N,)`` or ``(N, 1)``. Pass it explicitly for multi-output
        regression.

    Floating inputs are cast to the parameters' dtype; integer inputs (token ids, class
    indices) are passed as they are.

    Returns ``{name: (m,) array}``. Cost: ``m + 1`` forward passes per input set, no training.
    """
    if unravel is None:
        params, unravel = params.params_T_flat, params.unravel
    theta = jnp.asarray(params)
    P = theta.shape[0]
    D = _np(directions)
    if D.ndim == 1:
        D = D[:, None]  # one direction
    if D.ndim != 2 or D.shape[0] != P:
        raise ValueError(
            f"output_sensitivity: directions must be ({P}, m) (or one ({P},) direction), "
            f"got shape {np.shape(directions)}."
        )
    norms = np.linalg.norm(D, axis=0, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("output_sensitivity: every direction must be finite and nonzero.")
    D = jnp.asarray(D / norms, theta.dtype)
    if divergence not in ("auto", "softmax", "gaussian"):
        raise ValueError(f"divergence must be 'auto', 'softmax' or 'gaussian', got {divergence!r}.")
    if not inputs:
        raise ValueError(
            "output_sensitivity: inputs is empty; pass {name: X}, e.g. ood_inputs(...)."
        )
    inputs = {name: model_inputs(X, theta.dtype) for name, X in inputs.items()}
    if divergence == "auto":
        X0 = next(iter(inputs.values()))
        out = jax.eval_shape(lambda th: apply(unravel(th), X0), theta)
        if out.ndim == 2 and out.shape[-1] >= 2:
            divergence = "softmax"
        elif out.ndim == 1 or (out.ndim == 2 and out.shape[-1] == 1):
            divergence = "gaussian"
        else:
            raise ValueError(
                f"output_sensitivity: apply returned shape {out.shape}; expected class logits "
                "(N, C) or regression outputs (N,) / (N, 1). Pass divergence='softmax' or "
                "'gaussian' explicitly."
            )
    fn = _max_kl_fn(apply, unravel, divergence)
    scale = jnp.asarray(scale, theta.dtype)
    return {name: _np(fn(theta, D, X, scale)) for name, X in inputs.items()}


@functools.lru_cache(maxsize=32)
def _max_kl_fn(apply: Callable, unravel: Callable, divergence: str) -> Callable:
    # One compiled function per (model, parameter layout), reused across calls and input sets.
    def per_example(out0, out1):
        if divergence == "softmax":
            logp0 = jax.nn.log_softmax(out0, axis=-1)
            logp1 = jax.nn.log_softmax(out1, axis=-1)
            return jnp.sum(jnp.exp(logp0) * (logp0 - logp1), axis=-1)
        diff = (out0 - out1).reshape(out0.shape[0], -1)
        return 0.5 * jnp.sum(diff**2, axis=-1)

    @jax.jit
    def fn(theta, D, X, scale):
        out0 = apply(unravel(theta), X)

        def max_kl(d):
            return jnp.max(per_example(out0, apply(unravel(theta + scale * d), X)))

        return jax.lax.map(max_kl, D.T)

    return fn


# ------------------------------------------------------------------------------------------
# 5. Training restricted to a subspace
# ------------------------------------------------------------------------------------------


def _confined(optimizer: Any, project: Callable) -> Any:
    """``optimizer`` confined to a subspace: it gets ``project(grads)`` and its updates are
    projected. Extra update arguments (``value``, ``grad``, ``value_fn``) are passed on, with
    ``grad`` projected too."""
    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def update(grads, state, params=None, **kwargs):
        g = project(grads)
        if extra:
            kwargs = {**kwargs, "grad": g} if "grad" in kwargs else kwargs
            updates, state = optimizer.update(g, state, params, **kwargs)
        else:
            updates, state = optimizer.update(g, state, params)
        return project(updates), state

    cls = optax.GradientTransformationExtraArgs if extra else optax.GradientTransformation
    return cls(optimizer.init, update)


def _check_orthonormal(B: np.ndarray, name: str, eps: float) -> None:
    """Cheap ``O(P k)`` check that ``B`` has orthonormal columns: unit norms and ``B^T B z = z``
    for a random ``z``. Tolerance ``max(1e-4, 10 k eps)``, above the rounding of a basis
    orthonormalised in the working precision."""
    k = B.shape[1]
    z = np.random.default_rng(0).standard_normal(k)
    z /= np.linalg.norm(z)
    norm_err = np.max(np.abs(np.linalg.norm(B, axis=0) - 1.0)) if k else 0.0
    gram_err = np.linalg.norm(B.T @ (B @ z) - z)
    tol = max(1e-4, 10 * k * eps)
    if not (norm_err <= tol and gram_err <= tol):
        raise ValueError(
            f"restricted_training: basis {name!r} is not orthonormal (column norms off by "
            f"{norm_err:.2e}, |B^T B z - z| = {gram_err:.2e} > {tol:.1e}); orthonormalise it "
            "first, e.g. numpy.linalg.qr(B)[0]."
        )


def restricted_training(
    J: Any,
    bases: Mapping[str, Any],
    ks: Sequence[int],
    *,
    eval_fn: Callable,
    loss_fn: Callable | None = None,
    optimizer: Any = None,
    batches: Any = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    r"""Train only within the span of the first ``k`` columns of each basis; ``eval_fn`` after.

    With ``B`` the first ``k`` columns of an orthonormal basis and ``Pi = B B^T``, runs the same
    loss, optimizer and batches as ``J.train_fn`` (a :func:`matfree_tj.make_train_fn` run;
    otherwise pass ``loss_fn``, ``optimizer``, ``batches``) from ``theta_0``, with the optimizer
    confined to the span: it receives the projected gradient ``Pi grad`` and each update it
    returns is projected, ``theta <- theta + Pi update``. The optimizer itself runs unchanged on
    the parameter pytree, so per-leaf behaviour (masks, ``multi_transform``, LAMB's trust ratio,
    Adafactor's factored moments) and parameter-dependent transforms (weight decay pulls
    ``theta`` toward 0, not toward ``theta_0``) are those of the normal run. Hence:

    * SGD, with momentum, Nesterov, weight decay and schedules, is exactly projected gradient
      descent: ``theta <- theta - lr Pi (grad + wd theta)`` (and its momentum recursion);
    * any full basis (``k = P``, e.g. a rotation) reproduces the unconstrained run for any
      optimizer, since then ``Pi = I``;
    * for coordinate-wise optimizers (Adam) with a rotated basis it is Adam on the projected
      gradient with the step projected back, not Adam on the coordinates ``B^T theta``.

    Parameters
    ----------
    J
        A :class:`~matfree_tj.TrainingJacobian` (``params0_flat``, ``unravel``, ``train_fn``).
    bases
        Name (e.g. ``"bulk"``, ``"complement"``, ``"chaotic"``, ``"stable"``) -> ``(P, k_max)``
        orthonormal columns in order of priority (checked: column norms and ``B^T B z = z`` for
        a random ``z``). The names ``"ks"``, ``"unconstrained"`` and ``"initial"`` are taken.
    ks
        Subspace sizes, positive integers (a ``k`` above a basis's width gives ``nan`` for it).
    eval_fn
        ``eval_fn(params_pytree) -> scalar`` (e.g. the test loss).

    Returns ``{"ks": ks, name: [eval per k], "unconstrained": eval of the normal run,
    "initial": eval at theta_0}``. Cost: one training run per (name, k), each step adding four
    ``(P, w)`` matrix-vector products (projecting the gradient and the update), ``w`` the next
    power of two above ``k`` (capped at the basis width): the bases are zero-padded to ``w``
    (zero columns leave ``Pi`` unchanged) so one compile serves each size bucket.
    """
    tf = J.train_fn
    loss_fn = loss_fn if loss_fn is not None else getattr(tf, "loss_fn", None)
    optimizer = optimizer if optimizer is not None else getattr(tf, "optimizer", None)
    batches = batches if batches is not None else getattr(tf, "batches", None)
    if loss_fn is None or optimizer is None or batches is None:
        raise ValueError(
            "restricted_training needs loss_fn, optimizer and batches (given, or from "
            "a J.train_fn built by matfree_tj.make_train_fn)."
        )
    theta0, unravel, dt = J.params0_flat, J.unravel, J.dtype
    bad = [k for k in ks if not _is_int(k) or k < 1]
    if bad:
        raise ValueError(f"restricted_training: ks must be positive integers, got {bad}.")
    ks = [int(k) for k in ks]
    taken = {"ks", "unconstrained", "initial"} & set(bases)
    if taken:
        raise ValueError(f"restricted_training: basis names {sorted(taken)} are taken by results.")

    @jax.jit
    def run(B):
        def project(tree):
            flat, unflatten = ravel_pytree(tree)
            coef = jnp.matmul(flat.astype(B.dtype), B, precision=_HI)
            return unflatten(jnp.matmul(B, coef, precision=_HI).astype(flat.dtype))

        confined = _confined(optimizer, project)
        return eval_fn(make_train_fn(loss_fn, confined, batches)(unravel(theta0)))

    out: dict = {"ks": ks}
    P = theta0.shape[0]
    for name, basis in bases.items():
        basis = _np(basis)
        if basis.ndim != 2 or basis.shape[0] != P:
            raise ValueError(
                f"restricted_training: basis {name!r} must be ({P}, k_max) columns, "
                f"got shape {basis.shape}."
            )
        _check_orthonormal(basis, name, np.finfo(np.dtype(dt)).eps)
        basis = jnp.asarray(basis, dt)
        vals = []
        for k in ks:
            if k > basis.shape[1]:
                vals.append(float("nan"))
                continue
            # Zero-pad to a power of two: zero columns add nothing to B B^T, so the run is the
            # same; one compile serves each size bucket instead of one per k.
            width = min(basis.shape[1], 1 << (k - 1).bit_length())
            B = basis[:, :width] if width == k else basis[:, :width].at[:, k:].set(0.0)
            vals.append(float(run(B)))
            if progress is not None:
                progress(f"restricted training: {name} k={k} -> {vals[-1]:.4f}")
        out[name] = vals
    out["unconstrained"] = float(eval_fn(J.unravel(J.params_T_flat)))
    out["initial"] = float(eval_fn(J.unravel(theta0)))
    return out
