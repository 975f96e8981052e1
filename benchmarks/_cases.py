"""Measured cases shared by the benchmarks; each runs in a fresh process via ``run_isolated``.

A *model* is a small JSON-able dict:

* ``{"kind": "mlp", "hidden": 64, "depth": 1, "num_epochs": 25, "seed": 0}``: the digits MLP
  (``hidden=64, depth=1, num_epochs=25`` is the reference configuration, P = 4810, T = 625);
* ``{"kind": "linear", "n": 400, "P": 5000, "eta": 1.0, "num_steps": 20, "x64": True,
  "chaotic": 10}``: full-batch GD on least squares, whose singular values are known in closed
  form (REFERENCE.md section 2): ``chaotic`` eigenvalues are put above ``2/eta``.

Every case reports the time of one training run (``t_train_s``) so costs can be given in units
of training runs, and the peak RSS of its measured part above the RSS after setup.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from benchmarks import _common as C

# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


def _linear_eigenvalues(n: int, eta: float, chaotic: int, num_steps: int, seed: int) -> np.ndarray:
    """Eigenvalues of Sigma with a known, paper-like spectrum of J = (I - eta Sigma)^T.

    ``chaotic`` values with eta*lambda slightly above 2, so that |1 - eta lambda|^T spans
    [2, 20]; the other ``n - chaotic`` log-spaced in eta*lambda in [1e-4, 1.9]: a bulk near 1
    (small eta*lambda*T), stable values down to 0.9^T and below. The P - n directions outside
    the data span give singular values exactly 1.
    """
    targets = np.logspace(np.log10(2.0), np.log10(20.0), chaotic)[::-1]
    hot = (2.0 + (targets ** (1.0 / num_steps) - 1.0)) / eta
    lam = np.logspace(-4, np.log10(1.9), n - chaotic) / eta
    return np.concatenate([hot, lam])


def build(model: dict):
    """Return ``(train_fn, params0, info)``; ``info`` has P, T and the exact spectrum if known."""
    import jax

    if model.get("x64"):
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import matfree_tj as mtj

    if model["kind"] == "mlp":
        ref = mtj.examples.digits_mlp(
            hidden=model.get("hidden", 64),
            seed=model.get("seed", 0),
            depth=model.get("depth", 1),
            num_epochs=model.get("num_epochs", 25),
            dtype=jnp.float64 if model.get("x64") else jnp.float32,
        )
        return (
            ref.train_fn,
            ref.params0,
            {"P": ref.num_params, "T": ref.config["num_steps"], "truth": None},
        )
    if model["kind"] == "linear":
        n, P, eta = int(model["n"]), int(model["P"]), float(model.get("eta", 1.0))
        T = int(model.get("num_steps", 20))
        lam = _linear_eigenvalues(n, eta, int(model.get("chaotic", 10)), T, model.get("seed", 0))
        lr = mtj.examples.linear_regression(
            jax.random.key(model.get("seed", 0)), n, P, eta=eta, num_steps=T, eigenvalues=lam
        )
        return (
            lr.train_fn,
            lr.params0,
            {"P": P, "T": lr.num_steps, "truth": np.asarray(lr.singular_values)},
        )
    raise ValueError(f"unknown model kind {model['kind']!r}")


def _train_time(train_fn, params0, repeat: int = 5) -> float:
    import jax

    f = jax.jit(lambda p: train_fn(p))
    return C.time_call(f, params0, repeat=repeat)["median_s"]


def _setup(model: dict, checkpoint: str = "none", **jac_opts):
    import matfree_tj as mtj

    train_fn, params0, info = build(model)
    t_train = _train_time(train_fn, params0)
    with C.Stopwatch() as sw:
        J = mtj.training_jacobian(
            train_fn, params0, checkpoint=checkpoint, check_deterministic=False, **jac_opts
        )
    cached = getattr(J, "cached", None)
    return (
        J,
        {
            "P": info["P"],
            "T": info["T"],
            "t_train_s": t_train,
            "construct_s": sw.seconds,
            "model": model,
            "jacobian_options": dict(checkpoint=checkpoint, **jac_opts),
            "cached": dict(cached) if isinstance(cached, dict) else cached,
        },
        info["truth"],
    )


def _regions_from_values(s: np.ndarray, lo: float = 0.9, hi: float = 1.1) -> dict:
    s = np.asarray(s)
    return {
        "chaotic": int(np.sum(s > hi)),
        "bulk": int(np.sum((s >= lo) & (s <= hi))),
        "stable": int(np.sum(s < lo)),
    }


def _triplets(res) -> dict:
    return {
        "s": np.asarray(res.s, dtype=np.float64),
        "residuals": np.asarray(res.residuals),
        "converged": np.asarray(res.converged),
        "num_products": int(res.num_products),
        "solver_status": str(res.status),
        "num_restarts": int(getattr(res, "num_restarts", 0)),
    }


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------


def truth(model: dict, top: int = 200) -> dict:
    """The exact spectrum of a closed-form model (no products): top values and region counts."""
    _, _, info = build(model)
    s = info["truth"]
    return {
        "P": info["P"],
        "s_top": s[:top],
        "s_bottom": s[::-1][:top],
        "regions": _regions_from_values(s),
        "s_all": s if s.size <= 50_000 else None,
    }


def dense(model: dict, vectors: bool = False, keep_values: bool = True) -> dict:
    """Dense J by chunked forward mode (``J.to_dense()``) then the LAPACK SVD (``dense_svd``)."""
    import matfree_tj as mtj

    J, out, _ = _setup(model)
    with C.PeakMemory() as pm:
        with C.Stopwatch() as sw:
            A = C.block(J.to_dense())
        out["to_dense_s"] = sw.seconds
        with C.Stopwatch() as sw:
            svd = mtj.dense_svd(A)
        out["svd_values_s"] = sw.seconds
        if vectors:
            with C.Stopwatch() as sw:
                mtj.dense_svd(A, compute_vectors=True)
            out["svd_vectors_s"] = sw.seconds
    out.update(pm.as_dict())
    out["total_s"] = out["to_dense_s"] + out["svd_values_s"]
    s = np.asarray(svd.s)
    out["regions"] = _regions_from_values(s)
    out["s_top"] = s[:200]
    out["s_bottom"] = s[::-1][:200]
    if keep_values:
        out["s_all"] = s
    out["num_products"] = out["P"]
    return out


def jacfwd_paper(model: dict) -> dict:
    """The paper's way: one ``jax.jacfwd`` of the whole training run (one giant vmap), then SVD."""
    import jax
    from jax.flatten_util import ravel_pytree

    import matfree_tj as mtj

    train_fn, params0, info = build(model)
    theta0, unravel = ravel_pytree(params0)
    f = jax.jit(jax.jacfwd(lambda th: ravel_pytree(train_fn(unravel(th)))[0]))
    out = {"P": info["P"], "T": info["T"], "t_train_s": _train_time(train_fn, params0)}
    with C.PeakMemory() as pm:
        with C.Stopwatch() as sw:
            A = C.block(f(theta0))
        out["jacfwd_s"] = sw.seconds
        with C.Stopwatch() as sw:
            s = mtj.dense_svd(A).s
        out["svd_values_s"] = sw.seconds
    out.update(pm.as_dict())
    out["total_s"] = out["jacfwd_s"] + out["svd_values_s"]
    out["s_top"] = np.asarray(s)[:200]
    out["regions"] = _regions_from_values(s)
    return out


def topk(
    model: dict,
    k: int,
    method: str = "lanczos",
    opts: dict | None = None,
    warm: bool = False,
    seed: int = 0,
    keep_vectors_check: bool = False,
) -> dict:
    """``mtj.top_singular`` (cold: includes compilation; optionally a second, warm call)."""
    import jax

    import matfree_tj as mtj

    opts = dict(opts or {})
    J, out, truth_s = _setup(model)
    out.update({"k": k, "method": method, "opts": dict(opts)})
    lines: list = []
    if opts.get("block_size") == "auto":  # record the block size auto chooses, and why
        opts["progress"] = lines.append
    with C.PeakMemory() as pm:
        with C.Stopwatch() as sw:
            res = mtj.top_singular(J, k, key=jax.random.key(seed), method=method, **opts)
            C.block(res.s)
        out["cold_s"] = sw.seconds
    out.update(pm.as_dict())
    out["auto_choice"] = next((ln for ln in lines if "block_size='auto'" in ln), None)
    if warm:
        with C.Stopwatch() as sw:
            res = mtj.top_singular(J, k, key=jax.random.key(seed), method=method, **opts)
            C.block(res.s)
        out["warm_s"] = sw.seconds
    out.update(_triplets(res))
    t = out.get("warm_s", out["cold_s"])
    out["time_per_product_s"] = t / max(1, out["num_products"])
    if truth_s is not None:
        out["s_true"] = truth_s[:k]
    return out


def bottomk(model: dict, k: int, opts: dict | None = None, seed: int = 0) -> dict:
    import jax

    import matfree_tj as mtj

    opts = dict(opts or {})
    J, out, truth_s = _setup(model)
    out.update({"k": k, "opts": opts})
    with C.PeakMemory() as pm:
        with C.Stopwatch() as sw:
            res = mtj.bottom_singular(J, k, key=jax.random.key(seed), **opts)
            C.block(res.s)
        out["cold_s"] = sw.seconds
    out.update(pm.as_dict())
    out.update(_triplets(res))
    if truth_s is not None:
        out["s_true"] = truth_s[::-1][:k]
    return out


def regions(
    model: dict,
    num_probes: int = 10,
    num_steps: int = 80,
    seeds=(0,),
    lo: float = 0.9,
    hi: float = 1.1,
    opts: dict | None = None,
    warm: bool = False,
) -> dict:
    """``mtj.region_counts(method="slq")`` for one or more probe seeds (first call cold)."""
    import jax

    import matfree_tj as mtj

    opts = dict(opts or {})
    J, out, truth_s = _setup(model)
    out.update({"num_probes": num_probes, "num_steps": num_steps, "lo": lo, "hi": hi, "opts": opts})
    runs = []
    with C.PeakMemory() as pm:
        for i, seed in enumerate(seeds):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                with C.Stopwatch() as sw:
                    rc = mtj.region_counts(
                        J,
                        key=jax.random.key(seed),
                        lo=lo,
                        hi=hi,
                        method="slq",
                        num_probes=num_probes,
                        num_steps=num_steps,
                        **opts,
                    )
            d = rc.to_dict()
            d["seconds"] = sw.seconds
            d["seed"] = seed
            d["warnings"] = [str(x.message)[:300] for x in w]
            runs.append(d)
            if i == 0:
                out["cold_s"] = sw.seconds
    out.update(pm.as_dict())
    if warm:
        with C.Stopwatch() as sw:
            mtj.region_counts(
                J,
                key=jax.random.key(seeds[0]),
                lo=lo,
                hi=hi,
                method="slq",
                num_probes=num_probes,
                num_steps=num_steps,
                **opts,
            )
        out["warm_s"] = sw.seconds
    out["runs"] = runs
    out["num_products"] = runs[0]["num_products"]
    t = out.get("warm_s", out["cold_s"])
    out["time_per_product_s"] = t / max(1, out["num_products"])
    if truth_s is not None:
        out["truth_regions"] = _regions_from_values(truth_s, lo, hi)
    return out


def spectrum(
    model: dict,
    num_probes: int | None = None,
    num_steps: int | None = None,
    num_deflate: int | None = None,
    seed: int = 0,
) -> dict:
    """``analysis.spectrum_summary`` (the library's default counts: top triplets deflated from
    SLQ, steps from the largest remaining value), cold; in the ``regions`` output format."""
    import jax

    from matfree_tj import analysis

    J, out, truth_s = _setup(model)
    lines: list[str] = []
    with C.PeakMemory() as pm:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with C.Stopwatch() as sw:
                summ = analysis.spectrum_summary(
                    J,
                    key=jax.random.key(seed),
                    num_probes=num_probes,
                    num_steps=num_steps,
                    num_deflate=num_deflate,
                    progress=lines.append,
                )
    out.update(pm.as_dict())
    st = summ.settings or {}
    run = {
        **summ.counts,
        "stderr": summ.stderr,
        "seconds": sw.seconds,
        "seed": seed,
        "warnings": [str(x.message)[:300] for x in w],
        "bounds": st.get("quadrature_bounds"),
        "step_change": st.get("step_change"),
        "num_deflated": st.get("num_deflated"),
        "num_steps": st.get("num_steps"),
    }
    out.update(
        {
            "runs": [run],
            "cold_s": sw.seconds,
            "num_products": int(summ.num_products),
            "num_probes": num_probes or 10,
            "num_steps": num_steps or "auto",
            "num_deflate": num_deflate if num_deflate is not None else "default",
            "progress": lines,
        }
    )
    out["time_per_product_s"] = sw.seconds / max(1, out["num_products"])
    if truth_s is not None:
        out["truth_regions"] = _regions_from_values(truth_s)
    return out


def svds(
    model: dict,
    k: int,
    solver: str = "arpack",
    tol: float = 1e-6,
    maxiter: int | None = None,
    seed: int = 0,
) -> dict:
    """scipy's ``svds`` on ``J.to_scipy()`` (ARPACK or PROPACK), counting operator products."""
    import scipy.sparse.linalg as spla

    J, out, truth_s = _setup(model)
    A = J.to_scipy()
    count = {"mv": 0, "rmv": 0}

    def mv(x):
        x = np.asarray(x)
        count["mv"] += 1 if x.ndim == 1 else x.shape[1]
        return A.matvec(x) if x.ndim == 1 else A.matmat(x)

    def rmv(x):
        x = np.asarray(x)
        count["rmv"] += 1 if x.ndim == 1 else x.shape[1]
        return A.rmatvec(x) if x.ndim == 1 else A.rmatmat(x)

    B = spla.LinearOperator(
        A.shape,
        matvec=mv,
        rmatvec=rmv,
        matmat=lambda X: mv(X),
        rmatmat=lambda X: rmv(X),
        dtype=np.float64,
    )
    # warm the jitted products so the timing is of the solve, not of compilation
    v = np.random.default_rng(seed).standard_normal(A.shape[1])
    A.matvec(v), A.rmatvec(v)
    out.update({"k": k, "solver": solver, "tol": tol, "maxiter": maxiter})
    rng = np.random.default_rng(seed)
    with C.PeakMemory() as pm:
        with C.Stopwatch() as sw:
            try:
                s = spla.svds(
                    B,
                    k=k,
                    tol=tol,
                    maxiter=maxiter,
                    solver=solver,
                    return_singular_vectors=False,
                    rng=rng,
                )
                out["status"] = "ok"
            except spla.ArpackNoConvergence as e:
                s = np.asarray(getattr(e, "eigenvalues", []))
                s = np.sqrt(np.abs(s)) if s.size else s
                out["status"] = "ok"
                out["svds_status"] = f"no convergence: {str(e)[:200]}"
        out["cold_s"] = sw.seconds
    out.update(pm.as_dict())
    out["s"] = np.sort(np.asarray(s))[::-1]
    out["num_products"] = count["mv"] + count["rmv"]
    out["products"] = count
    out["time_per_product_s"] = out["cold_s"] / max(1, out["num_products"])
    if truth_s is not None:
        out["s_true"] = truth_s[:k]
    return out


def product_costs(model: dict, cols: int = 64, checkpoint: str = "none") -> dict:
    """Time of one training run, one mv / rmv, and a ``cols``-column matmat / rmatmat."""
    import jax

    J, out, _ = _setup(model, checkpoint=checkpoint)
    P = J.shape[0]
    v = jax.random.normal(jax.random.key(0), (P,), J.dtype)
    V = jax.random.normal(jax.random.key(1), (P, cols), J.dtype)
    mm = jax.jit(lambda X: J.matmat(X))
    rmm = jax.jit(lambda X: J.rmatmat(X))
    for name, f, x, reps in (
        ("mv", J.mv, v, 2),
        ("rmv", J.rmv, v, 2),
        ("matmat", mm, V, 1),
        ("rmatmat", rmm, V, 1),
    ):
        t = C.time_call(f, x, repeat=reps, max_seconds=30)
        out[f"{name}_s"] = t["median_s"]
        out[f"{name}_cold_s"] = t["cold_s"]
    out["cols"] = cols
    return out


UNCACHED = {"forward": "jvp", "cache_reverse": False}


def _cache_bytes(make, x) -> int:
    import jax

    shapes = jax.eval_shape(make, x)
    return int(sum(v.size * v.dtype.itemsize for v in jax.tree_util.tree_leaves(shapes)))


def reverse_memory(
    model: dict, checkpoints=("none", "step", "sqrt"), time_it: bool = True, repeat: int = 2
) -> dict:
    """Per checkpoint option: compiled memory and time of one *uncached* reverse product (the
    primal re-run inside it), and the bytes a cached pullback would hold; same for forward."""
    import jax
    from jax.flatten_util import ravel_pytree

    import matfree_tj as mtj

    J, out, _ = _setup(model, **UNCACHED)
    P = J.shape[0]
    u = jax.random.normal(jax.random.key(0), (P,), J.dtype)
    out["jvp_memory"] = C.compiled_memory(functools.partial(J.apply, "mv"), u)
    if time_it:
        out["jvp_s"] = C.time_call(J.mv, u, repeat=repeat, max_seconds=30)["median_s"]
    train_fn, params0, _ = build(model)
    theta0, unravel = ravel_pytree(params0)

    def flat(fn):
        return lambda th: ravel_pytree(fn(unravel(th)))[0]

    out["linearize_cache_bytes"] = _cache_bytes(
        lambda th: jax.linearize(flat(train_fn), th)[1], theta0
    )
    for ck in checkpoints:
        Jc = mtj.training_jacobian(
            train_fn, params0, checkpoint=ck, check_deterministic=False, **UNCACHED
        )
        out[f"vjp_memory[{ck}]"] = C.compiled_memory(functools.partial(Jc.apply, "rmv"), u)
        fn = train_fn if ck == "none" else train_fn.with_checkpoint(ck)
        out[f"pullback_cache_bytes[{ck}]"] = _cache_bytes(
            lambda th, fn=fn: jax.vjp(flat(fn), th)[1], theta0
        )
        if time_it:
            t = C.time_call(Jc.rmv, u, repeat=repeat, max_seconds=30)
            out[f"vjp_s[{ck}]"] = t["median_s"]
            out[f"vjp_cold_s[{ck}]"] = t["cold_s"]
    return out


def product_rss(
    model: dict, kind: str = "vjp", checkpoint: str = "none", cols: int = 64, cached: bool = False
) -> dict:
    """Peak RSS of one product in a fresh process: compiled first, peak counter reset, then run.

    ``cached=False`` (default) measures the product that re-runs the primal inside it (its
    residuals live only during the product); ``True`` the library default (``"auto"``: cached
    linearisation / pullback held since construction, so not part of this peak).
    """
    import jax

    J, out, _ = _setup(model, checkpoint=checkpoint, **({} if cached else UNCACHED))
    P = J.shape[0]
    shape = (P,) if kind in ("jvp", "vjp") else (P, cols)
    x = jax.random.normal(jax.random.key(1), shape, J.dtype)
    f = {
        "jvp": functools.partial(J.apply, "mv"),
        "vjp": functools.partial(J.apply, "rmv"),
        "matmat": lambda X: J.matmat(X),
        "rmatmat": lambda X: J.rmatmat(X),
    }[kind]
    compiled = jax.jit(f).lower(x).compile()
    with C.PeakMemory() as pm:
        C.block(compiled(x))
    out.update({"kind": kind, "checkpoint": checkpoint, **pm.as_dict()})
    return out


def scan_all(model: dict, k: int, lanczos: dict, randomized: dict, slq: dict, cols: int) -> dict:
    """Product costs and the three matrix-free methods in one process (quick mode: less start-up).

    Peak RSS per method is still measured from a reset counter (large buffers are mmapped and
    returned to the kernel on free, see ``run_isolated``), but compiled code and caches of the
    earlier methods stay resident, so isolated cases are the cleaner measurement.
    """
    out = {"costs": product_costs(model, cols=cols)}
    for name, fn, kw in (
        ("lanczos", topk, dict(k=k, method="lanczos", opts=lanczos)),
        ("randomized", topk, dict(k=k, method="randomized", opts=randomized)),
        ("slq", regions, dict(slq)),
    ):
        try:
            r = fn(model, **kw)
            r["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            r = {"status": "error", "why": f"{type(e).__name__}: {e}"[:500]}
        out[name] = r
    out["costs"]["status"] = "ok"
    return out
