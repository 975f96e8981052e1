"""Issue 2 benchmark: cost of training-Jacobian products relative to one training run.

On the reference model (``digits_mlp()``: P = 4810, T = 625, float32): one training run, one
JVP (``J.mv``), one VJP (``J.rmv``) per checkpoint option, the per-column cost of a 64-column
``matmat`` / ``rmatmat``, and memory (XLA's compiled accounting and measured peak RSS in a fresh
process), all also as ratios to one training run.

Targets (CPU): JVP <= 3x a training run; VJP with per-step remat <= 5x; batched products
<= 1x a training run per column.

Run: ``python -m benchmarks.run --only products`` (add ``--quick`` for fewer repeats).
"""

from __future__ import annotations

import functools

from benchmarks import _common as C

CHECKPOINTS = ("none", "step", "sqrt")
TARGETS = {
    "jvp": 3.0,
    "vjp[step]": 5.0,
    "matmat/col": 1.0,
    "rmatmat/col[none]": 1.0,
    "rmatmat/col[step]": 1.0,
    "rmatmat/col[sqrt]": 1.0,
}


def _setup(hidden: int, num_epochs: int, seed: int = 0):
    import matfree_tj as mtj

    return mtj.examples.digits_mlp(hidden=hidden, num_epochs=num_epochs, seed=seed)


def products_case(
    hidden: int = 64, num_epochs: int = 25, repeat: int = 5, cols: int = 64, extras: bool = True
) -> dict:
    """All timings and compiled memory in one process (runs as an isolated case)."""
    import jax

    import matfree_tj as mtj

    ref = _setup(hidden, num_epochs)
    tf = ref.train_fn
    train = jax.jit(lambda p: tf(p))
    res: dict = {"P": ref.num_params, "T": ref.config["num_steps"], "cols": cols, "ops": {}}
    ops = res["ops"]

    t = C.time_call(train, ref.params0, repeat=max(10, 2 * repeat))
    ops["train"] = {
        "median_s": t["median_s"],
        "min_s": t["min_s"],
        "cold_s": t["cold_s"],
        "columns": 1,
        "memory": C.compiled_memory(lambda p: tf(p), ref.params0),
    }

    # Plain products: the primal is re-run inside every product (forward="jvp",
    # cache_reverse=False), so nothing of size O(T) outlives a product.
    plain = dict(forward="jvp", cache_reverse=False)
    with C.Stopwatch() as sw:
        J = mtj.training_jacobian(tf, ref.params0, checkpoint="none", **plain)
    res["construct_s"] = sw.seconds
    P = J.shape[0]
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    v = jax.random.normal(k1, (P,), J.dtype)
    u = jax.random.normal(k2, (P,), J.dtype)
    V = jax.random.normal(k3, (P, cols), J.dtype)
    U = jax.random.normal(k4, (P, cols), J.dtype)

    def record(name, fn, arg, ncols, mem_fn, reps):
        t = C.time_call(fn, arg, repeat=reps)
        ops[name] = {
            "median_s": t["median_s"],
            "min_s": t["min_s"],
            "cold_s": t["cold_s"],
            "columns": ncols,
            "memory": C.compiled_memory(mem_fn, arg),
        }
        print(
            f"    {name:22s} {t['median_s'] * 1e3:9.1f} ms (cold {t['cold_s']:.2f} s)", flush=True
        )

    record("jvp", J.mv, v, 1, functools.partial(J.apply, "mv"), repeat)
    # Block products as a solver uses them (inside one jitted computation, compiled once) and
    # as a user calls them from Python (``J.matmat(V)`` eagerly).
    record(
        "matmat",
        jax.jit(lambda X: J.matmat(X)),
        V,
        cols,
        lambda X: J.matmat(X),
        max(2, repeat // 2),
    )
    if extras:
        record("matmat[eager]", J.matmat, V, cols, lambda X: J.matmat(X), 2)
    for ck in CHECKPOINTS:
        Jc = (
            J
            if ck == "none"
            else mtj.training_jacobian(
                tf, ref.params0, checkpoint=ck, check_deterministic=False, **plain
            )
        )
        record(f"vjp[{ck}]", Jc.rmv, u, 1, functools.partial(Jc.apply, "rmv"), repeat)
        record(
            f"rmatmat[{ck}]",
            jax.jit(lambda X, Jc=Jc: Jc.rmatmat(X)),
            U,
            cols,
            lambda X, Jc=Jc: Jc.rmatmat(X),
            max(2, repeat // 2),
        )
    if not extras:
        return res
    record("rmatmat[none,eager]", J.rmatmat, U, cols, lambda X: J.rmatmat(X), 2)

    # Cached variants (the library default "auto" when they fit): the primal runs once at
    # construction and the linearisation / pullback (O(T) residuals) is kept for all products.
    with C.Stopwatch() as sw:
        Jk = mtj.training_jacobian(
            tf, ref.params0, forward="linearize", cache_reverse=True, check_deterministic=False
        )
    res["construct_cached_s"] = sw.seconds
    record("jvp[cached]", Jk.mv, v, 1, functools.partial(Jk.apply, "mv"), repeat)
    record(
        "matmat[cached]",
        jax.jit(lambda X: Jk.matmat(X)),
        V,
        cols,
        lambda X: Jk.matmat(X),
        max(2, repeat // 2),
    )
    record("vjp[none,cached]", Jk.rmv, u, 1, functools.partial(Jk.apply, "rmv"), repeat)
    record(
        "rmatmat[none,cached]",
        jax.jit(lambda X: Jk.rmatmat(X)),
        U,
        cols,
        lambda X: Jk.rmatmat(X),
        max(2, repeat // 2),
    )
    return res


def train_rss(hidden: int = 64, num_epochs: int = 25) -> dict:
    """Peak RSS of one training run in a fresh process (compiled first, then reset, then run)."""
    import jax

    ref = _setup(hidden, num_epochs)
    tf = ref.train_fn
    compiled = jax.jit(lambda p: tf(p)).lower(ref.params0).compile()
    with C.PeakMemory() as pm:
        C.block(compiled(ref.params0))
    return {"kind": "train", **pm.as_dict()}


def run(quick: bool = False, out_dir=None, hidden: int = 64, num_epochs: int = 25) -> dict:
    """Reference model (hidden=64, 25 epochs) in both modes: it is cheap; quick repeats less."""
    info = C.machine_info()
    repeat = 3 if quick else 7
    print("products: timings on the reference model", flush=True)
    res = C.run_isolated(
        "benchmarks.bench_products:products_case",
        dict(hidden=hidden, num_epochs=num_epochs, repeat=repeat, extras=not quick),
        timeout=900,
    )
    rss = {}
    kinds = [("train", "none"), ("jvp", "none"), ("matmat", "none")]
    kinds += [(k, c) for k in ("vjp", "rmatmat") for c in CHECKPOINTS]
    if quick:  # the compiled-memory columns stay; measured RSS only in full mode
        kinds = []
    else:
        print("products: peak RSS, one fresh process per product", flush=True)
    for kind, ck in kinds:
        if kind == "train":
            r = C.run_isolated(
                "benchmarks.bench_products:train_rss",
                dict(hidden=hidden, num_epochs=num_epochs),
                timeout=600,
                strict_memory=True,
            )
        else:
            r = C.run_isolated(
                "benchmarks._cases:product_rss",
                dict(
                    model=dict(kind="mlp", hidden=hidden, num_epochs=num_epochs),
                    kind=kind,
                    checkpoint=ck,
                ),
                timeout=600,
                strict_memory=True,
            )
        name = kind if kind in ("train", "jvp", "matmat") else f"{kind}[{ck}]"
        rss[name] = r
    payload = {
        "benchmark": "products",
        "quick": quick,
        "machine": C.finish_info(info),
        "case": res,
        "rss": rss,
    }
    C.write_json("products" + ("_quick" if quick else ""), payload, out_dir)  # raw, first
    return render(payload, out_dir)


def render(payload: dict, out_dir=None) -> dict:
    tag = "_quick" if payload["quick"] else ""
    payload["summary"] = summarise(payload)
    C.write_json("products" + tag, payload, out_dir)
    C.write_text("products" + tag + ".md", table(payload), out_dir)
    return payload


def summarise(payload: dict) -> list[dict]:
    res, rss = payload["case"], payload["rss"]
    if res.get("status") != "ok":
        return []
    ops = res["ops"]
    t_train = ops["train"]["median_s"]
    m_train = ops["train"]["memory"].get("temp_bytes")
    r_train = (rss.get("train") or {}).get("rss_peak_above_start_bytes")
    rows = []
    for name, o in ops.items():
        per_col = o["median_s"] / o["columns"]
        base, _, rest = name.partition("[")
        label = name if o["columns"] == 1 else base + "/col" + ("[" + rest if rest else "")
        r = (rss.get(name) or {}).get("rss_peak_above_start_bytes")
        temp = o["memory"].get("temp_bytes")
        ratio = per_col / t_train
        target = TARGETS.get(label)
        rows.append(
            {
                "op": label,
                "columns": o["columns"],
                "time_s": o["median_s"],
                "per_column_s": per_col,
                "ratio_to_train": ratio,
                "cold_s": o["cold_s"],
                "temp_bytes": temp,
                "temp_ratio": (temp / m_train) if temp is not None and m_train else None,
                "rss_peak_above_start_bytes": r,
                "rss_ratio": (r / r_train) if r and r_train else None,
                "target": f"<= {target:g}x" if target else "",
                "meets_target": (ratio <= target) if target else None,
            }
        )
    return rows


def table(payload: dict) -> str:
    info = payload["machine"]
    res = payload["case"]
    if res.get("status") != "ok":
        return f"products benchmark failed: {res.get('why')}\n"
    lines = [
        f"### Products on the reference model (P = {res['P']}, T = {res['T']}, float32)\n",
        C.header_lines(
            info,
            "python -m benchmarks.run --only products" + (" --quick" if payload["quick"] else ""),
        ),
        "",
    ]
    lines.append(
        C.markdown_table(
            payload["summary"],
            [
                ("op", "product", "{}".format),
                ("per_column_s", "time / column", C.fmt_s),
                ("ratio_to_train", "x training run", ".2f"),
                ("target", "target", "{}".format),
                ("meets_target", "met", C.fmt),
                ("cold_s", "first call (compile)", C.fmt_s),
                ("temp_bytes", "XLA temp memory", C.fmt_bytes),
                ("temp_ratio", "x train temp", ".3g"),
                ("rss_peak_above_start_bytes", "peak RSS above start", C.fmt_bytes),
                ("rss_ratio", "x train RSS", ".3g"),
            ],
        )
    )
    lines.append(
        f"\nOne training run: {C.fmt_s(res['ops']['train']['median_s'])} (median of warm runs). "
        f"Block products use {res['cols']} columns (one vmapped chunk); their row is per column. "
        "Plain rows re-run the primal inside every product (`forward='jvp', "
        "cache_reverse=False`); `[cached]` rows are the library's default when the cache fits "
        "(`'auto'`: linearisation and pullback computed once at construction, O(T) residuals kept; "
        "their compiled memory excludes that cache, which is an argument). `[eager]` rows call "
        "`J.matmat(V)` from Python instead of inside `jax.jit`. "
        "'XLA temp memory' is the compiled temporaries of that one jitted computation; "
        "'peak RSS above start' is measured in a fresh process after a warm-up call.\n"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    run(quick=a.quick)
