"""Issue 3 performance and issue 5 part 4: matrix-free vs dense on the reference model.

Reference model (``digits_mlp()``: P = 4810, T = 625, float32), all in one run, each case in a
fresh process:

* dense: ``J.to_dense()`` (chunked forward mode) + ``mtj.dense_svd`` (LAPACK, float64) -- the
  oracle, and the paper's route;
* ``top_singular(J, 50, method="lanczos")`` and ``method="randomized"``;
* ``region_counts(J, method="slq")`` (lo = 0.9, hi = 1.1), plain;
* ``analysis.spectrum_summary(J)``: the library's default counts (top triplets deflated from the
  quadrature, Lanczos steps set by the largest remaining value);
* anchors: ``scipy.sparse.linalg.svds`` on ``J.to_scipy()`` with ARPACK and PROPACK;
* block Lanczos: ``top_singular(J, 50, block_size=...)`` (``"auto"``: chosen from the measured
  per-column cost of a block product);
* peers (optional ``bench`` extra, skipped when absent; :mod:`benchmarks._peers`): matfree's
  fixed-depth ``svd_partial(bidiag(depth))`` with a JVP matvec, at a few depths, and imate's
  ``eigencount(gram=True, method="slq")`` on the explicit dense J, with its claimed 95% error
  beside its actual error.

Targets: top-50 triplets >= 5x faster than dense J + SVD with the top-50 within 1e-4 relative of
dense; region counts with stderr <= 0.5% of P in no more wall time than dense J + SVD (and within
1% of P of dense). Matrix-free times are "cold" (first call: compilation included) unless
marked warm; the dense time includes the compilation of the chunked forward product.

Quick mode uses a narrower MLP (hidden = 16, P = 1210) and k = 10 so it fits the time limit.

Run: ``python -m benchmarks.run --only reference`` (``--quick`` for the small version). A subset
of the cases, always with the dense oracle in the same run::

    python -c "from benchmarks import bench_reference as B; \\
               B.run(config={'cases': ['slq_deflated']})"
"""

from __future__ import annotations

import numpy as np

from benchmarks import _common as C

FULL = dict(
    model=dict(kind="mlp", hidden=64, num_epochs=25),
    k=50,
    lanczos={},
    randomized={"oversample": 50, "power_iters": 3},
    slq=dict(num_probes=8, num_steps=200),
    svd_vectors=False,
    anchors=("arpack", "propack"),
    lanczos_warm=True,
    slq_deflated={},
    slq_fast=dict(num_probes=6, num_steps=154),
    block={"block_size": "auto"},
    block_fixed={"block_size": 64},
    peers_matfree=dict(depths=[100, 150, 200]),
    peers_imate=dict(num_probes=10, degree=200),
)
QUICK = dict(
    model=dict(kind="mlp", hidden=16, num_epochs=8),
    k=10,
    lanczos={},
    randomized={"oversample": 20, "power_iters": 3},
    slq=dict(num_probes=8, num_steps=80),
    svd_vectors=False,
    anchors=("arpack",),
    lanczos_warm=False,
    slq_deflated=dict(num_probes=4, num_steps=40, num_deflate=10),
    block={"block_size": "auto"},
    peers_matfree=dict(depths=[20, 40]),
    peers_imate=dict(num_probes=10, degree=40),
)


def rel_err(s, s_ref, k):
    s, s_ref = np.asarray(s, float)[:k], np.asarray(s_ref, float)[:k]
    n = min(len(s), len(s_ref))
    return float(np.max(np.abs(s[:n] - s_ref[:n]) / np.abs(s_ref[:n]))) if n else None


def run(quick: bool = False, out_dir=None, config: dict | None = None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    cfg.update(config or {})
    info = C.machine_info()
    model, k = cfg["model"], cfg["k"]
    cases: dict = {}
    tag = "_quick" if quick else ""

    wanted = cfg.get("cases")  # None: all; else the names to run (dense always runs)

    def case(name, target, kw, timeout):
        if wanted is not None and name != "dense" and name not in wanted:
            return
        cases[name] = C.run_isolated(target, kw, timeout=timeout)
        # raw results so far, so an interrupted run keeps what it measured
        C.write_json(
            "reference" + tag,
            {
                "benchmark": "reference",
                "quick": quick,
                "config": cfg,
                "machine": info,
                "cases": cases,
                "partial": True,
            },
            out_dir,
        )

    print(f"reference: dense J + SVD on {model}", flush=True)
    case("dense", "benchmarks._cases:dense", dict(model=model, vectors=cfg["svd_vectors"]), 1800)
    print("reference: matrix-free", flush=True)
    case(
        "lanczos",
        "benchmarks._cases:topk",
        dict(model=model, k=k, method="lanczos", opts=cfg["lanczos"], warm=cfg["lanczos_warm"]),
        1200,
    )
    case(
        "randomized",
        "benchmarks._cases:topk",
        dict(model=model, k=k, method="randomized", opts=cfg["randomized"]),
        1200,
    )
    if cfg.get("block") is not None:
        case(
            "lanczos_block",
            "benchmarks._cases:topk",
            dict(model=model, k=k, method="lanczos", opts=cfg["block"]),
            1200,
        )
    if cfg.get("block_fixed") is not None:  # the block path itself, whatever auto would choose
        case(
            "lanczos_block_fixed",
            "benchmarks._cases:topk",
            dict(model=model, k=k, method="lanczos", opts=cfg["block_fixed"]),
            1200,
        )
    case("slq", "benchmarks._cases:regions", dict(model=model, **cfg["slq"]), 1200)
    for name in ("slq_deflated", "slq_fast"):
        if cfg.get(name) is not None:
            case(name, "benchmarks._cases:spectrum", dict(model=model, **cfg[name]), 2400)
    for solver in cfg["anchors"]:
        case(
            f"svds_{solver}",
            "benchmarks._cases:svds",
            dict(
                model=model,
                k=k,
                solver=solver,
                tol=cfg.get("svds_tol", 1e-6),
                maxiter=cfg.get("svds_maxiter", 2000),
            ),
            cfg.get("svds_timeout", 1200),
        )
    if cfg.get("peers_matfree") is not None:
        case(
            "matfree",
            "benchmarks._peers:matfree_bidiag",
            dict(model=model, k=k, **cfg["peers_matfree"]),
            1800,
        )
    if cfg.get("peers_imate") is not None:
        case(
            "imate", "benchmarks._peers:imate_counts", dict(model=model, **cfg["peers_imate"]), 1800
        )
    payload = {
        "benchmark": "reference",
        "quick": quick,
        "config": cfg,
        "machine": C.finish_info(info),
        "cases": cases,
    }
    return render(payload, out_dir)


def render(payload: dict, out_dir=None) -> dict:
    """Summary, JSON, markdown table and plot from the raw cases (re-runnable from the JSON)."""
    tag = "_quick" if payload["quick"] else ""
    payload["summary"] = summarise(payload)
    C.write_json("reference" + tag, payload, out_dir)
    C.write_text("reference" + tag + ".md", table(payload), out_dir)
    try:
        plot(payload, out_dir)
    except Exception as e:  # noqa: BLE001 - a plot must not lose the numbers
        print(f"  plot failed: {e}")
    return payload


def summarise(payload: dict) -> dict:
    cases, cfg = payload["cases"], payload["config"]
    k = cfg["k"]
    d = cases["dense"]
    out: dict = {"rows": []}
    if d.get("status") != "ok":
        out["dense_failed"] = d.get("why")
        return out
    P = d["P"]
    t_dense = d["total_s"]
    s_dense = np.asarray(d["s_top"])
    out.update(
        {
            "P": P,
            "T": d["T"],
            "t_train_s": d["t_train_s"],
            "dense_s": t_dense,
            "dense_regions": d["regions"],
        }
    )
    rows = out["rows"]
    rows.append(
        {
            "method": "dense J (to_dense) + SVD",
            "time_s": t_dense,
            "warm_s": None,
            "speedup": 1.0,
            "products": P,
            "per_product_s": d["to_dense_s"] / P,
            "train_runs": t_dense / d["t_train_s"],
            "rel_err": 0.0,
            "peak_rss": d.get("rss_peak_above_start_bytes"),
            "note": f"to_dense {C.fmt_s(d['to_dense_s'])} + SVD {C.fmt_s(d['svd_values_s'])}",
        }
    )
    for name in (
        "lanczos",
        "lanczos_block",
        "lanczos_block_fixed",
        "randomized",
        "svds_arpack",
        "svds_propack",
    ):
        c = cases.get(name)
        if c is None:
            continue
        if c.get("status") != "ok":
            rows.append({"method": name, "note": f"{c.get('status')}: {c.get('why')}"})
            continue
        t = c["cold_s"]
        err = rel_err(c["s"], s_dense, k)
        conv = c.get("converged")
        note = ""
        if conv is not None:
            note = f"{int(np.sum(conv))}/{k} flagged converged; status {c.get('solver_status')}"
        if c.get("svds_status"):
            note = c["svds_status"]
        if c.get("auto_choice"):
            note += f"; {c['auto_choice']}"
        rows.append(
            {
                "method": {
                    "lanczos": f"top_singular lanczos k={k}",
                    "lanczos_block": f"top_singular lanczos k={k} {c.get('opts')}",
                    "lanczos_block_fixed": f"top_singular lanczos k={k} {c.get('opts')}",
                    "randomized": f"top_singular randomized k={k} {c.get('opts')}",
                    "svds_arpack": f"scipy svds ARPACK k={k}",
                    "svds_propack": f"scipy svds PROPACK k={k}",
                }[name],
                "time_s": t,
                "warm_s": c.get("warm_s"),
                "speedup": t_dense / t,
                "speedup_warm": t_dense / c["warm_s"] if c.get("warm_s") else None,
                "products": c["num_products"],
                "per_product_s": c.get("warm_s", t) / max(1, c["num_products"]),
                "train_runs": t / c["t_train_s"],
                "rel_err": err,
                "peak_rss": c.get("rss_peak_above_start_bytes"),
                "note": note,
                "meets_speed": t_dense / t >= 5.0 if name == "lanczos" else None,
                "meets_accuracy": err is not None and err <= 1e-4,
            }
        )
    mf = cases.get("matfree")
    if mf is not None and mf.get("status") != "ok":
        rows.append(
            {
                "method": "matfree svd_partial(bidiag)",
                "note": f"{mf.get('status')}: {mf.get('why')}",
            }
        )
    elif mf is not None:
        for r in mf["runs"]:
            err = rel_err(r["s"], s_dense, k)
            rows.append(
                {
                    "method": f"matfree svd_partial(bidiag({r['depth']})) k={k}, JVP matvec",
                    "time_s": r["cold_s"],
                    "speedup": t_dense / r["cold_s"],
                    "products": r["num_products"],
                    "per_product_s": r["cold_s"] / max(1, r["num_products"]),
                    "train_runs": r["cold_s"] / mf["t_train_s"],
                    "rel_err": err,
                    "note": "fixed depth: no residuals, no flags",
                    "meets_accuracy": err is not None and err <= 1e-4,
                }
            )
    for name in ("slq", "slq_deflated", "slq_fast"):
        if cases.get(name):
            out[name] = _slq_summary(cases[name], d, P, t_dense)
    im = cases.get("imate")
    if im is not None:
        if im.get("status") != "ok":
            out["imate"] = {"failed": f"{im.get('status')}: {im.get('why')}"}
        else:
            dr = d["regions"]
            out["imate"] = {
                "counts": im["counts"],
                "claimed_95": im["claimed_95"],
                "actual_err": {g: abs(im["counts"][g] - dr[g]) for g in dr},
                "time_s": im["cold_s"],
                "to_dense_s": im["to_dense_s"],
                "slq_s": im["slq_s"],
                "products": im["num_products"],
                "num_probes": im["num_probes"],
                "degree": im["degree"],
                "version": im.get("version"),
            }
    return out


def _slq_summary(sl: dict, d: dict, P: int, t_dense: float) -> dict:
    """Counts against the dense ones: errors and stderr as fractions of P, targets met."""
    if sl.get("status") == "ok":
        r = sl["runs"][0]
        dr = d["regions"]
        errs = {g: abs(r[g] - dr[g]) / P for g in ("chaotic", "bulk", "stable")}
        se = {g: r["stderr"][g] / P for g in ("chaotic", "bulk", "stable")}
        return {
            "counts": {g: r[g] for g in ("chaotic", "bulk", "stable")},
            "stderr": r["stderr"],
            "dense": dr,
            "abs_err_frac_P": errs,
            "stderr_frac_P": se,
            "time_s": sl["cold_s"],
            "products": sl["num_products"],
            "per_product_s": sl["cold_s"] / sl["num_products"],
            "num_probes": sl["num_probes"],
            "num_steps": r.get("num_steps") or sl["num_steps"],
            "num_deflated": r.get("num_deflated"),
            "warnings": r.get("warnings", []),
            "meets_stderr": max(se.values()) <= 0.005,
            "meets_time": sl["cold_s"] <= t_dense,
            "meets_1pct": max(errs.values()) <= 0.01,
            "z": {
                g: (r[g] - dr[g]) / r["stderr"][g] if r["stderr"][g] > 0 else None
                for g in ("chaotic", "bulk", "stable")
            },
            "peak_rss": sl.get("rss_peak_above_start_bytes"),
            "num_deflate": sl.get("num_deflate"),
            "bounds": r.get("bounds"),
            # the dense count within the guaranteed quadrature bounds widened by 2 stderr?
            "dense_in_range": None
            if not r.get("bounds")
            else {
                g: bool(
                    r["bounds"][g][0] - 2 * r["stderr"][g]
                    <= dr[g]
                    <= r["bounds"][g][1] + 2 * r["stderr"][g]
                )
                for g in ("chaotic", "bulk", "stable")
            },
        }
    return {"failed": f"{sl.get('status')}: {sl.get('why')}"}


def table(payload: dict) -> str:
    s = payload["summary"]
    cfg = payload["config"]
    cmd = "python -m benchmarks.run --only reference" + (" --quick" if payload["quick"] else "")
    lines = [
        f"### Matrix-free vs dense on the digits MLP (hidden = {cfg['model']['hidden']}, "
        f"P = {s.get('P')}, T = {s.get('T')}, float32)\n",
        C.header_lines(payload["machine"], cmd),
        "",
    ]
    if "dense_failed" in s:
        lines.append(f"Dense oracle failed: {s['dense_failed']}\n")
        return "\n".join(lines)
    lines.append(
        f"One training run: {C.fmt_s(s['t_train_s'])}. Top-{cfg['k']} singular values; "
        "errors are max relative error against the dense SVD. Times are cold (first "
        "call, compilation included); 'warm' is a second identical call.\n"
    )
    lines.append(
        C.markdown_table(
            s["rows"],
            [
                ("method", "method", "{}".format),
                ("time_s", "wall", C.fmt_s),
                ("warm_s", "warm", C.fmt_s),
                ("speedup", "speed-up vs dense", ".2f"),
                ("products", "products", "d"),
                ("per_product_s", "time / product", C.fmt_s),
                ("train_runs", "x training runs", ".0f"),
                ("rel_err", "max rel err", ".1e"),
                ("peak_rss", "peak RSS above setup", C.fmt_bytes),
                ("note", "note", "{}".format),
            ],
        )
    )
    for name, title in (
        ("slq", "plain SLQ"),
        ("slq_deflated", "analysis.spectrum_summary default: top triplets deflated, then SLQ"),
        (
            "slq_fast",
            "analysis.spectrum_summary, fewer probes and steps (6 x 154, top 150 deflated)",
        ),
    ):
        sl = s.get(name)
        if sl and "failed" not in sl:
            rows = []
            for g in ("chaotic", "bulk", "stable"):
                rows.append(
                    {
                        "region": g,
                        "slq": sl["counts"][g],
                        "stderr": sl["stderr"][g],
                        "dense": sl["dense"][g],
                        "err": sl["abs_err_frac_P"][g] * 100,
                        "se": sl["stderr_frac_P"][g] * 100,
                        "z": sl["z"][g],
                        "bounds": (
                            "[{:.0f}, {:.0f}]".format(*sl["bounds"][g])
                            if sl.get("bounds")
                            else None
                        ),
                        "in_range": (sl["dense_in_range"][g] if sl.get("dense_in_range") else None),
                    }
                )
            defl = f"{sl['num_deflated']} triplets deflated, " if sl.get("num_deflated") else ""
            lines.append(
                f"\nRegion counts ({title}, {defl}{sl['num_probes']} probes x "
                f"{sl['num_steps']} steps; {sl['products']} products in all, "
                f"{C.fmt_s(sl['time_s'])}, "
                f"{C.fmt_s(sl['per_product_s'])} per product; dense J + SVD "
                f"{C.fmt_s(s['dense_s'])}):\n"
            )
            lines.append(
                C.markdown_table(
                    rows,
                    [
                        ("region", "region", "{}".format),
                        ("slq", "SLQ", ".1f"),
                        ("stderr", "stderr", ".1f"),
                        ("dense", "dense", "d"),
                        ("err", "|error| (% of P)", ".2f"),
                        ("se", "stderr (% of P)", ".2f"),
                        ("z", "error / stderr", "+.2f"),
                        ("bounds", "quadrature bounds", C.fmt),
                        ("in_range", "dense in bounds +- 2 stderr", C.fmt),
                    ],
                )
            )
            lines.append(
                f"\nstderr <= 0.5% of P: {C.fmt(sl['meets_stderr'])}; time <= dense: "
                f"{C.fmt(sl['meets_time'])}; within 1% of P of dense: "
                f"{C.fmt(sl['meets_1pct'])}."
                + (f" Warnings: {'; '.join(sl['warnings'])}" if sl["warnings"] else "")
                + "\n"
            )
        elif sl:
            lines.append(f"\n{title} region counts failed: {sl['failed']}\n")
    im = s.get("imate")
    if im and "failed" in im:
        lines.append(f"\nimate eigencount: {im['failed']}\n")
    elif im:
        lines.append(
            f"\nimate {im['version']} eigencount(gram=True, method='slq') on the dense J "
            f"({im['num_probes']} probes x degree {im['degree']}): {C.fmt_s(im['time_s'])} "
            f"(to_dense {C.fmt_s(im['to_dense_s'])} + SLQ {C.fmt_s(im['slq_s'])}), "
            f"{im['products']} products (P for J, then on the dense matrix):\n"
        )
        rows = [
            {
                "region": g,
                "count": im["counts"][g],
                "dense": s["dense_regions"][g],
                "claimed": im["claimed_95"][g],
                "actual": im["actual_err"][g],
                "inside": im["actual_err"][g] <= im["claimed_95"][g],
            }
            for g in ("chaotic", "bulk", "stable")
        ]
        lines.append(
            C.markdown_table(
                rows,
                [
                    ("region", "region", "{}".format),
                    ("count", "imate", ".1f"),
                    ("dense", "dense", "d"),
                    ("claimed", "claimed 95% error", ".1f"),
                    ("actual", "actual error", ".1f"),
                    ("inside", "actual <= claimed", C.fmt),
                ],
            )
        )
    return "\n".join(lines)


def plot(payload: dict, out_dir=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = payload["cases"]
    d = cases["dense"]
    if d.get("status") != "ok" or "s_all" not in d:
        return
    s = np.asarray(d["s_all"])
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].semilogy(np.arange(1, s.size + 1), s, "k-", lw=1, label="dense SVD")
    for name, mk in (("lanczos", "o"), ("randomized", "x"), ("svds_arpack", "+")):
        c = cases.get(name)
        if c and c.get("status") == "ok":
            sk = np.asarray(c["s"])
            ax[0].semilogy(np.arange(1, sk.size + 1), sk, mk, ms=4, label=name)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("index i")
    ax[0].set_ylabel("singular value")
    ax[0].legend()
    ax[0].set_title(f"Singular values, P = {d['P']}")
    sl = cases.get("slq")
    bins = np.linspace(0, min(3.0, s.max()), 61)
    ax[1].hist(np.clip(s, 0, bins[-1]), bins=bins, color="0.7", label="dense (exact)")
    if sl and sl.get("status") == "ok":
        r = sl["runs"][0]
        txt = "\n".join(
            f"{g}: {r[g]:.0f} +- {r['stderr'][g]:.0f} (dense {d['regions'][g]})"
            for g in ("chaotic", "bulk", "stable")
        )
        ax[1].text(
            0.98,
            0.97,
            "SLQ counts\n" + txt,
            transform=ax[1].transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    ax[1].axvline(0.9, color="r", lw=0.8)
    ax[1].axvline(1.1, color="r", lw=0.8)
    ax[1].set_xlabel("singular value (clipped at 3)")
    ax[1].set_ylabel("count")
    ax[1].set_title("Regions: stable < 0.9 <= bulk <= 1.1 < chaotic")
    m = payload["machine"]
    fig.suptitle(
        f"{m['cpu']} ({m['cpu_affinity']} cores), jax {m['versions']['jax']}, {m['date']}",
        fontsize=8,
    )
    fig.tight_layout()
    name = "reference" + ("_quick" if payload["quick"] else "") + ".png"
    fig.savefig((C.RESULTS if out_dir is None else C.Path(out_dir)) / name, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    run(quick=a.quick)
