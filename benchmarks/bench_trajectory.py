"""Issue 14: trajectory geometry throughput -- Bhattacharyya distances and InPCA at scale.

Three kinds of case, each in a fresh process (``_common.run_isolated``: cold compile included,
peak RSS of the measured part), all in float64 unless the case says float32:

* ``distances``: ``mtj.bhattacharyya_distances`` of ``m`` checkpoints' class probabilities on
  ``N`` inputs, ``C`` classes (probabilities and the log-probability route): cold and warm time,
  pairs per second, peak RSS above the inputs;
* ``inpca``: ``mtj.inpca`` of the ``(m, m)`` array, dense (``eigh``, ``O(m^3)``) and matrix-free
  (Lanczos on the implicitly double-centred ``W``), the top ``k``: times, products, the
  matrix-free error against dense (max relative eigenvalue error, smallest principal cosine of
  the eigenvectors) and the certified residuals;
* ``streamed``: ``mtj.inpca`` of a ``DistanceOperator`` (``D`` never stored: every product is
  one pass over the ``m^2`` pairs), against the dense result of the same distances when that
  fits.

The predictions are a synthetic training trajectory: softmax of logits moving along a smooth
low-dimensional curve (``L0 + s (L1 - L0) + 0.3 sin(3 pi s) L2``, ``s = 1 - exp(-t / tau)``), so the
InPCA spectrum decays like a real ribbon's and Lanczos converges as it would on one.

Run: ``python -m benchmarks.bench_trajectory`` (full: ``m`` up to 10,000, ``N = 360`` inputs =
the digits test set, ``C = 10``; dense InPCA at ``m = 10^4`` takes minutes and ~3 GB) or
``--quick`` (small sizes, about a minute). Writes ``results/trajectory[_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import time

from benchmarks import _common as C

FULL = dict(
    n=360,
    c=10,
    k=10,
    # (m, dtype[, N]): the pairs grow as m^2 and each costs N C, so m = 10^4 runs on a tenth of
    # the inputs (N = 36; full N would take ~15 min per call on 2 cores -- the rate per pair-input
    # is what scales); InPCA's cost depends on m only, its D is made from N = 36 inputs there
    distances=[
        (1000, "float64"),
        (3000, "float64"),
        (10000, "float64", 36),
        (10000, "float32", 36),
    ],
    inpca=[1000, 3000, (10000, 36)],
    streamed=[(1000, 36)],
    timeout=3600,
)
QUICK = dict(
    n=40,
    c=10,
    k=5,
    distances=[(200, "float64"), (500, "float64"), (500, "float32")],
    inpca=[300, 600],
    streamed=[200],
    timeout=600,
)


def _trajectory_logp(m: int, n: int, c: int, seed: int = 0):
    """``(m, N, C)`` log-probabilities of a synthetic training trajectory (numpy float64)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    L0, L1, L2 = (3.0 * rng.normal(size=(n, c)) for _ in range(3))
    s = 1.0 - np.exp(-np.linspace(0.0, 5.0, m))[:, None, None]
    logits = L0 + s * (L1 - L0) + 0.3 * np.sin(3 * np.pi * s) * L2
    logits = logits - logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))


def _setup(dtype: str):
    import jax

    jax.config.update("jax_enable_x64", dtype == "float64")
    return jax


# ---------------------------------------------------------------------------------------
# Cases (run in a child process)
# ---------------------------------------------------------------------------------------


def case_distances(m: int, n: int, c: int, dtype: str) -> dict:
    jax = _setup(dtype)
    import jax.numpy as jnp
    import numpy as np

    import matfree_tj as mtj

    lp = jnp.asarray(_trajectory_logp(m, n, c), dtype)
    p = jnp.exp(lp)
    out = {"m": m, "N": n, "C": c, "dtype": dtype, "pairs": m * (m - 1) // 2}
    for route, x, log in (("probabilities", p, False), ("log", lp, True)):
        with C.PeakMemory() as pm:
            t = C.time_call(lambda x=x, log=log: mtj.bhattacharyya_distances(x, log=log), repeat=1)
        D = t.pop("result")
        out[route] = {
            "cold_s": t["cold_s"],
            "warm_s": t["min_s"],
            "pairs_per_s": out["pairs"] / t["min_s"],
            **pm.as_dict(),
            "max_D": float(jnp.max(D)),
        }
        del D
    out["device"] = str(jax.devices()[0])
    out["numpy"] = np.__version__
    return out


def _compare(dense, free) -> dict:
    import numpy as np

    lam_d, lam_f = dense.eigenvalues, free.eigenvalues
    cos = np.abs(np.sum(dense.eigenvectors * free.eigenvectors, axis=0))
    return {
        "max_rel_eig_err": float(np.max(np.abs(lam_f - lam_d) / np.abs(lam_d))),
        "min_cosine": float(np.min(cos)),
        "stress_err": float(np.max(np.abs(dense.explained_stress - free.explained_stress))),
    }


def _summary(res) -> dict:
    return {
        "eigenvalues": [float(x) for x in res.eigenvalues],
        "stress": [float(x) for x in res.explained_stress],
        "signature": list(res.signature),
        "max_residual": float(max(res.residuals)),
        "all_converged": bool(res.converged.all()),
        "status": str(res.status),
        "num_products": int(res.num_products),
    }


def case_inpca(m: int, n: int, c: int, k: int) -> dict:
    jax = _setup("float64")
    import matfree_tj as mtj

    D = mtj.bhattacharyya_distances(_trajectory_logp(m, n, c), log=True)
    D = jax.block_until_ready(D)
    out = {"m": m, "N": n, "C": c, "k": k}
    with C.PeakMemory() as pm:
        t = C.time_call(
            lambda: mtj.inpca(D, num_components=k, method="lanczos", key=jax.random.key(0)),
            repeat=1,
        )
    free = t.pop("result")
    out["lanczos"] = {"cold_s": t["cold_s"], "warm_s": t["min_s"], **pm.as_dict(), **_summary(free)}
    with C.PeakMemory() as pm:
        t0 = time.perf_counter()
        dense = mtj.inpca(D, num_components=k, method="dense")
        dt = time.perf_counter() - t0
    out["dense"] = {"time_s": dt, **pm.as_dict(), **_summary(dense)}
    out["agreement"] = _compare(dense, free)
    return out


def case_streamed(m: int, n: int, c: int, k: int) -> dict:
    jax = _setup("float64")
    import matfree_tj as mtj

    lp = _trajectory_logp(m, n, c)
    op = mtj.DistanceOperator.from_predictions(lp, log=True)
    out = {"m": m, "N": n, "C": c, "k": k}
    with C.PeakMemory() as pm:
        t = C.time_call(lambda: mtj.inpca(op, num_components=k, key=jax.random.key(0)), repeat=1)
    free = t.pop("result")
    out["streamed"] = {
        "time_s": t["cold_s"],
        "warm_s": t["min_s"],
        **pm.as_dict(),
        **_summary(free),
    }
    out["seconds_per_product"] = t["min_s"] / max(1, free.num_products)  # warm
    if m <= 5000:
        dense = mtj.inpca(mtj.bhattacharyya_distances(lp, log=True), num_components=k)
        out["agreement"] = _compare(dense, free)
    return out


# ---------------------------------------------------------------------------------------
# Driver, table
# ---------------------------------------------------------------------------------------


def run(quick: bool = False, out_dir=None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    info = C.machine_info()
    tag = "_quick" if quick else ""
    n, c, k, timeout = cfg["n"], cfg["c"], cfg["k"], cfg["timeout"]
    payload = {
        "benchmark": "trajectory",
        "quick": quick,
        "config": cfg,
        "machine": info,
        "distances": [],
        "inpca": [],
        "streamed": [],
    }
    mod = "benchmarks.bench_trajectory"
    for m, dtype, *n_case in cfg["distances"]:
        kw = dict(m=m, n=n_case[0] if n_case else n, c=c, dtype=dtype)
        payload["distances"].append(C.run_isolated(f"{mod}:case_distances", kw, timeout=timeout))
        C.write_json("trajectory" + tag, {**payload, "partial": True}, out_dir)

    def m_n(case):  # m, or (m, N) with its own number of inputs
        return case if isinstance(case, (tuple, list)) else (case, n)

    for case in cfg["inpca"]:
        m, n_case = m_n(case)
        kw = dict(m=m, n=n_case, c=c, k=k)
        payload["inpca"].append(C.run_isolated(f"{mod}:case_inpca", kw, timeout=timeout))
        C.write_json("trajectory" + tag, {**payload, "partial": True}, out_dir)
    for case in cfg["streamed"]:
        m, n_case = m_n(case)
        kw = dict(m=m, n=n_case, c=c, k=k)
        payload["streamed"].append(C.run_isolated(f"{mod}:case_streamed", kw, timeout=timeout))
        C.write_json("trajectory" + tag, {**payload, "partial": True}, out_dir)
    payload["machine"] = C.finish_info(info)
    C.write_json("trajectory" + tag, payload, out_dir)
    C.write_text("trajectory" + tag + ".md", table(payload), out_dir)
    return payload


def _get(d: dict, *keys):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def table(payload: dict) -> str:
    cmd = "python -m benchmarks.bench_trajectory" + (" --quick" if payload["quick"] else "")
    cfg = payload["config"]
    lines = [
        f"### Trajectory geometry: N = {cfg['n']} inputs (unless a row says), "
        f"C = {cfg['c']} classes, top-{cfg['k']}\n",
        C.header_lines(payload["machine"], cmd),
        "",
        "Distances: all m(m-1)/2 pairs; cold includes compilation, warm is a second call. "
        "Peak RSS is above the process's RSS after the inputs were made.\n",
    ]
    rows = []
    for r in payload["distances"]:
        for route in ("probabilities", "log"):
            rows.append(
                {
                    "m": r.get("m"),
                    "N": r.get("N"),
                    "dtype": r.get("dtype"),
                    "route": route,
                    "cold": _get(r, route, "cold_s"),
                    "warm": _get(r, route, "warm_s"),
                    "rate": _get(r, route, "pairs_per_s"),
                    "rss": _get(r, route, "rss_peak_above_start_bytes"),
                    "note": r.get("status") if r.get("status") != "ok" else r.get("why", ""),
                }
            )
    lines.append(
        C.markdown_table(
            rows,
            [
                ("m", "m", "d"),
                ("N", "N", "d"),
                ("dtype", "dtype", "{}".format),
                ("route", "route", "{}".format),
                ("cold", "cold", C.fmt_s),
                ("warm", "warm", C.fmt_s),
                ("rate", "pairs/s", ".3g"),
                ("rss", "peak RSS", C.fmt_bytes),
                ("note", "note", "{}".format),
            ],
        )
    )
    lines.append("\nInPCA of the (m, m) array (float64): dense eigh vs matrix-free Lanczos.\n")
    rows = []
    for r in payload["inpca"]:
        rows.append(
            {
                "m": r.get("m"),
                "N": r.get("N"),
                "dense": _get(r, "dense", "time_s"),
                "dense_rss": _get(r, "dense", "rss_peak_above_start_bytes"),
                "cold": _get(r, "lanczos", "cold_s"),
                "warm": _get(r, "lanczos", "warm_s"),
                "lz_rss": _get(r, "lanczos", "rss_peak_above_start_bytes"),
                "products": _get(r, "lanczos", "num_products"),
                "err": _get(r, "agreement", "max_rel_eig_err"),
                "cos": _get(r, "agreement", "min_cosine"),
                "stress3": (_get(r, "dense", "stress") or [None] * 3)[2],
                "note": r.get("status") if r.get("status") != "ok" else "",
            }
        )
    lines.append(
        C.markdown_table(
            rows,
            [
                ("m", "m", "d"),
                ("N", "N of D", "d"),
                ("dense", "dense", C.fmt_s),
                ("dense_rss", "dense RSS", C.fmt_bytes),
                ("cold", "Lanczos cold", C.fmt_s),
                ("warm", "warm", C.fmt_s),
                ("lz_rss", "Lanczos RSS", C.fmt_bytes),
                ("products", "products", "d"),
                ("err", "max rel eig err", ".1e"),
                ("cos", "min cosine", ".12f"),
                ("stress3", "stress 3 dims", ".4f"),
                ("note", "note", "{}".format),
            ],
        )
    )
    lines.append(
        "\nInPCA of a streamed DistanceOperator (D never stored; each product one "
        "pass over all pairs).\n"
    )
    rows = []
    for r in payload["streamed"]:
        rows.append(
            {
                "m": r.get("m"),
                "N": r.get("N"),
                "time": _get(r, "streamed", "time_s"),
                "warm": _get(r, "streamed", "warm_s"),
                "rss": _get(r, "streamed", "rss_peak_above_start_bytes"),
                "products": _get(r, "streamed", "num_products"),
                "per": r.get("seconds_per_product"),
                "err": _get(r, "agreement", "max_rel_eig_err"),
                "note": r.get("status") if r.get("status") != "ok" else "",
            }
        )
    lines.append(
        C.markdown_table(
            rows,
            [
                ("m", "m", "d"),
                ("N", "N", "d"),
                ("time", "cold", C.fmt_s),
                ("warm", "warm", C.fmt_s),
                ("rss", "peak RSS", C.fmt_bytes),
                ("products", "products", "d"),
                ("per", "warm s / product", ".3g"),
                ("err", "max rel eig err vs dense", ".1e"),
                ("note", "note", "{}".format),
            ],
        )
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    run(quick=args.quick, out_dir=args.out)
    print(f"trajectory benchmark done in {math.ceil(time.perf_counter() - t0)} s", flush=True)


if __name__ == "__main__":
    main()
