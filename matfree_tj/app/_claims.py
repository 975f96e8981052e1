r"""The claims table of the study: one row per claim of Belrose & Scherlis (2024), with the
dense number, the matrix-free number and whether they agree.

Reads the JSON-ready results of :func:`matfree_tj.app.study.run_study` (the same dicts that
``study.json`` holds), so a table can be rebuilt from a saved study.
"""

from __future__ import annotations

import math

from .. import analysis as an
from ..linalg import count_interval, probe_quantile

__all__ = ["claims"]


def _count(sp: dict, region: str) -> tuple:
    """``(count, stderr, range)`` of a spectrum summary's dict: ``range`` is the 95% range
    (quadrature bounds widened by the Student-t multiple of the stderr, as
    :meth:`matfree_tj.analysis.SpectrumSummary.interval`), ``None`` for dense counts or when
    the summary carries no bounds."""
    x, se = sp["counts"][region], sp["stderr"][region]
    settings = sp.get("settings") or {}
    qb = settings.get("quadrature_bounds")
    if sp.get("backend") == "dense" or not qb:
        return (x, se, None)
    z = probe_quantile(settings.get("num_probes"))
    qse = (settings.get("quadrature_bounds_stderr") or {}).get(region)
    return (x, se, count_interval(x, qb[region], se, sp["num_params"], z, qse))


def _headline(r: dict) -> dict:
    sp, pert, ood, rt = r["spectrum"], r["perturbation"], r["ood"], r["restricted"]
    null = r["nullspace"]
    cos = (sp.get("settings") or {}).get("alignment") or {}
    nan = (float("nan"), 0.0)
    dl = r["data_labels"]
    return {
        **{f"cos_{g}": tuple(cos.get(g, nan)) for g in ("bulk", "chaotic", "stable")},
        **{f"{g}_count": _count(sp, g) for g in ("bulk", "chaotic", "stable")},
        "sigma_1": (sp["top_singular_values"][0], 0.0),
        "bulk_cos": (r["alignment"]["bulk_probe"]["bulk"]["mean_cos"], 0.0),
        "random_cos": (r["alignment"]["bulk_probe"]["random"]["mean_cos"], 0.0),
        "linear_bulk": (pert["bulk"]["linear_up_to"], 0.0),
        "linear_chaotic": (pert["chaotic"]["linear_up_to"], 0.0),
        "kl_bulk_train": (ood["bulk"]["mean"]["train"], 0.0),
        "kl_bulk_noise": (ood["bulk"]["mean"]["noise"], 0.0),
        "kl_bulk_inverted": (ood["bulk"]["mean"]["inverted"], 0.0),
        **{f"progress_{n}": (rt["progress_at_k"][n], 0.0) for n in rt["progress_at_k"]},
        "bulk_shuffled": _count(dl["shuffled_labels"], "bulk"),
        "bulk_noise": _count(dl["noise_inputs"], "bulk"),
        "moved_in_rowspace": (null["moved_in_rowspace"][-1], 0.0),
        "moved_in_rowspace_baseline": (null["moved_in_rowspace_baseline"][-1], 0.0),
        "seed_overlap": (r["seeds"]["mean_basis_fraction"], 0.0),
        "seed_baseline": (r["seeds"]["mean_basis_baseline"], 0.0),
    }


_CLAIMS = [
    (
        "Three regions: chaotic (sigma > hi), bulk, stable (sigma < lo)",
        ["chaotic_count", "bulk_count", "stable_count"],
        "count",
    ),
    ("Largest singular value well above 1", ["sigma_1"], "rel"),
    (
        "Left and right singular vectors nearly coincide in the bulk, not elsewhere (mean "
        "cos(u_i, v_i) over the bulk / chaotic / stable values; matrix-free: the alignment "
        "quadrature of the same SLQ run as the counts)",
        ["cos_bulk", "cos_chaotic", "cos_stable"],
        "stochastic",
    ),
    (
        "Bulk directions are carried through training unchanged: cos(x, Jx) ~ 1 (random: lower)",
        ["bulk_cos", "random_cos"],
        "abs",
    ),
    (
        "Linearisation holds far longer along the bulk than along the top direction (largest eps)",
        ["linear_bulk", "linear_chaotic"],
        "log",
    ),
    (
        "Bulk perturbations barely change in-distribution outputs but change OOD ones "
        "(mean max-KL train / noise / inverted)",
        ["kl_bulk_train", "kl_bulk_noise", "kl_bulk_inverted"],
        "none",
    ),
    (
        "Training restricted to the bulk makes little progress; its complement does "
        "(share of the unconstrained test-loss decrease reached in k = num_vectors directions: "
        "bulk / complement / chaotic / stable)",
        [
            "progress_bulk",
            "progress_complement",
            "progress_chaotic",
            "progress_stable",
        ],
        "none",
    ),
    (
        "The bulk depends on the inputs, hardly on the labels "
        "(bulk count original / shuffled / noise)",
        ["bulk_count", "bulk_shuffled", "bulk_noise"],
        "count",
    ),
    (
        "The bulk overlaps the near-nullspace of the function Jacobian "
        "(moved directions in its row space, vs random)",
        ["moved_in_rowspace", "moved_in_rowspace_baseline"],
        "abs",
    ),
    (
        "Bulks of different seeds overlap more than chance (moved-subspace overlap vs random)",
        ["seed_overlap", "seed_baseline"],
        "abs",
    ),
]


def _fmt(v: tuple) -> str:
    x, se = v[:2]
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    s = f"{x:.4g}"
    s += f" ± {se:.2g}" if se else ""
    if len(v) > 2 and v[2] is not None:
        s += f" [{v[2][0]:.0f}, {v[2][1]:.0f}]"
    return s


def _agree(kind: str, d: tuple, m: tuple) -> bool:
    (xd, sd), (xm, sm) = d[:2], m[:2]
    if kind == "count":
        # an estimate with a 95% range (quadrature bounds + Student-t stderr) agrees with the
        # exact count when the range holds it; without a range (no bounds): within 3 standard
        # errors plus 2% of the count
        rng = m[2] if len(m) > 2 else None
        if rng is not None:
            return rng[0] <= xd <= rng[1]
        return abs(xd - xm) <= 3 * max(sd, sm) + 0.02 * max(abs(xd), 1.0) + 1
    if kind == "rel":
        return abs(xd - xm) <= 1e-2 * max(abs(xd), 1e-12)
    if kind == "abs":
        return abs(xd - xm) <= 0.05
    if kind == "stochastic":  # an estimate with a standard error against an exact value
        return abs(xd - xm) <= max(0.05, 3 * max(sd, sm))
    if kind == "log":
        return xd > 0 and xm > 0 and abs(math.log10(xd) - math.log10(xm)) <= 0.5
    return True


def claims(results: dict) -> list[dict]:
    """One row per claim: the dense numbers, the matrix-free numbers, and whether they agree."""
    heads = {b: _headline(r) for b, r in results["backends"].items()}
    rows = []
    for text, keys, kind in _CLAIMS:
        row: dict = {"claim": text, "quantities": keys}
        for b in an.BACKENDS:
            if b in heads:
                row[b] = " / ".join(_fmt(heads[b][k]) for k in keys)
        if len(heads) == 2 and kind != "none":
            row["agree"] = all(
                _agree(kind, heads["dense"][k], heads["matrix-free"][k]) for k in keys
            )
        elif len(heads) == 2:
            row["agree"] = "qualitative"
        rows.append(row)
    return rows
