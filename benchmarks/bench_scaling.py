"""Issue 5 parts 1 and 2: how dense and matrix-free costs grow with P and with T.

Part 1, scaling in P: digits MLPs of growing width (P from 4810 to ~1,000,000) and one deeper
model, T fixed (one epoch, 25 steps, so that the largest model stays affordable on 2 CPU
cores), each method in a fresh process:

* (a) dense ``J.to_dense()`` + ``dense_svd``: run while its estimated time and memory fit the
  budget (``--dense-budget``, default 600 s, and 60% of available memory); beyond that it is
  skipped and the estimate (per-column forward cost measured at that P times P, plus the SVD's
  P^3 extrapolated from the largest measured one; memory from the measured bytes per P^2) and
  the reason are recorded;
* (b) ``top_singular(method="lanczos")``, (c) ``method="randomized"``, (d) SLQ
  ``region_counts``: wall time (cold), products, time per product, cost in training runs, peak
  RSS above setup, and that peak per ``P * basis vectors`` (the constant of the O(P k) memory).

A method that fails or runs past its per-case limit is not tried at larger P (recorded why).

Part 2, scaling in T at the reference width (P = 4810): T = 100 ... 10,000 steps; XLA's
compiled memory of one reverse product per checkpoint option (and of one forward product), the
time per product, and measured peak RSS at two T.

Run: ``python -m benchmarks.run --only scaling`` (``--quick``: fewer, smaller sizes).
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks import _common as C

CHECKPOINTS = ("none", "step", "sqrt")


def _p_of(hidden: int, depth: int = 1) -> int:
    return 64 * hidden + hidden + (depth - 1) * (hidden * hidden + hidden) + 10 * hidden + 10


FULL_P = dict(
    models=[dict(kind="mlp", hidden=h, num_epochs=1) for h in (64, 1024, 4096, 13334)]
    + [dict(kind="mlp", hidden=256, depth=3, num_epochs=1)],
    k=10,
    lanczos=dict(max_products=200),
    randomized=dict(oversample=10, power_iters=1),
    slq=dict(num_probes=4, num_steps=20),
    case_timeout=480,
    dense_budget=600,
    cols=8,
)
QUICK_P = dict(
    models=[dict(kind="mlp", hidden=h, num_epochs=1) for h in (16, 256)],
    k=5,
    lanczos=dict(max_products=100),
    randomized=dict(oversample=5, power_iters=1),
    slq=dict(num_probes=4, num_steps=20),
    case_timeout=240,
    dense_budget=30,
    cols=8,
    combined=True,
)
FULL_T = dict(hidden=64, epochs=(4, 16, 40, 160, 400), rss_epochs=(40, 400))
QUICK_T = dict(hidden=64, epochs=(4, 16), rss_epochs=())


def model_p(m: dict) -> int:
    return _p_of(m["hidden"], m.get("depth", 1))


def model_label(m: dict) -> str:
    return f"h={m['hidden']}" + (f", depth={m['depth']}" if m.get("depth", 1) > 1 else "")


# ---------------------------------------------------------------------------------------
# Part 1
# ---------------------------------------------------------------------------------------


def run_p(
    quick: bool = False, out_dir=None, config: dict | None = None, dense_budget: float | None = None
) -> dict:
    cfg = dict(QUICK_P if quick else FULL_P)
    cfg.update(config or {})
    if dense_budget is not None:
        cfg["dense_budget"] = dense_budget
    info = C.machine_info()
    models = sorted(cfg["models"], key=model_p)
    rows = []
    stopped: dict[str, str] = {}
    svd_fit = None  # (P, seconds) of the largest measured dense SVD
    mem_per_p2 = None  # bytes per P^2 of the dense route, measured
    for m in models:
        P = model_p(m)
        print(f"scaling in P: {model_label(m)}, P = {P}", flush=True)
        row: dict = {"model": m, "P": P, "label": model_label(m)}
        combined = None
        if cfg.get("combined"):  # quick mode: costs + the three methods in one process
            combined = C.run_isolated(
                "benchmarks._cases:scan_all",
                dict(
                    model=m,
                    k=cfg["k"],
                    lanczos=cfg["lanczos"],
                    randomized=cfg["randomized"],
                    slq=cfg["slq"],
                    cols=cfg["cols"],
                ),
                timeout=cfg["case_timeout"],
                strict_memory=True,
            )
            costs = combined.get("costs", combined)
        else:
            costs = C.run_isolated(
                "benchmarks._cases:product_costs",
                dict(model=m, cols=cfg["cols"]),
                timeout=cfg["case_timeout"],
            )
        row["costs"] = costs
        # (a) dense, or its estimate
        est = None
        if costs.get("status") == "ok":
            col = costs["matmat_s"] / costs["cols"]
            svd_est = (svd_fit[1] * (P / svd_fit[0]) ** 3) if svd_fit else None
            mem_est = mem_per_p2 * P * P if mem_per_p2 else 24.0 * P * P
            est = {
                "to_dense_s": col * P,
                "svd_s": svd_est,
                "total_s": col * P + (svd_est or 0.0),
                "memory_bytes": mem_est,
            }
        row["dense_estimate"] = est
        reason = None
        if "dense" in stopped:
            reason = stopped["dense"]
        elif est is not None and est["memory_bytes"] > 0.6 * C.available_memory():
            reason = (
                f"memory: J and its SVD need ~{C.fmt_bytes(est['memory_bytes'])} "
                f"> 60% of the {C.fmt_bytes(C.available_memory())} available"
            )
        elif est is not None and svd_fit is not None and est["total_s"] > cfg["dense_budget"]:
            reason = (
                f"time: estimated {C.fmt_s(est['total_s'])} (to_dense "
                f"{C.fmt_s(est['to_dense_s'])} + SVD {C.fmt_s(est['svd_s'])}) > the "
                f"{cfg['dense_budget']:.0f} s budget"
            )
        if reason is None:
            d = C.run_isolated(
                "benchmarks._cases:dense",
                dict(model=m, keep_values=False),
                timeout=max(cfg["case_timeout"], 2 * cfg["dense_budget"]),
                strict_memory=True,
            )
            if d.get("status") == "ok":
                svd_fit = (P, d["svd_values_s"])
                if d.get("rss_peak_above_start_bytes"):
                    mem_per_p2 = max(mem_per_p2 or 0.0, d["rss_peak_above_start_bytes"] / P**2)
                d.pop("s_top", None)
                d.pop("s_bottom", None)
            else:
                stopped["dense"] = f"failed at P = {P}: {d.get('status')} ({d.get('why')})"
            row["dense"] = d
        else:
            row["dense"] = {"status": "skipped", "why": reason}
            if reason.startswith("memory"):
                stopped.setdefault("dense", f"skipped from P = {P} on: {reason}")
        # (b, c, d) matrix-free
        for name, target, kw in (
            (
                "lanczos",
                "benchmarks._cases:topk",
                dict(model=m, k=cfg["k"], method="lanczos", opts=cfg["lanczos"]),
            ),
            (
                "randomized",
                "benchmarks._cases:topk",
                dict(model=m, k=cfg["k"], method="randomized", opts=cfg["randomized"]),
            ),
            ("slq", "benchmarks._cases:regions", dict(model=m, **cfg["slq"])),
        ):
            if name in stopped:
                row[name] = {"status": "skipped", "why": stopped[name]}
                continue
            if combined is not None:
                r = combined.get(name) or {
                    "status": combined.get("status"),
                    "why": combined.get("why"),
                }
            else:
                r = C.run_isolated(target, kw, timeout=cfg["case_timeout"], strict_memory=True)
            if r.get("status") != "ok":
                stopped[name] = f"{r.get('status')} at P = {P}: {r.get('why')}"
            elif r["cold_s"] > 0.6 * cfg["case_timeout"]:
                stopped[name] = (
                    f"took {C.fmt_s(r['cold_s'])} at P = {P}; the next size would "
                    f"exceed the {cfg['case_timeout']} s per-case limit"
                )
            for key in ("s_all", "U", "V"):
                r.pop(key, None)
            row[name] = r
        rows.append(row)
        _save("scaling_p", quick, cfg, info, rows, out_dir, partial=True)  # kept if interrupted
    payload = _save("scaling_p", quick, cfg, C.finish_info(info), rows, out_dir)  # raw, first
    return render_p(payload, out_dir)


def _save(name: str, quick: bool, cfg: dict, info: dict, rows: list, out_dir, partial=False):
    """Write the raw rows of part ``name`` (``partial``: a run still in progress)."""
    payload = {"benchmark": name, "quick": quick, "config": cfg, "machine": info, "rows": rows}
    if partial:
        payload["partial"] = True
    C.write_json(name + ("_quick" if quick else ""), payload, out_dir)
    return payload


def _render(name: str, payload: dict, summarise, table, plot, out_dir=None) -> dict:
    """Summary, JSON, markdown table and plot of part ``name`` from its raw payload."""
    payload["summary"] = summarise(payload)
    tag = "_quick" if payload["quick"] else ""
    C.write_json(name + tag, payload, out_dir)
    C.write_text(name + tag + ".md", table(payload), out_dir)
    try:
        plot(payload, out_dir)
    except Exception as e:  # noqa: BLE001
        print(f"  plot failed: {e}")
    return payload


def render_p(payload: dict, out_dir=None) -> dict:
    return _render("scaling_p", payload, summarise_p, table_p, plot_p, out_dir)


def _basis_vectors(name: str, cfg: dict) -> int:
    k = cfg["k"]
    if name == "lanczos":
        m = cfg["lanczos"].get("num_basis") or max(2 * k + 20, 40)
        return 2 * m + 1
    if name == "randomized":
        return 2 * (k + cfg["randomized"].get("oversample", 10))
    return (2 * cfg["slq"]["num_steps"] + 1) * cfg["slq"]["num_probes"]


def summarise_p(payload: dict) -> list[dict]:
    cfg = payload["config"]
    out = []
    for row in payload["rows"]:
        P = row["P"]
        costs = row.get("costs", {})
        t_train = costs.get("t_train_s")
        d = row.get("dense", {})
        dense_t = d.get("total_s") if d.get("status") == "ok" else None
        est = row.get("dense_estimate") or {}
        base = {
            "label": row["label"],
            "P": P,
            "T": costs.get("T"),
            "t_train_s": t_train,
            "mv_s": costs.get("mv_s"),
            "rmv_s": costs.get("rmv_s"),
            "matmat_col_s": (costs["matmat_s"] / costs["cols"]) if costs.get("matmat_s") else None,
            "rmatmat_col_s": (costs["rmatmat_s"] / costs["cols"])
            if costs.get("rmatmat_s")
            else None,
        }
        ref_t = dense_t if dense_t is not None else est.get("total_s")
        out.append(
            {
                **base,
                "method": "dense",
                "status": d.get("status"),
                "time_s": dense_t,
                "estimate_s": est.get("total_s"),
                "products": P if dense_t is not None else None,
                "train_runs": dense_t / t_train if dense_t and t_train else None,
                "peak_rss": d.get("rss_peak_above_start_bytes"),
                "estimate_memory": est.get("memory_bytes"),
                "why": d.get("why", ""),
            }
        )
        for name in ("lanczos", "randomized", "slq"):
            r = row.get(name, {})
            ok = r.get("status") == "ok"
            t = r.get("cold_s") if ok else None
            rss = r.get("rss_peak_above_start_bytes") if ok else None
            note = r.get("why", "")
            if ok and name != "slq":
                conv = r.get("converged") or []
                note = f"{int(np.sum(conv))}/{len(conv)} converged ({r.get('solver_status')})"
            elif ok:
                rr = r["runs"][0]
                note = (
                    f"chaotic {rr['chaotic']:.0f}+-{rr['stderr']['chaotic']:.0f}, bulk "
                    f"{rr['bulk']:.0f}+-{rr['stderr']['bulk']:.0f}, stable "
                    f"{rr['stable']:.0f}+-{rr['stderr']['stable']:.0f}"
                )
            nb = _basis_vectors(name, cfg)
            out.append(
                {
                    **base,
                    "method": name,
                    "status": r.get("status"),
                    "time_s": t,
                    "products": r.get("num_products") if ok else None,
                    "per_product_s": (t / r["num_products"])
                    if ok and r.get("num_products")
                    else None,
                    "train_runs": t / t_train if t and t_train else None,
                    "speedup_vs_dense": (ref_t / t) if t and ref_t else None,
                    "speedup_is_estimate": dense_t is None,
                    "peak_rss": rss,
                    "basis_vectors": nb,
                    "bytes_per_P_vector": (rss / (P * nb)) if rss else None,
                    "why": note,
                }
            )
    return out


def memory_fits(payload: dict) -> dict:
    """Fit peak RSS = a + b P per matrix-free method; b / vectors is the O(P k) constant."""
    fits = {}
    for name in ("lanczos", "randomized", "slq"):
        pts = [
            (r["P"], r["peak_rss"])
            for r in payload["summary"]
            if r["method"] == name and r.get("peak_rss")
        ]
        if len(pts) < 2:
            continue
        P, m = np.array(pts, dtype=float).T
        b, a = np.polyfit(P, m, 1)
        nv = _basis_vectors(name, payload["config"])
        fits[name] = {
            "a": float(a),
            "bytes_per_P": float(b),
            "vectors": nv,
            "bytes_per_P_vector": float(b) / nv,
            "points": len(pts),
        }
    return fits


def table_p(payload: dict) -> str:
    cfg = payload["config"]
    cmd = "python -m benchmarks.run --only scaling" + (" --quick" if payload["quick"] else "")
    lines = [
        "### Scaling in P (digits MLPs, T = 25 steps, float32)\n",
        C.header_lines(payload["machine"], cmd),
        "",
        f"top-k with k = {cfg['k']}; Lanczos {cfg['lanczos']}; randomized "
        f"{cfg['randomized']}; SLQ {cfg['slq']}. Times are cold (compilation included). "
        "'x train' is the wall time in units of one training run at that P. "
        "Speed-ups against dense use the estimate where dense was skipped (marked ~). "
        "'bytes / (P x vectors)' is the measured peak RSS above setup divided by P times "
        "the vectors the method stores (the constant of its O(P k) memory; 4 bytes is one "
        "float32 vector entry).\n",
    ]
    rows = []
    for r in payload["summary"]:
        rr = dict(r)
        if r["method"] == "dense" and r["time_s"] is None:
            rr["time_s"] = (
                f"skipped (~{C.fmt_s(r['estimate_s'])})" if r.get("estimate_s") else "skipped"
            )
        if r.get("speedup_vs_dense") is not None:
            rr["speedup"] = (
                "~" if r.get("speedup_is_estimate") else ""
            ) + f"{r['speedup_vs_dense']:.3g}"
        rows.append(rr)
    lines.append(
        C.markdown_table(
            rows,
            [
                ("label", "model", "{}".format),
                ("P", "P", "d"),
                ("method", "method", "{}".format),
                ("time_s", "wall", C.fmt_s),
                ("products", "products", C.fmt),
                ("per_product_s", "time / product", C.fmt_s),
                ("train_runs", "x train", ".3g"),
                ("speedup", "speed-up vs dense", C.fmt),
                ("peak_rss", "peak RSS", C.fmt_bytes),
                ("bytes_per_P_vector", "bytes / (P x vectors)", ".3g"),
                ("why", "notes", "{}".format),
            ],
        )
    )
    fits = memory_fits(payload)
    if fits:
        lines.append(
            "\nMemory fit across P (least squares, peak RSS above setup = a + b P, "
            "sizes where the method ran): "
            + "; ".join(
                f"{n}: b = {f['bytes_per_P']:.0f} bytes per parameter = "
                f"{f['bytes_per_P_vector']:.2f} bytes per parameter per stored "
                f"vector ({f['vectors']} vectors), a = {C.fmt_bytes(f['a'])}"
                for n, f in fits.items()
            )
            + ".\n"
        )
    prod_rows = [r for r in payload["summary"] if r["method"] == "dense"]
    lines.append(
        "\nProduct costs at each P (one training run; single products; per column of a "
        f"{cfg['cols']}-column block product inside jit):\n"
    )
    lines.append(
        C.markdown_table(
            prod_rows,
            [
                ("label", "model", "{}".format),
                ("P", "P", "d"),
                ("t_train_s", "train", C.fmt_s),
                ("mv_s", "mv", C.fmt_s),
                ("rmv_s", "rmv", C.fmt_s),
                ("matmat_col_s", "matmat / col", C.fmt_s),
                ("rmatmat_col_s", "rmatmat / col", C.fmt_s),
                ("estimate_memory", "dense memory (est.)", C.fmt_bytes),
            ],
        )
    )
    return "\n".join(lines)


def plot_p(payload: dict, out_dir=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = payload["summary"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("dense", "ks-"), ("lanczos", "o-"), ("randomized", "x-"), ("slq", "^-")):
        pts = [(r["P"], r["time_s"]) for r in summ if r["method"] == name and r["time_s"]]
        if pts:
            ax[0].loglog(*zip(*pts, strict=False), style, label=name)
        if name == "dense":
            est = [
                (r["P"], r["estimate_s"])
                for r in summ
                if r["method"] == "dense" and r["time_s"] is None and r.get("estimate_s")
            ]
            if est:
                ax[0].loglog(
                    *zip(*est, strict=False), "ks:", mfc="none", label="dense (estimate, skipped)"
                )
        mem = [(r["P"], r["peak_rss"]) for r in summ if r["method"] == name and r.get("peak_rss")]
        if mem:
            ax[1].loglog(*zip(*mem, strict=False), style, label=name)
    est_m = [
        (r["P"], r["estimate_memory"])
        for r in summ
        if r["method"] == "dense" and r["time_s"] is None and r.get("estimate_memory")
    ]
    if est_m:
        ax[1].loglog(*zip(*est_m, strict=False), "ks:", mfc="none", label="dense (estimate)")
    ax[1].axhline(
        payload["machine"]["memory_total_gib"] * C.GiB, color="r", lw=0.8, label="machine memory"
    )
    ax[0].set_xlabel("P")
    ax[0].set_ylabel("wall time (s, cold)")
    ax[0].legend(fontsize=8)
    ax[1].set_xlabel("P")
    ax[1].set_ylabel("peak RSS above setup (bytes)")
    ax[1].legend(fontsize=8)
    m = payload["machine"]
    fig.suptitle(
        f"Scaling in P (T = 25): {m['cpu']} ({m['cpu_affinity']} cores), "
        f"jax {m['versions']['jax']}, {m['date']}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(
        (C.RESULTS if out_dir is None else C.Path(out_dir))
        / ("scaling_p" + ("_quick" if payload["quick"] else "") + ".png"),
        dpi=110,
    )
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Part 2
# ---------------------------------------------------------------------------------------


def run_t(quick: bool = False, out_dir=None, config: dict | None = None) -> dict:
    cfg = dict(QUICK_T if quick else FULL_T)
    cfg.update(config or {})
    info = C.machine_info()
    rows = []
    for ep in cfg["epochs"]:
        m = dict(kind="mlp", hidden=cfg["hidden"], num_epochs=ep)
        print(f"scaling in T: T = {25 * ep}", flush=True)
        time_it = ep <= cfg.get("time_max_epochs", 10**9)
        r = C.run_isolated(
            "benchmarks._cases:reverse_memory",
            dict(model=m, repeat=1 if ep >= 160 else 2, time_it=time_it),
            timeout=900,
        )
        r["rss"] = {}
        if ep in cfg["rss_epochs"]:
            for ck in CHECKPOINTS:
                r["rss"][ck] = C.run_isolated(
                    "benchmarks._cases:product_rss",
                    dict(model=m, kind="vjp", checkpoint=ck),
                    timeout=900,
                    strict_memory=True,
                )
            r["rss"]["jvp"] = C.run_isolated(
                "benchmarks._cases:product_rss",
                dict(model=m, kind="jvp"),
                timeout=900,
                strict_memory=True,
            )
        rows.append(r)
        _save("scaling_t", quick, cfg, info, rows, out_dir, partial=True)  # kept if interrupted
    payload = _save("scaling_t", quick, cfg, C.finish_info(info), rows, out_dir)  # raw, first
    return render_t(payload, out_dir)


def render_t(payload: dict, out_dir=None) -> dict:
    return _render("scaling_t", payload, summarise_t, table_t, plot_t, out_dir)


def summarise_t(payload: dict) -> dict:
    rows = []
    for r in payload["rows"]:
        if r.get("status") != "ok":
            rows.append({"T": None, "why": r.get("why")})
            continue
        row = {
            "T": r["T"],
            "P": r["P"],
            "t_train_s": r["t_train_s"],
            "jvp_temp": r["jvp_memory"].get("temp_bytes"),
            "jvp_s": r.get("jvp_s"),
            "lin_cache": r.get("linearize_cache_bytes"),
        }
        for ck in CHECKPOINTS:
            row[f"temp_{ck}"] = r[f"vjp_memory[{ck}]"].get("temp_bytes")
            row[f"cache_{ck}"] = r.get(f"pullback_cache_bytes[{ck}]")
            row[f"time_{ck}"] = r.get(f"vjp_s[{ck}]")
            row[f"ratio_{ck}"] = (
                (r[f"vjp_s[{ck}]"] / r["t_train_s"]) if r.get(f"vjp_s[{ck}]") else None
            )
            rss = (r.get("rss") or {}).get(ck)
            row[f"rss_{ck}"] = (
                rss.get("rss_peak_above_start_bytes") if rss and rss.get("status") == "ok" else None
            )
        rss = (r.get("rss") or {}).get("jvp")
        row["rss_jvp"] = (
            rss.get("rss_peak_above_start_bytes") if rss and rss.get("status") == "ok" else None
        )
        rows.append(row)
    ok = [r for r in rows if r.get("T")]
    growth = {}
    if len(ok) >= 2:
        a, b = ok[0], ok[-1]
        for key in (
            "jvp_temp",
            "temp_none",
            "temp_step",
            "temp_sqrt",
            "rss_none",
            "rss_step",
            "rss_sqrt",
            "cache_none",
            "cache_step",
            "cache_sqrt",
        ):
            if a.get(key) and b.get(key):
                growth[key] = math.log(b[key] / a[key]) / math.log(b["T"] / a["T"])
    return {"rows": rows, "growth_exponent": growth}


def table_t(payload: dict) -> str:
    s = payload["summary"]
    cmd = "python -m benchmarks.run --only scaling" + (" --quick" if payload["quick"] else "")
    P = next((r["P"] for r in s["rows"] if r.get("P")), None)
    lines = [
        f"### Scaling in T (digits MLP, hidden = {payload['config']['hidden']}, P = {P}, "
        "float32)\n",
        C.header_lines(payload["machine"], cmd),
        "",
        "Products here are uncached (``forward='jvp', cache_reverse=False``: the primal is "
        "re-run inside every product, so its residuals live only during the product). 'mem' "
        "is XLA's compiled temporary buffer size of one product (exact, independent of load); "
        "'RSS' the measured peak above setup in a fresh process (only at some T); 'cache' the "
        "bytes the library's default ``'auto'`` mode would keep for the whole operator's life "
        "(cached pullback per checkpoint option; cached linearisation for the forward "
        "product). Fitted exponent a in memory ~ T^a between the smallest and largest T "
        "measured: " + ", ".join(f"{k}: {v:.2f}" for k, v in s["growth_exponent"].items()) + ".\n",
    ]
    lines.append(
        C.markdown_table(
            s["rows"],
            [
                ("T", "T", "d"),
                ("t_train_s", "train", C.fmt_s),
                ("jvp_temp", "JVP mem", C.fmt_bytes),
                ("temp_none", "VJP mem none", C.fmt_bytes),
                ("temp_step", "VJP mem step", C.fmt_bytes),
                ("temp_sqrt", "VJP mem sqrt", C.fmt_bytes),
                ("jvp_s", "JVP time", C.fmt_s),
                ("time_none", "VJP none", C.fmt_s),
                ("time_step", "VJP step", C.fmt_s),
                ("time_sqrt", "VJP sqrt", C.fmt_s),
                ("ratio_step", "VJP step / train", ".2f"),
                ("rss_none", "RSS none", C.fmt_bytes),
                ("rss_step", "RSS step", C.fmt_bytes),
                ("rss_sqrt", "RSS sqrt", C.fmt_bytes),
                ("rss_jvp", "RSS JVP", C.fmt_bytes),
                ("cache_none", "cache none", C.fmt_bytes),
                ("cache_step", "cache step", C.fmt_bytes),
                ("cache_sqrt", "cache sqrt", C.fmt_bytes),
                ("lin_cache", "linearize cache", C.fmt_bytes),
            ],
        )
    )
    return "\n".join(lines)


def plot_t(payload: dict, out_dir=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["summary"]["rows"] if r.get("T")]
    T = [r["T"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].loglog(T, [r["jvp_temp"] for r in rows], "k^-", label="JVP")
    for ck, st in (("none", "o-"), ("step", "s-"), ("sqrt", "d-")):
        ax[0].loglog(T, [r[f"temp_{ck}"] for r in rows], st, label=f"VJP {ck}")
        ax[1].loglog(T, [r[f"time_{ck}"] for r in rows], st, label=f"VJP {ck}")
    ax[1].loglog(T, [r["jvp_s"] for r in rows], "k^-", label="JVP")
    ax[1].loglog(T, [r["t_train_s"] for r in rows], "k--", label="training run")
    ax[0].set_xlabel("T (steps)")
    ax[0].set_ylabel("compiled temp memory of one product (bytes)")
    ax[1].set_xlabel("T (steps)")
    ax[1].set_ylabel("time of one product (s)")
    ax[0].legend(fontsize=8)
    ax[1].legend(fontsize=8)
    m = payload["machine"]
    fig.suptitle(
        f"Scaling in T (P = {rows[0]['P'] if rows else '?'}): {m['cpu']} "
        f"({m['cpu_affinity']} cores), "
        f"jax {m['versions']['jax']}, {m['date']}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(
        (C.RESULTS if out_dir is None else C.Path(out_dir))
        / ("scaling_t" + ("_quick" if payload["quick"] else "") + ".png"),
        dpi=110,
    )
    plt.close(fig)


def run(
    quick: bool = False, out_dir=None, dense_budget: float | None = None, parts=("p", "t")
) -> dict:
    out = {}
    if "t" in parts:
        out["t"] = run_t(quick, out_dir)
    if "p" in parts:
        out["p"] = run_p(quick, out_dir, dense_budget=dense_budget)
    return out


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    run(quick=a.quick)
