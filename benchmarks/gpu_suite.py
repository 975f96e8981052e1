"""Issue 5 part 5: the GPU suite (CUDA/ROCm); skips cleanly when no GPU is present.

On a GPU, in one run:

* batched JVP / VJP throughput on the reference model (and a wider one): columns per second for
  block sizes 1 ... 1024, and as a fraction of the training run's own throughput
  (``t_train / time per column``: 1.0 means one column costs one training run);
* float32 vs float64: top-k singular values (Lanczos) and SLQ region counts of the reference
  model computed in both precisions, and their differences;
* memory headroom: the device's peak bytes in use against its limit for each block size
  (``device.memory_stats()``), and the largest block that ran.

Run: ``python -m benchmarks.gpu_suite`` or ``python -m benchmarks.run --only gpu`` (full mode
adds the wider model and float64). Set ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (done here)
so the peak-bytes statistics mean something.
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


def throughput(
    hidden: int = 64, num_epochs: int = 25, blocks=(1, 8, 64, 256, 1024), x64: bool = False
) -> dict:
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


def precision(hidden: int = 64, k: int = 20, x64: bool = False) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import matfree_tj as mtj

    if x64:
        jax.config.update("jax_enable_x64", True)
    ref = mtj.examples.digits_mlp(hidden=hidden, dtype=jnp.float64 if x64 else jnp.float32)
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


def run(quick: bool = False, out_dir=None) -> dict:
    ok, msg = gpu_available()
    info = C.machine_info()
    if not ok:
        print(f"gpu: skipped: {msg}", flush=True)
        payload = {"benchmark": "gpu", "skipped": True, "why": msg, "machine": C.finish_info(info)}
        C.write_json("gpu", payload, out_dir)
        return payload
    print(f"gpu: {msg}", flush=True)
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    res = {"device": msg}
    res["throughput_f32"] = C.run_isolated(
        "benchmarks.gpu_suite:throughput",
        dict(blocks=(1, 8, 64, 256) if quick else (1, 8, 64, 256, 1024)),
        env=env,
        timeout=900,
    )
    if not quick:
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
    res["precision_f32"] = C.run_isolated(
        "benchmarks.gpu_suite:precision", dict(x64=False), env=env, timeout=900
    )
    res["precision_f64"] = C.run_isolated(
        "benchmarks.gpu_suite:precision", dict(x64=True), env=env, timeout=900
    )
    payload = {
        "benchmark": "gpu",
        "skipped": False,
        "quick": quick,
        "machine": C.finish_info(info),
        "results": res,
    }
    C.write_json("gpu", payload, out_dir)
    C.write_text("gpu.md", table(payload), out_dir)
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
                    ("error", "error", "{}".format),
                ],
            )
        )
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
    a = p.parse_args()
    run(quick=a.quick)
