"""Figures of the study (one PNG per experiment and backend, from the JSON-ready results) and the
picture of the whole spectrum that ``matfree-tj spectrum`` draws (:func:`draw_spectrum`)."""

from __future__ import annotations

import os
import sys

import numpy as np

from .. import analysis as an

__all__ = ["figures", "draw_spectrum", "spectrum_figure"]


def save_png(fig, path: str, dpi: int = 80) -> str:
    """Write ``fig`` to ``path`` atomically (a killed run never leaves half a PNG, nor a
    previous run's PNG replaced by a partial one) and close it."""
    import matplotlib.pyplot as plt

    from ..linalg import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def draw_spectrum(
    axes,
    *,
    profile=None,
    values=None,
    top=None,
    bottom=None,
    bottom_converged=None,
    lo: float = 0.9,
    hi: float = 1.1,
    edges=None,
) -> None:
    r"""The paper's picture of the whole spectrum on two matplotlib axes: :math:`\sigma_i` against
    ``i`` (log scale) and :math:`|\sigma_i - 1|` against ``i``.

    ``profile`` (a :class:`~matfree_tj.linalg.SpectrumProfile`, matrix-free): the estimated
    curve, its band shaded (where the band reaches 0 it is drawn down to the axis) and its
    exact top values as points. ``values``: all ``P`` singular values from a dense SVD, drawn as
    a line over the rest. ``top``, ``bottom``: converged top / bottom values (points at
    ``1, 2, ...`` and ``P, P - 1, ...``; ``bottom_converged`` flags which bottom ones converged:
    the others are drawn hollow). ``lo``, ``hi``: the region bounds (dotted lines). ``edges``:
    ``[(index, (low, high)), ...]`` the indices where the regions meet (the chaotic count and
    the chaotic + bulk count) with their 95% ranges (vertical lines, ranges shaded).
    """
    ax_s, ax_d = axes
    dist = lambda x: np.abs(np.asarray(x, dtype=np.float64) - 1.0)  # noqa: E731
    if values is not None:
        values = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    shown = [x for x in (values, top, bottom) if x is not None and np.size(x)]
    if profile is not None:
        shown += [profile.estimate, profile.lower, profile.top_values]
    shown = [np.asarray(x, dtype=np.float64).ravel() for x in shown]

    def axis_floor(arrays):
        # a third of the smallest positive value drawn, but not below 1e-12 of the largest
        # (a band that reaches 0 ends at the axis)
        x = np.concatenate(arrays) if arrays else np.ones(1)
        x = x[np.isfinite(x) & (x > 0)]
        return max(float(x.min()) / 3.0, 1e-12 * float(x.max())) if x.size else 1e-12

    floors = (axis_floor(shown), axis_floor([dist(x) for x in shown]))
    if profile is not None:
        idx = profile.index
        d_est, d_lo, d_hi = profile.distance_from_one()
        for ax, floor, est, low, high in (
            (ax_s, floors[0], profile.estimate, profile.lower, profile.upper),
            (ax_d, floors[1], d_est, d_lo, d_hi),
        ):
            ax.fill_between(
                idx,
                np.maximum(low, floor),
                np.maximum(high, floor),
                color="C0",
                alpha=0.25,
                lw=0,
                label=f"{profile.level:.0%} band",
            )
            ax.plot(idx, np.maximum(est, floor), color="C0", lw=1.2, label="SLQ estimate")
        if profile.top_values.size:
            for ax, floor, f in ((ax_s, floors[0], lambda x: x), (ax_d, floors[1], dist)):
                ax.plot(
                    profile.top_index,
                    np.maximum(f(profile.top_values), floor),
                    "o",
                    color="C1",
                    ms=2.5,
                    label="deflated top (exact)",
                )
    if values is not None:
        i = np.arange(1, values.size + 1)
        ax_s.plot(i, np.maximum(values, floors[0]), color="k", lw=0.8, label="dense SVD")
        ax_d.plot(i, np.maximum(dist(values), floors[1]), color="k", lw=0.8, label="dense SVD")
    P = None if profile is None else profile.dim
    if P is None and values is not None:
        P = values.size
    for name, x, marker in (("top", top, "o"), ("bottom", bottom, "s")):
        if x is None or not np.size(x):
            continue
        x = np.asarray(x, dtype=np.float64)
        if name == "top":
            i, ok = np.arange(1, x.size + 1), np.ones(x.size, bool)
        else:
            i = (P if P is not None else x.size) - np.arange(x.size)
            ok = (
                np.ones(x.size, bool)
                if bottom_converged is None
                else np.asarray(bottom_converged, bool)[: x.size]
            )
        for ax, floor, f in ((ax_s, floors[0], lambda v: v), (ax_d, floors[1], dist)):
            if ok.any():
                ax.plot(i[ok], np.maximum(f(x[ok]), floor), marker, color="C3", ms=3, label=name)
            if not ok.all():
                ax.plot(
                    i[~ok],
                    np.maximum(f(x[~ok]), floor),
                    marker,
                    color="C3",
                    mfc="none",
                    ms=3,
                    label=f"{name} (not converged)",
                )
    for ax, floor, marks in (
        (ax_s, floors[0], (lo, hi)),
        (ax_d, floors[1], sorted({1.0 - lo, hi - 1.0})),
    ):
        for m in marks:
            if m > 0:
                ax.axhline(m, color="gray", ls=":", lw=0.8)
        for j, (e, rng) in enumerate(edges or ()):
            ax.axvline(e, color="gray", ls="--", lw=0.7, label="region edges" if j == 0 else None)
            if rng is not None and rng[1] > rng[0]:
                ax.axvspan(rng[0], rng[1], color="gray", alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.set_xlabel("index i")
    ax_s.set_ylabel("sigma_i")
    ax_d.set_ylabel("|sigma_i - 1|")
    ax_s.legend(fontsize=6, loc="lower left")


def summary_from_dict(d: dict) -> an.SpectrumSummary:
    """A :class:`~matfree_tj.analysis.SpectrumSummary` back from its ``to_dict()`` (for its
    :meth:`~matfree_tj.analysis.SpectrumSummary.interval` and profile when redrawing)."""
    from ..linalg import SpectrumProfile

    return an.SpectrumSummary(
        backend=d["backend"],
        num_params=int(d["num_params"]),
        lo=float(d["lo"]),
        hi=float(d["hi"]),
        counts=dict(d["counts"]),
        stderr=dict(d["stderr"]),
        top_singular_values=np.asarray(d["top_singular_values"]),
        singular_values=None
        if d.get("singular_values") is None
        else np.asarray(d["singular_values"]),
        num_products=int(d["num_products"]),
        seconds=float(d["seconds"]),
        settings=d.get("settings"),
        profile=None if d.get("profile") is None else SpectrumProfile.from_dict(d["profile"]),
    )


def spectrum_figure(
    summ: an.SpectrumSummary,
    path: str,
    *,
    values=None,
    bottom=None,
    bottom_converged=None,
    title: str = "",
) -> str:
    """Draw :func:`draw_spectrum` for a :class:`~matfree_tj.analysis.SpectrumSummary` into
    the PNG ``path`` (matplotlib must be importable): its profile (matrix-free) or all its
    values (dense), ``values`` from a dense SVD overlaid, the region edges at the counts with
    their 95% ranges, the counts in the title. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    P = summ.num_params
    c_ch, c_st = summ.counts["chaotic"], summ.counts["stable"]
    r_ch, r_st = summ.interval("chaotic"), summ.interval("stable")
    # region edges: after the chaotic values, and before the stable ones
    edges = [(c_ch + 0.5, r_ch), (P - c_st + 0.5, (P - r_st[1], P - r_st[0]))]
    dense = summ.singular_values if values is None else values
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    draw_spectrum(
        ax,
        profile=summ.profile,
        values=dense,
        top=summ.top_singular_values if summ.profile is None and dense is None else None,
        bottom=bottom,
        bottom_converged=bottom_converged,
        lo=summ.lo,
        hi=summ.hi,
        edges=edges,
    )
    what = f"singular values of J ({summ.backend}, P={P})"
    if summ.profile is not None:
        what += f", {summ.profile.num_probes} probes x {summ.profile.num_steps} steps"
    ax[0].set_title(title or what, fontsize=8)
    counts = ", ".join(
        f"{r} {summ.counts[r]:.0f} [{a:.0f}, {b:.0f}]"
        for r, (a, b) in ((r, summ.interval(r)) for r in an.REGIONS)
    )
    ax[1].set_title(f"distance from 1\ncounts [95% range]: {counts}", fontsize=7)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def figures(results: dict, out: str) -> list[str]:
    """Write the study's PNG figures into ``out``; return their paths (none, with a message on
    stderr, when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional dependency: say so rather than write no figure silently
        print(
            "no figures written: matplotlib is not installed (pip install 'matfree-tj[plot]'); "
            "study.json and summary.md are complete without it",
            file=sys.stderr,
        )
        return []
    paths = []
    P = results["num_params"]

    def save(fig, name):
        p = os.path.join(out, name)
        fig.tight_layout()
        paths.append(save_png(fig, p))

    for b, r in results["backends"].items():
        tag = b.replace("-", "")
        sp = r["spectrum"]
        # the whole spectrum: dense values, or the SLQ profile with its band and the converged
        # bottom triplets (dense values overlaid when both backends ran)
        dense = (results["backends"].get("dense") or {}).get("spectrum", {})
        bot = sp.get("bottom_singular_values")
        flags = ((r.get("triplets") or {}).get("bottom") or {}).get("converged")
        paths.append(
            spectrum_figure(
                summary_from_dict(sp),
                os.path.join(out, f"spectrum_{tag}.png"),
                values=dense.get("singular_values"),
                bottom=None if sp.get("singular_values") or not bot else bot,
                bottom_converged=flags,
                title=f"singular values of J ({b}, P={P})",
            )
        )

        fig, ax = plt.subplots(figsize=(5, 3.2))
        al = r["alignment"]
        if "all_cos" in al:
            ax.plot(np.asarray(sp["singular_values"]), al["all_cos"], ".", ms=2)
        trip = r.get("triplets") or {}
        for name, marker in (("top", "o"), ("bottom", "s")):
            s_, c_ = np.asarray(al[f"{name}_s"]), np.asarray(al[f"{name}_cos"])
            flags = (trip.get(name) or {}).get("converged")
            ok = np.ones(s_.size, bool) if flags is None else np.asarray(flags, bool)
            if ok.any():
                ax.plot(s_[ok], c_[ok], marker, ms=3, label=name)
            if not ok.all():  # Ritz pairs of an unfinished solve: shown, marked as such
                ax.plot(s_[~ok], c_[~ok], marker, ms=3, mfc="none", label=f"{name} (not converged)")
        regions = (sp.get("settings") or {}).get("alignment")
        if regions:  # mean cos per region: exact (dense) or the SLQ estimate +- 2 stderr
            s_lo = max(min(al["bottom_s"] + al["top_s"]), 1e-9)
            s_hi = max(al["top_s"] + al["bottom_s"])
            spans = {
                "stable": (s_lo, sp["lo"]),
                "bulk": (sp["lo"], sp["hi"]),
                "chaotic": (sp["hi"], max(s_hi, sp["hi"])),
            }
            for i, (name, (a, c)) in enumerate(spans.items()):
                m, se = regions[name]
                ax.hlines(
                    m,
                    a,
                    c,
                    colors="k",
                    lw=2,
                    label="region mean" + (" +- 2 stderr" if se else "") if i == 0 else None,
                )
                if se:
                    ax.fill_between([a, c], m - 2 * se, m + 2 * se, color="k", alpha=0.2, lw=0)
        ax.set(xscale="log", xlabel="sigma_i", ylabel="cos(u_i, v_i)", title=f"alignment ({b})")
        ax.legend(fontsize=7)
        save(fig, f"alignment_{tag}.png")

        fig, ax = plt.subplots(1, 3, figsize=(11, 3.2))
        for name, pr in r["perturbation"].items():
            e = np.array([x["eps"] for x in pr["rows"]])
            ax[0].loglog(e, np.abs([x["projection"] for x in pr["rows"]]), label=f"{name} <u, d>")
            ax[0].loglog(e, e * pr["sigma"], "--", lw=0.8, label=f"{name} eps sigma")
            ax[1].loglog(e, np.array([x["remainder"] for x in pr["rows"]]) + 1e-16, label=name)
            ax[2].loglog(e, [x["test_loss"] for x in pr["rows"]], label=name)
        ax[0].set(xlabel="eps", title="projection on u")
        ax[1].set(xlabel="eps", title="remainder norm")
        ax[2].set(xlabel="eps", title="test loss")
        for a in ax:
            a.legend(fontsize=6)
        save(fig, f"perturbation_{tag}.png")

        fig, ax = plt.subplots(figsize=(5, 3.2))
        names = ["train", "noise", "inverted"]
        groups = ["top", "bulk", "bottom"]
        for j, n in enumerate(names):
            ax.bar(np.arange(3) + 0.25 * j, [r["ood"][g]["mean"][n] for g in groups], 0.25, label=n)
        ax.set(
            xticks=np.arange(3) + 0.25,
            xticklabels=groups,
            yscale="log",
            ylabel="mean max KL",
            title=f"unit perturbation of theta_T ({b})",
        )
        ax.legend(fontsize=7)
        save(fig, f"ood_{tag}.png")

        fig, ax = plt.subplots(figsize=(5, 3.2))
        rt = r["restricted"]
        for n in ("bulk", "complement", "chaotic", "stable"):
            ax.plot(rt["ks"], rt[n], "o-", ms=3, label=n)
        ax.axhline(rt["unconstrained"], color="k", ls="--", lw=0.8, label="unconstrained")
        ax.axhline(rt["initial"], color="gray", ls=":", lw=0.8, label="initial")
        ax.set(xlabel="k", ylabel="test loss", title=f"restricted training ({b})")
        ax.legend(fontsize=6)
        save(fig, f"restricted_{tag}.png")

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        for n, sm in r["data_labels"].items():
            c = sm["counts"]
            e = sm["stderr"]
            ax[0].bar(
                np.arange(3) + 0.25 * list(r["data_labels"]).index(n),
                [c[x] for x in an.REGIONS],
                0.25,
                yerr=[e[x] for x in an.REGIONS],
                label=n,
            )
            if sm.get("singular_values"):
                ax[1].semilogy(sm["singular_values"], lw=1, label=n)
            else:
                ax[1].semilogy(sm["top_singular_values"], "o-", ms=3, label=n)
        ax[0].set(
            xticks=np.arange(3) + 0.25,
            xticklabels=list(an.REGIONS),
            ylabel="count",
            title=f"data vs labels ({b})",
        )
        ax[1].set(xlabel="index", ylabel="sigma")
        ax[0].legend(fontsize=6)
        ax[1].legend(fontsize=6)
        save(fig, f"data_labels_{tag}.png")

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        nl = r["nullspace"]
        ax[0].plot(nl["ks"], nl["moved_in_rowspace"], "o-", label="moved vs row space of F")
        ax[0].plot(nl["ks"], nl["moved_in_rowspace_baseline"], "k--", label="random")
        ax[0].set(xlabel="k moved directions", ylabel="mean cos^2", title=f"bulk vs null(F) ({b})")
        ax[0].legend(fontsize=6)
        sd = r["seeds"]
        lbl = [f"{sd['seeds'][i]}-{sd['seeds'][j]}" for i, j in sd["pairs"]]
        ax[1].bar(np.arange(len(lbl)), sd["basis_fraction"], label="seed pairs")
        ax[1].plot(np.arange(len(lbl)), sd["basis_baseline"], "k_", ms=20, label="random")
        ax[1].set(
            xticks=np.arange(len(lbl)),
            xticklabels=lbl,
            ylabel="mean cos^2",
            title="moved subspaces across seeds",
        )
        ax[1].legend(fontsize=6)
        save(fig, f"overlap_{tag}.png")
    return paths
