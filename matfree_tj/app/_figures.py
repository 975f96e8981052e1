"""Figures of the study: one PNG per experiment and backend, from the JSON-ready results."""

from __future__ import annotations

import os
import sys

import numpy as np

from .. import analysis as an

__all__ = ["figures"]


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
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)

    for b, r in results["backends"].items():
        tag = b.replace("-", "")
        sp = r["spectrum"]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        if sp.get("singular_values"):
            s = np.asarray(sp["singular_values"])
            ax[0].semilogy(np.arange(1, s.size + 1), s, lw=1)
            ax[1].semilogy(np.arange(1, s.size + 1), np.abs(s - 1) + 1e-16, lw=1)
        else:
            top = np.asarray(sp["top_singular_values"])
            bot = np.asarray(sp["bottom_singular_values"])
            flags = ((r.get("triplets") or {}).get("bottom") or {}).get("converged")
            ok = np.ones(bot.size, bool) if flags is None else np.asarray(flags[: bot.size], bool)
            idx = P - np.arange(bot.size)
            for a, f in ((ax[0], lambda x: x), (ax[1], lambda x: np.abs(x - 1) + 1e-16)):
                a.semilogy(np.arange(1, top.size + 1), f(top), "o", ms=3, label="top")
                if ok.any():
                    a.semilogy(idx[ok], f(bot[ok]), "s", ms=3, label="bottom")
                if not ok.all():
                    a.semilogy(
                        idx[~ok], f(bot[~ok]), "s", ms=3, mfc="none", label="bottom (not converged)"
                    )
                a.legend(fontsize=7)
        ax[0].set(xlabel="index i", ylabel="sigma_i", title=f"singular values of J ({b})")
        ax[1].set(xlabel="index i", ylabel="|sigma_i - 1|", title="distance from 1")
        save(fig, f"spectrum_{tag}.png")

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
