"""The study's report: ``study.json``, the figures and ``summary.md``."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..linalg import atomic_write
from ._figures import figures

__all__ = ["write_report"]


def _json_default(x: Any):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _triplet_line(t: dict) -> str:
    n = len(t["s"])
    conv = t.get("converged")
    done = n if conv is None else int(sum(conv))
    resid = t.get("residuals")
    worst = "" if not resid else f", largest residual {max(resid):.2g}"
    return (
        f"{done}/{n} converged (status {t.get('status')}, {t['num_products']} products{worst}); "
        f"values {min(t['s']):.4g} to {max(t['s']):.4g}"
    )


def _markdown(results: dict, figures: list[str], out: str) -> str:
    c = results["config"]
    lines = [
        "# Training-Jacobian study (Belrose & Scherlis 2024), reproduced with matfree_tj",
        "",
        f"Model: digits MLP, hidden={c['hidden']}, optimizer={c['optimizer']}, seed={c['seed']}, "
        f"P={results['num_params']}, T={results['model']['num_steps']} steps, dtype={c['dtype']}"
        f"{' (quick mode)' if c['quick'] else ''}. Regions: chaotic sigma > {c['hi']}, "
        f"stable sigma < {c['lo']}.",
        "",
        f"Wall time: {results['seconds']:.1f} s "
        + ", ".join(f"({b}: {r['seconds']:.1f} s)" for b, r in results["backends"].items())
        + f". JAX {results['environment']['jax']} on {results['environment']['machine']}"
        f" ({results['environment']['cpu_count']} CPUs).",
        "",
        "| claim | dense | matrix-free | agree |",
        "|---|---|---|---|",
    ]
    for row in results["claims"]:
        agree = row.get("agree", "n/a")
        agree = {True: "yes", False: "NO"}.get(agree, agree) if isinstance(agree, bool) else agree
        lines.append(
            f"| {row['claim']} | {row.get('dense', '-')} | {row.get('matrix-free', '-')} "
            f"| {agree} |"
        )
    acc = [
        f"- {n}: {_triplet_line(t)}"
        for n, t in ((results["backends"].get("matrix-free") or {}).get("triplets") or {}).items()
    ]
    if acc:
        lines += [
            "",
            "Matrix-free singular triplets the experiments use (converged = residual "
            "within tolerance; the others are Ritz estimates, plotted hollow):",
            "",
            *acc,
        ]
    lines += ["", "## Figures", ""]
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in figures]
    lines += ["", "Every number is in `study.json`."]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: str) -> dict:
    """Write ``study.json``, the PNG figures and ``summary.md`` into ``out``; return the paths."""
    os.makedirs(out, exist_ok=True)
    jpath = os.path.join(out, "study.json")
    # atomically (temporary file, then rename): a kill never leaves half a file
    atomic_write(jpath, json.dumps(results, indent=1, default=_json_default))
    figs = figures(results, out)
    mpath = os.path.join(out, "summary.md")
    atomic_write(mpath, _markdown(results, figs, out))
    return {"json": jpath, "figures": figs, "markdown": mpath}
