"""Issues 5 (part 5) and 15 (section 5): the GPU suite (CUDA/ROCm); skips cleanly without a GPU.

On a GPU, in one run sized to finish in under 8 minutes (each case in a fresh process with its
own time limit; the device name is recorded):

* block products' throughput on the reference model: seconds per column of ``J.matmat`` /
  ``J.rmatmat`` for 1, 2, 4, ..., 256 columns, and as a fraction of the training run's own
  throughput (``t_train / time per column``: 1.0 means one column costs one training run), with
  the device's peak memory per block size;
* block top-k: ``top_singular(J, 50)`` with ``block_size`` 1, 64 and ``"auto"`` (products,
  time, max relative error against the ``b = 1`` values, flags);
* the counts: ``analysis.spectrum_summary(J)`` (the CLI's main job; its top-k stage takes the
  block size the library defaults to on an accelerator) against dense ``J`` + SVD in the same
  process, counts within % of P and time;
* float32 vs float64: top-20 singular values and SLQ counts in both precisions.

``--extended`` adds a wider model (hidden = 1024) and float64 throughput (not in the 8
minutes). ``--dry-run`` runs every case tiny on the CPU (no GPU needed; it checks the script,
its numbers mean nothing). Run: ``python -m benchmarks.gpu_suite`` or
``python -m benchmarks.run --only gpu``. ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (set here) so
the peak-bytes statistics mean something.
"""

from __future__ import annotations

import os

from benchmarks import _common as C


def gpu_available() -> tuple[bool, str]:
    try:
        import jax

        devs = [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]
    except Exception as e:  # noqa: BLE001
        return False, f"jax could not list devices: {e}"
    if not devs:
        import jax

        return False, (
            f"no GPU visible to JAX (backend: {jax.default_backend()}, devices: "
            f"{[str(d) for d in jax.devices()]}); the GPU suite was skipped"
        )
    return True, f"{devs[0].device_kind} ({len(devs)} device(s))"


def _mem_stats():
    import jax

    try:
        st = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001
        st = {}
    return {k: st.get(k) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")}


BLOCKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# the reference model; --dry-run: a tiny one (CPU, seconds)
REFERENCE = dict(hidden=64, num_epochs=25)
TINY = dict(hidden=4, num_epochs=1)


def throughput(hidden: int = 64, num_epochs: int = 25, blocks=BLOCKS, x64: bool = False) -> dict:
    import jax
    import jax.numpy as jnp

    import matfree_tj as mtj

    if x64:
        jax.config.update("jax_enable_x64", True)
    ref = mtj.examples.digits_mlp(
        hidden=hidden, num_epochs=num_epochs, dtype=jnp.float64 if x64 else jnp.float32
    )
    tf = ref.train_fn
    t_train = C.time_call(jax.jit(lambda p: tf(p)), ref.params0, repeat=10)["median_s"]
    out = {
        "P": ref.num_params,
        "T": ref.config["num_steps"],
        "t_train_s": t_train,
        "dtype": "float64" if x64 else "float32",
        "rows": [],
    }
    for cols in blocks:
        J = mtj.training_jacobian(tf, ref.params0, chunk_size=cols, check_deterministic=False)
        P = J.shape[0]
        V = jax.random.normal(jax.random.key(0), (P, cols), J.dtype)
        for name, f in (
            ("jvp", jax.jit(lambda X, J=J: J.matmat(X))),
            ("vjp", jax.jit(lambda X, J=J: J.rmatmat(X))),
        ):
            try:
                t = C.time_call(f, V, repeat=3, max_seconds=60)
                st = _mem_stats()
                per_col = t["median_s"] / cols
                out["rows"].append(
                    {
                        "op": name,
                        "cols": cols,
                        "time_s": t["median_s"],
                        "cols_per_s": 1.0 / per_col,
                        "fraction_of_train_throughput": t_train / per_col,
                        **st,
                        "headroom_bytes": (st["bytes_limit"] - st["peak_bytes_in_use"])
                        if st.get("bytes_limit") and st.get("peak_bytes_in_use")
                        else None,
                    }
                )
            except Exception as e:  # noqa: BLE001 - out of memory is a result here
                out["rows"].append(
                    {
                        "op": name,
                        "cols": cols,
                        "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                    }
                )
    return out


def topk_blocks(
    hidden: int = 64, num_epochs: int = 25, k: int = 50, blocks=(1, 64, "auto")
) -> dict:
    """``top_singular(J, k)`` for each block size (cold: compilation included)."""
    import jax
    import numpy as np

    import matfree_tj as mtj

    ref = mtj.examples.digits_mlp(hidden=hidden, num_epochs=num_epochs)
    J = mtj.training_jacobian(ref.train_fn, ref.params0, check_deterministic=False)
    k = min(k, J.shape[0] // 4)
    rows, s1 = [], None
    for b in blocks:
        lines: list = []
        with C.Stopwatch() as sw:
            res = mtj.top_singular(J, k, key=jax.random.key(0), block_size=b, progress=lines.append)
            s = np.asarray(C.block(res.s), np.float64)
        s1 = s if s1 is None else s1
        rows.append(
            {
                "block_size": b,
                "chosen": next((ln for ln in lines if "block_size='auto'" in ln), None),
                "time_s": sw.seconds,
                "num_products": int(res.num_products),
                "converged": int(np.sum(np.asarray(res.converged))),
                "status": str(res.status),
                "max_rel_diff_vs_first": float(np.max(np.abs(s - s1) / s1)),
            }
        )
    return {"P": ref.num_params, "k": k, "rows": rows}


def counts(hidden: int = 64, num_epochs: int = 25) -> dict:
    """The main job: ``spectrum_summary(J)`` (matrix-free default) and dense J + SVD."""
    import jax

    import matfree_tj as mtj
    from matfree_tj import analysis

    ref = mtj.examples.digits_mlp(hidden=hidden, num_epochs=num_epochs)
    J = mtj.training_jacobian(ref.train_fn, ref.params0, check_deterministic=False)
    P = J.shape[0]
    with C.Stopwatch() as sw:
        mf = analysis.spectrum_summary(J, key=jax.random.key(0))
    t_mf = sw.seconds
    with C.Stopwatch() as sw:
        de = analysis.spectrum_summary(J, key=jax.random.key(0), backend="dense")
    t_de = sw.seconds
    return {
        "P": P,
        "matrix_free": {
            "time_s": t_mf,
            "num_products": int(mf.num_products),
            "counts": mf.counts,
            "stderr": mf.stderr,
            "ranges_95": {g: mf.interval(g) for g in mf.counts},
            "settings": {k: mf.settings[k] for k in ("num_probes", "num_steps", "num_deflated")},
        },
        "dense": {"time_s": t_de, "counts": de.counts},
        "max_err_pct_P": max(abs(mf.counts[g] - de.counts[g]) for g in de.counts) / P * 100,
        "dense_in_95": {
            g: bool(mf.interval(g)[0] <= de.counts[g] <= mf.interval(g)[1]) for g in de.counts
        },
    }


def precision(hidden: int = 64, k: int = 20, x64: bool = False, num_epochs: int = 25) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import matfree_tj as mtj

    if x64:
        jax.config.update("jax_enable_x64", True)
    ref = mtj.examples.digits_mlp(
        hidden=hidden, num_epochs=num_epochs, dtype=jnp.float64 if x64 else jnp.float32
    )
    J = mtj.training_jacobian(ref.train_fn, ref.params0, check_deterministic=False)
    with C.Stopwatch() as sw:
        res = mtj.top_singular(J, k, key=jax.random.key(0))
        C.block(res.s)
    t_top = sw.seconds
    with C.Stopwatch() as sw:
        rc = mtj.region_counts(J, key=jax.random.key(1), num_probes=10, num_steps=120)
    return {
        "dtype": "float64" if x64 else "float32",
        "s": np.asarray(res.s, np.float64),
        "converged": np.asarray(res.converged),
        "top_s": t_top,
        "products": res.num_products,
        "regions": rc.to_dict(),
        "regions_s": sw.seconds,
    }


def run(quick: bool = False, out_dir=None, extended: bool = False, dry_run: bool = False) -> dict:
    """The suite; ``quick`` fewer block sizes; ``dry_run``: tiny, on the CPU (checks the
    script only; writes ``gpu_dryrun.json``). Time limits per case keep the default run under
    8 minutes (140 + 110 + 140 + 2 x 40 s = 470 s; a dry run on a shared CPU gets 4x)."""
    ok, msg = gpu_available()
    info = C.machine_info()
    name = "gpu_dryrun" if dry_run else "gpu"
    if not ok and not dry_run:
        print(f"gpu: skipped: {msg}", flush=True)
        payload = {"benchmark": "gpu", "skipped": True, "why": msg, "machine": C.finish_info(info)}
        C.write_json("gpu", payload, out_dir)
        return payload
    if dry_run:
        msg = f"dry run on {info.get('cpu', 'the CPU')} (no GPU: numbers mean nothing)"
    print(f"gpu: {msg}", flush=True)
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    model = TINY if dry_run else REFERENCE
    blocks = (1, 4, 16) if dry_run else ((1, 8, 64, 256) if quick else BLOCKS)
    res = {"device": msg}
    slow = 4 if dry_run else 1
    res["throughput_f32"] = C.run_isolated(
        "benchmarks.gpu_suite:throughput", dict(**model, blocks=blocks), env=env, timeout=140 * slow
    )
    res["topk_blocks"] = C.run_isolated(
        "benchmarks.gpu_suite:topk_blocks",
        dict(
            **model, k=5 if dry_run else 50, blocks=(1, 4, "auto") if dry_run else (1, 64, "auto")
        ),
        env=env,
        timeout=110 * slow,
    )
    res["counts"] = C.run_isolated(
        "benchmarks.gpu_suite:counts", dict(**model), env=env, timeout=140 * slow
    )
    for key, x64 in (("precision_f32", False), ("precision_f64", True)):
        res[key] = C.run_isolated(
            "benchmarks.gpu_suite:precision",
            dict(
                hidden=model["hidden"],
                num_epochs=model["num_epochs"],
                x64=x64,
                k=5 if dry_run else 20,
            ),
            env=env,
            timeout=40 * slow,
        )
    if extended and not dry_run:
        res["throughput_wide"] = C.run_isolated(
            "benchmarks.gpu_suite:throughput",
            dict(hidden=1024, blocks=(1, 64, 256, 1024)),
            env=env,
            timeout=900,
        )
        res["throughput_f64"] = C.run_isolated(
            "benchmarks.gpu_suite:throughput",
            dict(blocks=(1, 64, 256), x64=True),
            env=env,
            timeout=900,
        )
    payload = {
        "benchmark": "gpu",
        "skipped": False,
        "dry_run": dry_run,
        "quick": quick,
        "machine": C.finish_info(info),
        "results": res,
    }
    C.write_json(name, payload, out_dir)
    C.write_text(name + ".md", table(payload), out_dir)
    return payload


def table(payload: dict) -> str:
    import numpy as np

    res = payload["results"]
    lines = [
        f"### GPU suite on {res['device']}\n",
        C.header_lines(payload["machine"], "python -m benchmarks.run --only gpu"),
        "",
    ]
    for key in ("throughput_f32", "throughput_wide", "throughput_f64"):
        r = res.get(key)
        if not r:
            continue
        if r.get("status") != "ok":
            lines.append(f"{key}: {r.get('status')}: {r.get('why')}\n")
            continue
        lines.append(
            f"#### Block products, P = {r['P']}, T = {r['T']}, {r['dtype']} "
            f"(one training run {C.fmt_s(r['t_train_s'])})\n"
        )
        lines.append(
            C.markdown_table(
                r["rows"],
                [
                    ("op", "product", "{}".format),
                    ("cols", "columns", "d"),
                    ("time_s", "time", C.fmt_s),
                    ("cols_per_s", "columns / s", ".3g"),
                    ("fraction_of_train_throughput", "fraction of train throughput", ".3g"),
                    ("peak_bytes_in_use", "peak device memory", C.fmt_bytes),
                    ("headroom_bytes", "headroom", C.fmt_bytes),
                    ("error", "error", C.fmt),
                ],
            )
        )
    tb = res.get("topk_blocks", {})
    if tb.get("status") == "ok":
        lines.append(f"\n#### Block top-{tb['k']} (P = {tb['P']}), cold\n")
        lines.append(
            C.markdown_table(
                tb["rows"],
                [
                    ("block_size", "block_size", "{}".format),
                    ("time_s", "time", C.fmt_s),
                    ("num_products", "column products", "d"),
                    ("converged", "flagged converged", "d"),
                    ("max_rel_diff_vs_first", "max rel diff vs b = 1", ".1e"),
                    ("chosen", "auto's choice", C.fmt),
                ],
            )
        )
    elif tb:
        lines.append(f"topk_blocks: {tb.get('status')}: {tb.get('why')}\n")
    ct = res.get("counts", {})
    if ct.get("status") == "ok":
        mf, de = ct["matrix_free"], ct["dense"]
        lines.append(
            f"\nCounts (P = {ct['P']}): spectrum_summary {C.fmt_s(mf['time_s'])}, "
            f"{mf['num_products']} products, {mf['counts']} ({mf['settings']}); dense J + SVD "
            f"{C.fmt_s(de['time_s'])}, {de['counts']}; max error {ct['max_err_pct_P']:.2f}% of "
            f"P; dense inside the 95% ranges: {ct['dense_in_95']}.\n"
        )
    elif ct:
        lines.append(f"counts: {ct.get('status')}: {ct.get('why')}\n")
    a, b = res.get("precision_f32", {}), res.get("precision_f64", {})
    if a.get("status") == "ok" and b.get("status") == "ok":
        s32, s64 = np.asarray(a["s"]), np.asarray(b["s"])
        rel = float(np.max(np.abs(s32 - s64) / s64))
        lines.append(
            f"\nfloat32 vs float64 on the reference model: top-{s32.size} max relative "
            f"difference {rel:.2e}; time {C.fmt_s(a['top_s'])} vs {C.fmt_s(b['top_s'])}. "
            f"Region counts float32 {a['regions']} vs float64 {b['regions']}.\n"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--extended", action="store_true", help="add a wide model and float64")
    p.add_argument("--dry-run", action="store_true", help="tiny, on the CPU: checks the script")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    a = p.parse_args()
    run(quick=a.quick, out_dir=a.out, extended=a.extended, dry_run=a.dry_run)
