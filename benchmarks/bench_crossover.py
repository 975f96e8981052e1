"""Issue 5 target: matrix-free top-50 against dense J + SVD at the largest P where dense runs.

The dense route costs ``P`` forward products plus an ``O(P^3)`` SVD with ``O(P^2)`` memory; the
matrix-free top-k costs a few hundred products, each ~1-2 training runs, so the ratio grows
like ``P^2 / T`` once the SVD dominates. This part measures it side by side, each case in a
fresh process, on digits MLPs wider than the reference with a short training (one epoch,
T = 25 steps, so that the dense Jacobian is affordable at all): for every width

* dense: ``J.to_dense()`` + ``mtj.dense_svd`` (LAPACK ``gesdd``, float64, *values only*, the
  cheapest dense route: the paper's vectors would cost several times more);
* ``top_singular(J, 50, method="lanczos")``, cold (compilation included) and warm;
* the default region counts (``analysis.spectrum_summary``: top triplets deflated, then SLQ with
  its 95% ranges), cold -- the matrix-free route to what the dense SVD is used for;

and reports the speed-ups, the max relative error of the top-50 against the dense values and
the counts' errors (% of P) against the dense counts, with whether the dense counts lie in the
ranges.
The largest width is the largest whose dense route fits this machine's memory and a run of
about an hour on 2 cores (P = 19,210: J is 1.5 GB in float32, its float64 SVD ~6 GB of work
space).

Run: ``python -m benchmarks.run --only crossover`` (``--quick``: two tiny widths, seconds).
"""

from __future__ import annotations

from benchmarks import _common as C
from benchmarks import bench_reference as R

FULL = dict(
    models=[dict(kind="mlp", hidden=h, num_epochs=1) for h in (64, 128, 256)],
    k=50,
    lanczos={},
    counts={},
    dense_timeout=5400,
    topk_timeout=1800,
)
QUICK = dict(
    models=[dict(kind="mlp", hidden=h, num_epochs=1) for h in (16, 32)],
    k=10,
    lanczos={},
    counts=dict(num_probes=4, num_steps=40, num_deflate=10),
    dense_timeout=300,
    topk_timeout=300,
)


def run(quick: bool = False, out_dir=None, config: dict | None = None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    cfg.update(config or {})
    info = C.machine_info()
    tag = "_quick" if quick else ""
    sizes = []
    for model in cfg["models"]:
        print(f"crossover: {model}", flush=True)
        cases = {
            "dense": C.run_isolated(
                "benchmarks._cases:dense",
                dict(model=model, keep_values=False),
                timeout=cfg["dense_timeout"],
            ),
            "lanczos": C.run_isolated(
                "benchmarks._cases:topk",
                dict(model=model, k=cfg["k"], method="lanczos", opts=cfg["lanczos"], warm=True),
                timeout=cfg["topk_timeout"],
            ),
            "counts": C.run_isolated(
                "benchmarks._cases:spectrum",
                dict(model=model, **cfg.get("counts", {})),
                timeout=cfg["topk_timeout"],
            ),
        }
        sizes.append({"model": model, "cases": cases})
        C.write_json(
            "crossover" + tag,
            {
                "benchmark": "crossover",
                "quick": quick,
                "config": cfg,
                "machine": info,
                "sizes": sizes,
                "partial": True,
            },
            out_dir,
        )
    payload = {
        "benchmark": "crossover",
        "quick": quick,
        "config": cfg,
        "machine": C.finish_info(info),
        "sizes": sizes,
    }
    return render(payload, out_dir)


def summarise(payload: dict) -> list[dict]:
    """One row per width: dense and Lanczos times, speed-ups (cold, warm), accuracy."""
    rows = []
    k = payload["config"]["k"]
    for size in payload["sizes"]:
        s = R.summarise({"cases": size["cases"], "config": {"k": k}})
        model = size["model"]
        if "dense_failed" in s:
            rows.append({"hidden": model["hidden"], "note": f"dense failed: {s['dense_failed']}"})
            continue
        lz = next((r for r in s["rows"] if r["method"].startswith("top_singular lanczos")), None)
        d = size["cases"]["dense"]
        row = {
            "hidden": model["hidden"],
            "P": s["P"],
            "T": s["T"],
            "t_train_s": s["t_train_s"],
            "dense_s": s["dense_s"],
            "to_dense_s": d["to_dense_s"],
            "svd_s": d["svd_values_s"],
            "dense_rss": d.get("rss_peak_above_start_bytes"),
        }
        if lz is None or "time_s" not in lz:
            row["note"] = (lz or {}).get("note", "lanczos missing")
        else:
            row.update(
                {
                    "lanczos_s": lz["time_s"],
                    "lanczos_warm_s": lz["warm_s"],
                    "speedup": lz["speedup"],
                    "speedup_warm": lz["speedup_warm"],
                    "products": lz["products"],
                    "rel_err": lz["rel_err"],
                    "lanczos_rss": lz["peak_rss"],
                    "note": lz["note"],
                }
            )
        if size["cases"].get("counts"):
            c = R._slq_summary(size["cases"]["counts"], d, s["P"], s["dense_s"])
            if "failed" in c:
                row["counts_note"] = c["failed"]
            else:
                inside = c["dense_in_range"]
                row.update(
                    {
                        "counts_s": c["time_s"],
                        "counts_speedup": s["dense_s"] / c["time_s"],
                        "counts_products": c["products"],
                        "counts_err": 100 * max(c["abs_err_frac_P"].values()),
                        "counts_note": "dense in ranges: "
                        + ("all" if inside and all(inside.values()) else str(inside))
                        + f"; {c['num_probes']} probes x {c['num_steps']} steps, "
                        + f"{c['num_deflated']} deflated",
                    }
                )
        rows.append(row)
    return rows


def render(payload: dict, out_dir=None) -> dict:
    tag = "_quick" if payload["quick"] else ""
    payload["summary"] = summarise(payload)
    C.write_json("crossover" + tag, payload, out_dir)
    C.write_text("crossover" + tag + ".md", table(payload), out_dir)
    return payload


def table(payload: dict) -> str:
    cmd = "python -m benchmarks.run --only crossover" + (" --quick" if payload["quick"] else "")
    k = payload["config"]["k"]
    lines = [
        f"### Top-{k}: matrix-free vs dense J + SVD as the model widens (T = 25 steps)\n",
        C.header_lines(payload["machine"], cmd),
        "",
        "Dense = `J.to_dense()` + LAPACK SVD, values only (float64). Lanczos cold includes "
        "compilation; warm is a second identical call. Error: max relative error of the "
        f"top-{k} against the dense values.\n",
    ]
    lines.append(
        C.markdown_table(
            payload["summary"],
            [
                ("hidden", "hidden", "d"),
                ("P", "P", "d"),
                ("t_train_s", "training run", C.fmt_s),
                ("to_dense_s", "to_dense", C.fmt_s),
                ("svd_s", "SVD", C.fmt_s),
                ("dense_rss", "dense peak RSS", C.fmt_bytes),
                ("lanczos_s", "Lanczos cold", C.fmt_s),
                ("lanczos_warm_s", "warm", C.fmt_s),
                ("speedup", "speed-up cold", ".1f"),
                ("speedup_warm", "speed-up warm", ".1f"),
                ("products", "products", "d"),
                ("rel_err", "max rel err", ".1e"),
                ("lanczos_rss", "Lanczos peak RSS", C.fmt_bytes),
                ("note", "note", "{}".format),
            ],
        )
    )
    if any("counts_s" in r or "counts_note" in r for r in payload["summary"]):
        lines += [
            "",
            "Region counts (chaotic / bulk / stable) by the default matrix-free route "
            "(`analysis.spectrum_summary`, cold) against the dense counts; error: the largest "
            "of the three, in % of P; ranges: the guaranteed quadrature bounds +- 2 stderr.\n",
            C.markdown_table(
                payload["summary"],
                [
                    ("hidden", "hidden", "d"),
                    ("P", "P", "d"),
                    ("dense_s", "dense J + SVD", C.fmt_s),
                    ("counts_s", "counts cold", C.fmt_s),
                    ("counts_speedup", "speed-up", ".1f"),
                    ("counts_products", "products", "d"),
                    ("counts_err", "max error (% of P)", ".2f"),
                    ("counts_note", "note", "{}".format),
                ],
            ),
        ]
    return "\n".join(lines) + "\n"
