r"""Experiments 1 and 6: the spectrum of an operator, its chaotic / bulk / stable counts with
error bars, and spectra of several runs side by side.

The matrix-free route deflates the top triplets (:func:`matfree_tj.top_singular`) from a
stochastic Lanczos quadrature (:func:`matfree_tj.region_counts`); the dense route is one SVD
(:func:`matfree_tj.dense_svd`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator
from ..linalg import (
    RunStore,
    SingularTriplets,
    SpectrumProfile,
    count_interval,
    dense_svd,
    probe_quantile,
    region_counts,
    spectrum_profile,
    top_singular,
)
from ._common import REGIONS, _check_backend, _check_bounds, _get, _np, _say


@dataclasses.dataclass(frozen=True)
class SpectrumSummary:
    """Region counts (with standard errors) and the top singular values of one operator.

    ``singular_values`` holds all ``P`` values with the dense backend and ``None`` otherwise.
    ``settings`` (matrix-free) records how the counts were made and how far to trust them:
    ``num_probes``, ``num_steps``, ``num_deflated``, ``sigma_rest`` (the largest value left to
    the quadrature), ``top_products``, ``top_seconds``, ``top_converged`` and ``top_residuals``
    (per top value, in the order of ``top_singular_values``: certified or not, and the residual
    from fresh products; an exact singular value lies within ``residual / sqrt(2)`` of a
    certified one; only certified values are deflated), ``step_change`` (each count's change
    from half to all of the Lanczos steps), ``quadrature_bounds`` (``{region: (lower,
    upper)}``: the guaranteed range of each count's probe average whatever the quadrature's
    bias; see :attr:`matfree_tj.RegionCounts.bounds`), ``quadrature_bounds_stderr`` (the
    standard errors of those bounds over probes, used by :meth:`interval`) and ``alignment``
    (``{region: (mean cos(u_i, v_i), stderr)}`` from the same quadrature, no extra products; see
    :meth:`matfree_tj.SpectralDensity.alignment`). Dense, with singular vectors: ``settings``
    holds the exact ``alignment`` (stderr 0). ``profile`` (matrix-free): every
    sigma_i against ``i`` with a pointwise 95% band, from the same quadrature
    (:func:`matfree_tj.linalg.spectrum_profile`; the deflated values exact at ``1..c``, node
    accuracy ``100 eps ||J||`` for ``J``'s dtype); dense: ``None`` (all values are exact).
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
    profile: SpectrumProfile | None = None

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
        if self.profile is not None:
            d["profile"] = self.profile.to_dict()
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
    J: AbstractOperator,
    *,
    key: jax.Array,
    backend: str = "matrix-free",
    lo: float = 0.9,
    hi: float = 1.1,
    num_top: int = 10,
    num_probes: int | None = None,
    num_steps: int | None = None,
    num_deflate: int | None = None,
    svd: SingularTriplets | None = None,
    top_opts: Mapping | None = None,
    progress: Callable[[str], None] | None = None,
    max_products: int | None = None,
    resume_dir: str | os.PathLike | RunStore | None = None,
) -> SpectrumSummary:
    r"""Singular values of ``J`` and the chaotic / bulk / stable counts with error bars.

    Parameters
    ----------
    J
        Any square operator (usually :func:`matfree_tj.training_jacobian`).
    key
        Randomness for the probes and the starting vectors.
    backend
        ``"auto"``: :func:`choose_backend` picks dense when it fits in memory and is expected
        to be cheaper, else matrix-free (the choice and why: ``settings["backend_choice"]``).
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
    resume_dir
        Matrix-free: a folder (or a :class:`~matfree_tj.linalg.RunStore`) where the run's
        progress is saved atomically after every restart cycle of the top-k solver and every
        SLQ probe (which then run one at a time; see
        :func:`~matfree_tj.singular_value_density`). Calling again with the same folder
        continues where a killed or interrupted run stopped, repeating at most one cycle or
        probe, and gives the same numbers as an uninterrupted run with the folder (identical:
        the probes come from ``key`` up front and each stage continues from its saved
        state). The folder records what identifies the run (``P``, dtype, the options, the
        key, the code version and a fingerprint of the operator: ``||J v||`` and
        ``cos(w, J v)`` for fixed random ``v, w``, one extra product); another run pointed
        at it raises :class:`~matfree_tj.linalg.ResumeError`, as does a corrupt or
        truncated state file (delete the folder to start over). A ``top_opts`` method
        ``"randomized"`` top stage is not saved (it reruns on resume).

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
    choice = None
    if backend == "auto":
        backend, why = choose_backend(
            J,
            num_top=int(num_top),
            num_deflate=num_deflate,
            num_probes=num_probes,
            num_steps=num_steps,
        )
        choice = f"backend='auto' chose {backend}: {why}"
        _say(progress, choice)
    _check_backend(backend)
    _check_bounds(lo, hi)
    P = J.shape[1]
    top_max = P if backend == "dense" else P - 1  # Krylov solvers need k < P
    if not 1 <= int(num_top) <= top_max:
        raise ValueError(
            f"Expected 1 <= num_top <= {top_max} (backend {backend!r}), got {num_top}."
        )
    t0 = time.perf_counter()
    if resume_dir is not None and backend == "dense":
        raise ValueError(
            "resume_dir applies to the matrix-free backend (the dense one is a single SVD); "
            "drop resume_dir or use backend='matrix-free'."
        )
    if backend == "dense":
        given = svd is not None
        if not given:
            svd = dense_svd(J)
        s = _np(svd.s)
        counts = counts_from_values(s, lo, hi)
        stderr = dict.fromkeys(REGIONS, 0.0)
        settings = None if choice is None else {"backend_choice": choice}
        if svd.U is not None and svd.V is not None:
            cos = np.sum(_np(svd.U) * _np(svd.V), axis=0)
            settings = {**(settings or {}), "alignment": alignment_by_region(s, cos, lo, hi)}
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
    store, rc_opts = None, {}
    if resume_dir is not None:
        store = _open_store(resume_dir, J, key, t_opts, locals_=dict(
            lo=lo, hi=hi, num_top=num_top, num_probes=num_probes, num_steps=num_steps,
            num_deflate=num_deflate, max_products=max_products,
        ))  # fmt: skip
        rc_opts = {"checkpoint": store.sub("counts"), "progress": progress}
        if t_opts.get("method", "lanczos") == "lanczos":
            t_opts["checkpoint"] = store.sub("top")
        _say(progress, f"saving progress in {store.path}")
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
    rc = region_counts(J, key=k_rc, lo=lo, hi=hi, method="slq", deflate=deflate, **opts, **rc_opts)
    _say(progress, f"SLQ done in {time.perf_counter() - t0 - t_top:.1f}s")
    counts = {r: _get(rc, r) for r in REGIONS}
    stderr = {r: _get(rc.stderr, r) for r in REGIONS}
    n_prod = int(getattr(rc, "num_products", 0)) + int(getattr(top, "num_products", 0))
    # sigma_i against i from the same quadrature; the nodes are accurate to the floor the
    # solvers certify to, 100 eps ||J|| (||J|| ~ the largest value seen)
    profile = spectrum_profile(
        rc.density,
        boundaries=(lo, hi),
        rounding=100.0 * float(jax.numpy.finfo(J.dtype).eps) * float(np.max(s_top)),
    )
    # the top values in descending order, each with its certificate (residual from fresh
    # products; converged: an exact singular value within residual / sqrt(2))
    order = np.argsort(-s_top, kind="stable")[: int(num_top)]
    res_top = np.asarray(top.residuals, dtype=np.float64)
    return SpectrumSummary(
        "matrix-free",
        P,
        float(lo),
        float(hi),
        counts,
        stderr,
        s_top[order],
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
            top_converged=[bool(c) for c in conv[order]],
            top_residuals=[float(r) for r in res_top[order]],
            step_change=rc.step_change,
            quadrature_bounds=rc.bounds,
            quadrature_bounds_stderr=rc.bounds_stderr,
            alignment=rc.alignment,
            budget_limited=budget_limited,
            **({} if choice is None else {"backend_choice": choice}),
        ),
        profile=profile,
    )


def _open_store(resume_dir, J, key, t_opts, locals_) -> RunStore:
    """The run-state folder of a :func:`spectrum_summary`, claimed for this run: its options,
    key, code version, the operator's shape and dtype, and a fingerprint of the operator
    (``||J v||`` and ``cos(w, J v)`` for fixed random ``v, w``: one product)."""
    from .. import __version__

    store = resume_dir if isinstance(resume_dir, RunStore) else RunStore(resume_dir)
    P = J.shape[1]
    opts = {k: v for k, v in t_opts.items() if k not in ("progress", "checkpoint")}
    store.claim(
        "spectrum_summary",
        dict(
            locals_,
            top_opts=opts,
            key=np.asarray(jax.random.key_data(key)).tolist(),
            shape=list(J.shape),
            dtype=str(J.dtype),
            version=__version__,
        ),
    )
    kv, kw = jax.random.split(jax.random.key(20261201))
    v = jax.random.normal(kv, (P,), J.dtype)
    w = np.asarray(jax.random.normal(kw, (J.shape[0],), J.dtype), np.float64)
    Jv = np.asarray(J.mv(v), np.float64)
    nJv = float(np.linalg.norm(Jv))
    # 2 + cos(w, Jv) lies in [1, 3]: a relative tolerance suits it even when w^T Jv ~ 0
    cos = 2.0 + float(w @ Jv) / max(nJv * float(np.linalg.norm(w)), 1e-300)
    # products in float32 may differ in the last bits between processes or devices
    rtol = 1e3 * float(jnp.finfo(J.dtype).eps)
    store.claim("operator_fingerprint", {"norm_Jv": nJv, "two_plus_cos_w_Jv": cos}, rtol=rtol)
    return store


# A column of a chunked forward product (to_dense) costs about this fraction of a single
# product: measured on the reference model on CPU (14.5 ms in a 64-column block against 27 ms
# alone); an accelerator's block products are cheaper still, so dense is estimated
# conservatively (the choice errs towards matrix-free, which always fits).
_DENSE_COLUMN_DISCOUNT = 0.54


def choose_backend(
    J: AbstractOperator,
    *,
    num_top: int = 10,
    num_deflate: int | None = None,
    num_probes: int | None = None,
    num_steps: int | None = None,
    memory_limit: int | None = None,
    seconds_per_product: float | None = None,
) -> tuple[str, str]:
    r"""``(backend, reason)``: ``"dense"`` when the dense route fits in memory and is expected
    to be cheaper than the matrix-free one, else ``"matrix-free"``; ``reason`` says why, with
    the estimates.

    Memory: the dense ``J`` plus the float64 factorisation (values only), against the memory
    available (or ``memory_limit`` bytes), by :func:`matfree_tj.core.check_fits`. Time: one
    product's time :math:`t_p` (measured with one warm ``J v`` unless ``seconds_per_product``
    is given) prices both routes: dense ``P`` products at ``0.54 t_p`` each (chunked block
    products) plus a full SVD extrapolated as :math:`P^3` from a timed ``200 x 200`` SVD;
    matrix-free ``7 num_deflate + 2 num_probes num_steps`` products (the top-k deflation at
    about seven products per triplet, then the quadrature; ``num_steps`` unknown until
    :math:`\sigma_{k+1}` is measured is taken as ``min(P, 300)``, its value on the reference
    model). Estimates, not promises: they pick the route, the summary reports what was spent.

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> from matfree_tj.analysis import choose_backend
    >>> J = mtj.MatrixOperator(jnp.eye(40))
    >>> choose_backend(J, seconds_per_product=1e-3)[0]
    'dense'
    >>> choose_backend(J, seconds_per_product=1e-3, memory_limit=1000)[0]
    'matrix-free'
    """
    from ..core import MemoryBudgetError, check_fits

    P = int(J.shape[1])
    itemsize = np.dtype(J.dtype).itemsize
    need = P * P * itemsize + 6 * P * P * 8  # J, its float64 copy, LAPACK's copy and workspace
    try:
        check_fits(need, "dense J + SVD", device=jax.devices()[0], limit=memory_limit)
    except MemoryBudgetError as e:
        return "matrix-free", f"dense would not fit in memory ({e})".split(" Use the")[0] + ")"
    if seconds_per_product is None:
        x = jax.numpy.ones((P,), J.dtype)
        jax.block_until_ready(J.mv(x))  # compile (the matrix-free route needs it too)
        t0 = time.perf_counter()
        jax.block_until_ready(J.mv(x))
        seconds_per_product = time.perf_counter() - t0
    t_p = float(seconds_per_product)
    a = np.random.default_rng(0).standard_normal((200, 200))
    t0 = time.perf_counter()
    np.linalg.svd(a, compute_uv=False)
    t_svd = (time.perf_counter() - t0) * (P / 200.0) ** 3
    k = min(150, max(int(num_top), P // 32)) if num_deflate is None else int(num_deflate)
    steps = min(P, 300) if num_steps is None else int(num_steps)
    n_mf = 7 * k + 2 * (10 if num_probes is None else int(num_probes)) * steps
    t_dense = P * _DENSE_COLUMN_DISCOUNT * t_p + t_svd
    t_mf = n_mf * t_p
    est = (
        f"dense ~{t_dense:.3g} s ({P} products at {_DENSE_COLUMN_DISCOUNT} x {t_p * 1e3:.3g} ms "
        f"+ SVD ~{t_svd:.3g} s), matrix-free ~{t_mf:.3g} s (~{n_mf} products), dense fits in "
        f"memory (~{need / 1e9:.2g} GB)"
    )
    if t_dense <= t_mf:
        return "dense", "dense is expected to be cheaper: " + est
    return "matrix-free", "matrix-free is expected to be cheaper: " + est


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


@dataclasses.dataclass(frozen=True)
class SpectrumComparison:
    """Spectrum summaries of several runs, by name (:func:`compare_spectra`).

    Attributes
    ----------
    summaries
        Run name (e.g. ``"original"``, ``"shuffled labels"``) -> its :class:`SpectrumSummary`,
        in the order the runs were given.
    """

    summaries: dict[str, SpectrumSummary]

    @property
    def num_products(self) -> int:
        """Operator products of all the summaries together."""
        return sum(int(sm.num_products) for sm in self.summaries.values())

    def counts(self, region: str) -> dict[str, float]:
        """``{run name: count}`` of one region, e.g. ``counts("bulk")`` for the paper's claim
        that the bulk depends on the inputs and hardly on the labels."""
        if region not in REGIONS:
            raise KeyError(f"region must be one of {REGIONS}, got {region!r}.")
        return {name: sm.counts[region] for name, sm in self.summaries.items()}

    def to_dict(self, include_all_values: bool = False) -> dict:
        """``{run name: SpectrumSummary.to_dict()}``, JSON-ready."""
        return {name: sm.to_dict(include_all_values) for name, sm in self.summaries.items()}


def compare_spectra(
    ops: Mapping[str, AbstractOperator], *, key: jax.Array, backend: str = "matrix-free", **kwargs
) -> SpectrumComparison:
    r""":func:`spectrum_summary` of several runs side by side (experiment 6: data versus labels).

    ``ops`` maps a name (e.g. ``"original"``, ``"shuffled labels"``, ``"noise inputs"``) to the
    training Jacobian of that run; ``kwargs`` go to every :func:`spectrum_summary`.

    Cost: one :func:`spectrum_summary` per entry (total in ``num_products``).

    Examples
    --------
    >>> import jax, matfree_tj as mtj
    >>> from matfree_tj.analysis import compare_spectra
    >>> runs = {}  # longer training moves more directions out of the bulk
    >>> for T in (2, 20):
    ...     lr = mtj.examples.linear_regression(jax.random.key(0), 8, 12, eta=0.5, num_steps=T)
    ...     runs[f"T={T}"] = mtj.training_jacobian(lr.train_fn, lr.params0)
    >>> cmp = compare_spectra(runs, key=jax.random.key(1), backend="dense", num_top=2)
    >>> {name: round(c) for name, c in cmp.counts("bulk").items()}
    {'T=2': 8, 'T=20': 6}
    """
    keys = jax.random.split(key, len(ops))
    return SpectrumComparison(
        {
            name: spectrum_summary(op, key=k, backend=backend, **kwargs)
            for (name, op), k in zip(ops.items(), keys, strict=True)
        }
    )
