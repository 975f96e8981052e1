r"""Stochastic Lanczos quadrature (SLQ) for singular-value densities and region counts.

For a unit probe :math:`q` and a spectral function :math:`f`,
:math:`q^T f(A^T A) q = \sum_j (v_j^T q)^2 f(\sigma_j^2) \approx \sum_{i=1}^m w_i f(\theta_i)`,
the m-point Gauss quadrature whose nodes :math:`\theta_i` and weights :math:`w_i` come from
m Lanczos steps on :math:`A^T A` started at :math:`q`. Averaging over random probes
(Rademacher or Gaussian, normalised: :math:`E[q q^T] = I/P`) gives
:math:`\operatorname{tr} f(A^T A) \approx P \cdot \text{mean}_p \sum_i w_{pi} f(\theta_{pi})`
(Hutchinson). With :math:`f = 1_{[lo^2, hi^2]}` this counts singular values in ``[lo, hi]``;
the standard error comes from the spread over probes.

The Lanczos process on :math:`A^T A` is run as Golub-Kahan bidiagonalisation on :math:`A`
(:func:`matfree_tj.linalg._gkl.gkl_cycle`, full reorthogonalisation): with
:math:`A V = U R`, :math:`A^T U = V R^T + f e_m^T` and :math:`R` upper triangular,
:math:`A^T A V = V R^T R + r_{mm} f e_m^T`, so :math:`T = R^T R` and the nodes are
:math:`\sigma_i = s_i(R)` -- computed from :math:`R` directly, which resolves small singular
values to absolute accuracy :math:`\epsilon\|A\|` rather than :math:`\sqrt{\epsilon}\|A\|`.
The weights are the squared first components of the right singular vectors of :math:`R`.

Probes run ``probe_batch`` at a time under ``vmap`` (their products become block products).

Deflation (``deflate=``): converged top triplets from :func:`~matfree_tj.top_singular` are
counted exactly and the quadrature runs on :math:`A (I - V_c V_c^T)` with probes in the
complement of :math:`V_c`, which removes their share of the variance and shrinks
:math:`\sigma_{max}` (finer resolution for the same number of steps).

References
----------
Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature", SIAM J.
Matrix Anal. Appl. 38 (2017). Golub & Meurant, "Matrices, Moments and Quadrature" (2010).
Chen, Trogdon & Ubaru, "Analysis of stochastic Lanczos quadrature for spectrum approximation",
ICML (2021).
"""

from __future__ import annotations

import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator, Projected, mesh_size, split_rows
from ._checks import check_int, check_key, check_operator, run_guarded
from ._dense import dense_svd
from ._gkl import gkl_cycle
from ._precision import product_error
from ._quadrature import ResolutionWarning, SpectralDensity, probe_stderr, region_spans
from ._results import RegionCounts, RegionStderr
from ._resume import tick

__all__ = ["singular_value_density", "region_counts"]


_HI = jax.lax.Precision.HIGHEST


def _small_svd(R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of a projected bidiagonal-like matrix. LAPACK's divide and conquer (gesdd) can fail
    to converge on the graded matrices of a Krylov space long past its breakdown; the slower
    QR iteration (gesvd) does not, so it is the fallback."""
    try:
        return np.linalg.svd(R)
    except np.linalg.LinAlgError:
        import scipy.linalg

        return scipy.linalg.svd(R, lapack_driver="gesvd")


@eqx.filter_jit
def _slq_batch(op: AbstractOperator, Z, keys, num_steps: int, batch_size: int):
    """For unit probes ``Z`` (rows): projected matrices ``R`` (``(num_probes, m, m)``), the
    probes' coordinates in the left Krylov bases ``U_m z`` (``(num_probes, m)``, for the
    alignment quadrature) and a finite flag per probe."""
    P = op.shape[1]
    m = num_steps
    dtype = op.dtype

    def one(args):
        z, key = args
        Ut = jnp.zeros((m, op.shape[0]), dtype)
        Vt = jnp.zeros((m + 1, P), dtype).at[0].set(z)
        R = jnp.zeros((m, m), dtype)
        Ut, _, R, _, finite, _ = gkl_cycle(op, Ut, Vt, R, 0, key, False)
        return R, jnp.matmul(Ut, z, precision=_HI), finite

    return jax.lax.map(one, (Z, keys), batch_size=batch_size)


@eqx.filter_jit
def _slq_split(op: AbstractOperator, Z, keys, num_steps: int, batch_size: int):
    """:func:`_slq_batch` with the probes split across ``op.mesh`` (every process of a
    ``jax.distributed`` run takes its share); the results come back replicated."""
    return split_rows(
        lambda Zl, kl: _slq_batch(op, Zl, kl, num_steps, min(batch_size, Zl.shape[0])),
        op.mesh,
        Z,
        keys,
    )


def _run_probes(op: AbstractOperator, Z, keys, num_steps: int, batch_size: int):
    """The probes' Lanczos runs, split across the operator's mesh when it has more than one
    device along its first axis."""
    kernel = _slq_split if mesh_size(op.mesh) > 1 else _slq_batch
    return run_guarded(kernel, op, Z, keys, num_steps, batch_size)


def _slq_chunks(op, Z, keys, num_steps, chunk, stage, progress):
    """:func:`_slq_batch` on ``chunk`` probes at a time, each finished chunk saved to ``stage``
    (part ``probes-<first>``) and a saved one loaded instead of recomputed."""
    n = Z.shape[0]
    parts, todo = [], 0
    for i in range(0, n, chunk):
        saved = stage.load(f"probes-{i:05d}")
        if saved is None:
            j = min(i + chunk, n)
            out = _run_probes(op, Z[i:j], keys[i:j], num_steps, j - i)
            out = tuple(np.asarray(x) for x in out)
            stage.save(f"probes-{i:05d}", dict(zip(("R", "Uz", "finite"), out, strict=True)))
            todo += 1
        else:
            out = (saved["R"], saved["Uz"], saved["finite"])
        parts.append(out)
        done = min(i + chunk, n)
        tick(progress, "SLQ", 2 * num_steps * done, 2 * num_steps * n, "products")
        if progress is not None and saved is None:
            progress(f"SLQ: {done}/{n} probes ({2 * num_steps * done} products)")
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))


def _probes(key, num_probes, P, dtype, kind):
    if kind == "rademacher":
        Z = jax.random.rademacher(key, (num_probes, P), dtype)
    elif kind == "gaussian":
        Z = jax.random.normal(key, (num_probes, P), dtype)
    else:
        raise ValueError(f"probes must be 'rademacher' or 'gaussian', got {kind!r}.")
    return Z / jnp.linalg.norm(Z, axis=1, keepdims=True)


def singular_value_density(
    op: AbstractOperator,
    *,
    key: jax.Array | None = None,
    num_probes: int = 20,
    num_steps: int | None = None,
    probes: str = "rademacher",
    probe_batch: int | None = None,
    deflate: Any = None,
    checkpoint: Any = None,
    progress: Any = None,
) -> SpectralDensity:
    r"""Estimate the distribution of the singular values of a square ``op`` by SLQ.

    Parameters
    ----------
    op
        Square operator ``P x P``.
    key
        PRNG key for the probes (required).
    num_probes
        Number of random probes ``n_p`` (>= 2 for a standard error); the standard error of a
        count falls like :math:`1/\sqrt{n_p}`.
    num_steps
        Lanczos steps ``m`` per probe, ``2 <= m <= P`` (default ``min(80, P)``: at ``P`` steps
        the Krylov space is complete and the quadrature exact): the quadrature has ``m`` nodes and
        resolves features of width about :math:`\pi \sigma_{max} / (2m)` (see
        :attr:`SpectralDensity.resolution`; narrower counts warn).
    probes
        ``"rademacher"`` (default; lower variance) or ``"gaussian"``. Probes are normalised,
        so per-probe counts sum to ``P`` exactly.
    probe_batch
        Probes run together under ``vmap`` (default: as many as fit in ~256 MB of bases;
        1 with a ``checkpoint``). With a device mesh on the operator (``mesh=``, e.g.
        :func:`matfree_tj.global_mesh` after ``jax.distributed.initialize``) the probes are split
        across its first axis, each device running its share ``probe_batch`` at a time; the
        results are the same.
    deflate
        Optional :class:`~matfree_tj.SingularTriplets` (e.g. from :func:`top_singular`): its
        *converged* triplets are counted exactly and removed before the quadrature, which
        runs on :math:`A (I - V_c V_c^T)` with probes in the complement of :math:`V_c`. The
        counts' variance then comes from the remaining ``P - c`` values only and the
        resolution check uses the deflated :math:`\sigma_{max}`.
    checkpoint
        Optional :class:`~matfree_tj.linalg.RunStore`: the probes then run in chunks of
        ``probe_batch`` (default 1), each chunk's projected matrices saved atomically when it
        completes; a run given a store with saved chunks skips them. The probes are drawn from
        ``key`` up front, so the numbers equal those of an uninterrupted run with the store
        (identical), and a kill loses at most the chunk that was running. Cost of chunk 1:
        the probes' products are no longer batched into block products (on CPU a batch of
        many probes costs less per probe), plus ``m^2 + m`` numbers written per probe; a
        larger ``probe_batch`` buys back the batching at the price of more repeated work
        after a kill. (Without a store the probes run in one batched call; its numbers agree
        with the chunked ones to rounding, not bit for bit.)
    progress
        Optional callable receiving one line per completed chunk (with a ``checkpoint``);
        an object with ``update(label, done, total, unit)`` also gets the counts.

    Returns
    -------
    SpectralDensity
        ``nodes`` and ``weights`` (``(n_p, m)``), ``count(lo, hi) -> (estimate, stderr)``,
        ``density(grid)``, ``num_products``.

    A bfloat16 or float16 operator runs in float32 (its products cast in and out); its nodes
    are then accurate only to about :math:`\sqrt 2 \epsilon_p \|A\|` (``eps_p`` its machine
    epsilon), which :func:`region_counts` adds to its guaranteed ranges.

    Cost: ``2 m n_p`` products (one ``mv`` and one ``rmv`` per step); ``O(P m^2 n_p)`` flops
    of reorthogonalisation; memory ``(2m + 1) P`` per probe in a batch.

    References
    ----------
    Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 38 (2017).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, matfree_tj as mtj
    >>> A = jnp.diag(jnp.concatenate([jnp.full(50, 0.5), jnp.full(50, 2.0)]))
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)
    >>> d = mtj.singular_value_density(op, key=jax.random.key(0), num_probes=4, num_steps=10)
    >>> round(d.count(0.0, 1.0)[0])
    50
    """
    op = check_operator(op, "singular_value_density", square=True)
    key = check_key(key, "singular_value_density")
    P = op.shape[0]
    if P < 2:
        raise ValueError(f"singular_value_density needs P >= 2, got shape {op.shape}.")
    num_probes = check_int("num_probes", num_probes, 1, 10**6)
    if num_steps is None:  # adapt to small P rather than fail on an argument never passed
        num_steps = min(80, P)
    num_steps = check_int("num_steps", num_steps, 2, P, "P")
    if probe_batch is None and checkpoint is not None:
        probe_batch = 1  # a kill repeats at most one probe
    if probe_batch is None:
        per_probe = (2 * num_steps + 1) * P * jnp.dtype(op.dtype).itemsize
        probe_batch = max(1, min(num_probes, int(2**28 // per_probe)))
    probe_batch = check_int("probe_batch", probe_batch, 1, num_probes, "num_probes")
    Z = _probes(key, num_probes, P, op.dtype, probes)
    deflated = np.zeros(0)
    deflated_cos = np.zeros(0)
    if deflate is not None:
        if not all(hasattr(deflate, a) for a in ("V", "s", "converged")):
            raise TypeError("deflate must be a SingularTriplets (from top_singular).")
        conv = np.asarray(deflate.converged, dtype=bool)
        if deflate.V.shape[0] != P:
            raise ValueError(f"deflate.V has {deflate.V.shape[0]} rows, expected P = {P}.")
        if conv.sum() >= P:
            raise ValueError("Cannot deflate every singular value.")
        if conv.any():
            Vc = jnp.asarray(np.asarray(deflate.V)[:, conv], op.dtype)
            deflated = np.asarray(deflate.s, dtype=np.float64)[conv]
            U_c = np.asarray(deflate.U, dtype=np.float64)[:, conv]
            V_c = np.asarray(Vc, dtype=np.float64)
            deflated_cos = np.sum(U_c * V_c, axis=0) / (
                np.linalg.norm(U_c, axis=0) * np.linalg.norm(V_c, axis=0)
            )
            op = Projected(op, None, Vc)
            for _ in range(2):  # probes in the complement of span(Vc)
                Z = Z - jnp.matmul(jnp.matmul(Z, Vc, precision=_HI), Vc.T, precision=_HI)
            Z = Z / jnp.linalg.norm(Z, axis=1, keepdims=True)
    keys = jnp.arange(num_probes, dtype=op.dtype)  # seeds of unused breakdown directions
    if checkpoint is None:
        R, Uz, finite = _run_probes(op, Z, keys, num_steps, probe_batch)
    else:
        stage = checkpoint.stage(
            "slq", shape=op.shape, dtype=str(op.dtype), num_probes=num_probes,
            num_steps=num_steps, probes=probes, probe_batch=probe_batch, deflated=len(deflated),
        )  # fmt: skip
        R, Uz, finite = _slq_chunks(op, Z, keys, num_steps, probe_batch, stage, progress)
    if not bool(jnp.all(finite)):
        raise FloatingPointError(
            "singular_value_density: a Lanczos step produced NaN or inf (non-finite products)."
        )
    R = np.asarray(R, dtype=np.float64)
    Uz = np.asarray(Uz, dtype=np.float64)

    def quadrature(m: int, half=None) -> SpectralDensity:
        # the first m steps' projected matrix is the leading m x m block (nested Krylov spaces)
        nodes = np.empty((num_probes, m))
        weights = np.empty((num_probes, m))
        cross = np.empty((num_probes, m))
        for p in range(num_probes):
            X, S, Yt = _small_svd(R[p, :m, :m])
            nodes[p] = S[::-1]
            y1 = Yt[::-1, 0]  # first components of the right singular vectors of R
            weights[p] = y1**2
            # z^T (U_m x_j) (V_m y_j)^T z: the probe's weight on the pair of Ritz vectors
            cross[p] = (Uz[p, :m] @ X)[::-1] * y1
        total = weights.sum(axis=1, keepdims=True)  # one in theory; remove rounding drift
        return SpectralDensity(
            nodes=nodes,
            weights=weights / total,
            dim=P,
            num_products=2 * m * num_probes,
            num_steps=m,
            num_probes=num_probes,
            sigma_max=float(nodes.max()),
            probes=probes,
            deflated=deflated,
            half=half,
            cross_weights=cross / total,
            deflated_cos=deflated_cos,
        )

    half = quadrature(num_steps // 2) if num_steps >= 4 else None
    return quadrature(num_steps, half)


def region_counts(
    op: AbstractOperator,
    *,
    key: jax.Array | None = None,
    lo: float = 0.9,
    hi: float = 1.1,
    method: str = "slq",
    num_probes: int = 20,
    num_steps: int | None = None,
    **opts: Any,
) -> RegionCounts:
    r"""Count singular values in the chaotic, bulk and stable regions (Belrose & Scherlis 2024).

    chaotic: :math:`\sigma > hi`; bulk: :math:`lo \le \sigma \le hi`; stable: :math:`\sigma < lo`.

    ``method="slq"``: stochastic Lanczos quadrature (:func:`singular_value_density`), per-probe
    counts summing to ``P``, standard errors from the spread over probes (a
    :class:`~matfree_tj.ResolutionWarning` when ``hi - lo`` is below the quadrature
    resolution). ``method="dense"``: exact counts from :func:`matfree_tj.dense_svd` (``P``
    products and an ``O(P^3)`` SVD; ``key`` may be omitted), standard errors zero.

    Parameters
    ----------
    op
        Square operator ``P x P``.
    key
        PRNG key (required for ``"slq"``).
    lo, hi
        Region boundaries, ``0 <= lo <= hi``.
    method
        ``"slq"`` or ``"dense"``.
    num_probes, num_steps, **opts
        Passed to :func:`singular_value_density` (``probes``, ``probe_batch``,
        ``checkpoint``, ``progress``); ``num_steps``
        defaults to ``min(80, P)``.

    Returns
    -------
    RegionCounts
        ``chaotic``, ``bulk``, ``stable``, ``stderr`` (``.bulk`` or ``["bulk"]``),
        ``num_products``, ``method``, ``step_change`` (change of each count from
        ``num_steps // 2`` to ``num_steps`` steps: the quadrature's convergence), ``bounds``
        (guaranteed range of each count's probe average given the quadrature: its bias
        cannot exceed them), ``interval(name)`` (bounds widened by a 95% Student-t multiple
        of the stderr), ``alignment`` (mean ``cos(u_i, v_i)`` per region with its stderr,
        from the same quadrature; dense: ``None``), ``to_dict()``.

    Products narrower than float32 (a bfloat16 operator, or one holding bfloat16 data): the
    nodes are those of an operator within about :math:`\delta = \sqrt 2 \epsilon_p \|A\|`
    of ``A``, so by Weyl's inequality ``bounds`` take their lower end on ``[lo + delta,
    hi - delta]`` and their upper end on ``[lo - delta, hi + delta]``; a bulk narrower than
    ``2 delta`` warns (:class:`~matfree_tj.ResolutionWarning`) and its range reaches zero.

    Cost (slq): ``2 num_steps num_probes`` products.

    References
    ----------
    Ubaru, Chen & Saad (2017); Belrose & Scherlis, arXiv:2412.07003 (2024).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, matfree_tj as mtj
    >>> A = jnp.diag(jnp.array([0.1] * 10 + [1.0] * 80 + [3.0] * 10))
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)
    >>> mtj.region_counts(op, method="dense").to_dict()["bulk"]
    80.0
    """
    op = check_operator(op, "region_counts", square=True)
    lo, hi = float(lo), float(hi)
    if not (0 <= lo <= hi and np.isfinite(hi)):
        raise ValueError(f"Expected 0 <= lo <= hi < inf, got lo={lo}, hi={hi}.")
    P = op.shape[0]
    if method == "dense":
        if opts:
            raise TypeError(f"region_counts(method='dense') got unknown options {sorted(opts)}.")
        s = dense_svd(op).s
        c = RegionCounts(
            chaotic=float(np.sum(s > hi)),
            bulk=float(np.sum((s >= lo) & (s <= hi))),
            stable=float(np.sum(s < lo)),
            stderr=RegionStderr(0.0, 0.0, 0.0),
            num_products=P,
            method="dense",
            lo=lo,
            hi=hi,
            dim=P,
        )
        return c
    if method != "slq":
        raise ValueError(f"method must be 'slq' or 'dense', got {method!r}.")
    if P < 2:
        raise ValueError(
            f"region_counts(method='slq') needs P >= 2 (use method='dense'), got P={P}."
        )
    dens = singular_value_density(op, key=key, num_probes=num_probes, num_steps=num_steps, **opts)
    dens._check_resolution(lo, hi)
    regions = region_spans(lo, hi)

    def per_probe(d):
        return tuple(d.per_probe_counts(a, b, closed=c) for _, a, b, c in regions)

    chaotic, bulk, stable = per_probe(dens)
    step_change = None
    if dens.half is not None:
        halves = per_probe(dens.half)
        step_change = {
            name: float(np.mean(full) - np.mean(h))
            for name, full, h in zip(
                ("chaotic", "bulk", "stable"), (chaotic, bulk, stable), halves, strict=True
            )
        }
    # Narrow (bfloat16) products: the nodes are those of an operator within about
    # delta = sqrt(2) eps_p ||A|| of A (each product rounded on its way in and out), and by
    # Weyl's inequality every singular value moves by at most that much; so the guaranteed
    # range of a count takes its lower end on the interval shrunk by delta and its upper end
    # on the interval grown by delta. Products in the working precision: delta = 0.
    delta = product_error(op, dens.sigma_max)
    if delta > 0 and hi - lo <= 2 * delta:
        warnings.warn(
            f"The operator's products are computed in a narrow precision (rounding "
            f"~{delta:.3g} on the singular values): the bulk [{lo:.4g}, {hi:.4g}] is not "
            "resolved, and its range says so. Compute the products in float32 or wider.",
            ResolutionWarning,
            stacklevel=2,
        )
    bounds, bounds_stderr, alignment = {}, {}, {}
    for name, a, b, c in regions:
        lower, upper = dens.per_probe_bounds(a, b, closed=c)
        if delta > 0:
            lower = dens.per_probe_bounds(a + delta, b - delta, closed=c)[0]
            upper = dens.per_probe_bounds(a - delta, b + delta, closed=c)[1]
        bounds[name] = (float(np.mean(lower)), float(np.mean(upper)))
        bounds_stderr[name] = (probe_stderr(lower), probe_stderr(upper))
        alignment[name] = dens.alignment(a, b, closed=c)

    return RegionCounts(
        chaotic=float(np.mean(chaotic)),
        bulk=float(np.mean(bulk)),
        stable=float(np.mean(stable)),
        stderr=RegionStderr(probe_stderr(chaotic), probe_stderr(bulk), probe_stderr(stable)),
        num_products=dens.num_products,
        method="slq",
        lo=lo,
        hi=hi,
        dim=P,
        num_probes=dens.num_probes,
        num_steps=dens.num_steps,
        step_change=step_change,
        bounds=bounds,
        alignment=alignment,
        bounds_stderr=bounds_stderr,
        density=dens,
    )
