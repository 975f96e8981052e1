r"""The whole study of Belrose & Scherlis (2024) on a digits MLP: run, tabulate, plot, summarise.

:func:`run_study` runs the eight experiments (see :mod:`matfree_tj.analysis`) with one or both
backends and returns a JSON-ready dict; :func:`write_report` writes ``study.json``, PNG figures
and ``summary.md`` (one row per claim of the paper: dense number, matrix-free number, agreement).
Used by ``matfree-tj study`` and ``examples/reproduce_paper.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import analysis as an
from ..core import training_jacobian
from ..linalg import count_interval, dense_svd, probe_quantile

__all__ = ["StudyConfig", "run_study", "write_report", "claims", "environment", "build_model"]


@dataclasses.dataclass
class StudyConfig:
    """Settings of :func:`run_study` (``quick=True``: a tiny model that runs in seconds)."""

    hidden: int | None = None
    optimizer: str = "sgd"
    seed: int = 0
    backend: str = "matrix-free"  # "dense", "matrix-free" or "both"
    quick: bool = False
    dtype: str = "float32"
    lo: float = 0.9
    hi: float = 1.1
    num_top: int = 10
    num_vectors: int | None = None  # matrix-free top/bottom triplets of J
    num_moved: int | None = None  # matrix-free top triplets of J - I (bulk complement)
    num_probes: int | None = None
    num_steps: int | None = None
    num_eps: int = 30
    num_seeds: int = 3
    num_test_function: int | None = None  # test examples for the function Jacobian
    max_products: int | None = None  # budget per matrix-free triplet solve (None: solver default)
    tol: float | None = None  # residual tolerance of the triplet solves (None: solver default)

    def solver_opts(self) -> dict:
        """Options passed to the matrix-free triplet solvers."""
        opts = {}
        if self.max_products is not None:
            opts["max_products"] = int(self.max_products)
        if self.tol is not None:
            opts["tol"] = float(self.tol)
        return opts

    def resolved(self) -> StudyConfig:
        c = dataclasses.replace(self)
        if c.backend not in (*an.BACKENDS, "both"):
            raise ValueError(f"backend must be one of {(*an.BACKENDS, 'both')}, got {c.backend!r}.")
        if c.hidden is None:
            c.hidden = 8 if c.quick else 64
        if c.num_vectors is None:
            c.num_vectors = 8 if c.quick else 48
        if c.num_moved is None:
            c.num_moved = 16 if c.quick else 96
        if c.num_probes is None:
            c.num_probes = 4 if c.quick else 10
        if c.num_steps is None and c.quick:
            c.num_steps = 20  # otherwise None: analysis.auto_num_steps from sigma_1
        if c.num_test_function is None:
            c.num_test_function = 20 if c.quick else 197
        if c.num_seeds < 2:
            raise ValueError(f"num_seeds must be >= 2, got {c.num_seeds}.")
        return c


def environment() -> dict:
    """Machine and library versions, for the JSON reports."""
    return dict(
        python=platform.python_version(),
        jax=jax.__version__,
        platform=platform.platform(),
        machine=platform.machine(),
        devices=[str(d) for d in jax.devices()],
        cpu_count=os.cpu_count(),
    )


def build_model(
    cfg: StudyConfig, *, seed: int | None = None, labels: str = "original", inputs: str = "original"
):
    """The digits MLP of the configuration (quick: 128 training examples, 2 epochs)."""
    from .examples import digits_mlp

    extra = dict(num_train=128, num_epochs=2) if cfg.quick else {}
    return digits_mlp(
        hidden=cfg.hidden,
        seed=cfg.seed if seed is None else seed,
        optimizer=cfg.optimizer,
        labels=labels,
        inputs=inputs,
        dtype=jnp.dtype(cfg.dtype),
        **extra,
    )


class _Progress:
    def __init__(self, fn: Callable[[str], None] | None):
        self.fn, self.t0 = fn, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.fn is not None:
            self.fn(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}")


def _linspace_ints(lo: int, hi: int, n: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(lo, hi, n)} - {0})


# ------------------------------------------------------------------------------------------


def _backend_context(J, cfg: StudyConfig, backend: str, key, log, runs) -> dict:
    """Triplets one backend provides to the experiments."""
    ctx: dict = {"backend": backend}
    if backend == "dense":
        Jd = runs.dense(J)
        log("dense: SVD of J and of J - I")
        svd = dense_svd(Jd, compute_vectors=True)
        ctx.update(
            Jd=Jd,
            svd=svd,
            all=an.singular_triplets(J, None, which="all", backend="dense", dense=svd),
            moved=an.moved_directions(J, cfg.num_moved, backend="dense", dense=Jd),
        )
        ctx["top"] = an.Triplets(
            ctx["all"].s[: cfg.num_vectors],
            ctx["all"].U[:, : cfg.num_vectors],
            ctx["all"].V[:, : cfg.num_vectors],
            "top",
        )
        ctx["bottom"] = an.Triplets(
            ctx["all"].s[::-1][: cfg.num_vectors],
            ctx["all"].U[:, ::-1][:, : cfg.num_vectors],
            ctx["all"].V[:, ::-1][:, : cfg.num_vectors],
            "bottom",
        )
    else:
        k1, k2, k3 = jax.random.split(key, 3)
        log(f"matrix-free: top {cfg.num_vectors} singular triplets of J")
        opts = cfg.solver_opts()
        ctx["top"] = an.singular_triplets(J, cfg.num_vectors, key=k1, which="top", **opts)
        log(f"matrix-free: bottom {cfg.num_vectors} singular triplets of J")
        ctx["bottom"] = an.singular_triplets(J, cfg.num_vectors, key=k2, which="bottom", **opts)
        log(f"matrix-free: top {cfg.num_moved} singular triplets of J - I (moved directions)")
        ctx["moved"] = an.moved_directions(J, cfg.num_moved, key=k3, **opts)
    return ctx


def _experiments(model, J, cfg: StudyConfig, backend: str, key, log, runs) -> dict:
    P = J.shape[0]
    keys = iter(jax.random.split(key, 16))
    ctx = _backend_context(J, cfg, backend, next(keys), log, runs)
    res: dict = {}
    products = {"triplets": sum(int(ctx[n].num_products) for n in ("top", "bottom", "moved"))}
    # the accuracy of every set of triplets the experiments stand on (flags, residuals, status)
    res["triplets"] = {n: ctx[n].accuracy() for n in ("top", "bottom", "moved")}

    # 1. spectrum
    log("1/8 spectrum and region counts")
    summ = an.spectrum_summary(
        J,
        key=next(keys),
        backend=backend,
        lo=cfg.lo,
        hi=cfg.hi,
        num_top=min(cfg.num_top, P),
        num_probes=cfg.num_probes,
        num_steps=cfg.num_steps,
        svd=ctx.get("svd"),
    )
    res["spectrum"] = summ.to_dict(include_all_values=True)
    res["spectrum"]["bottom_singular_values"] = ctx["bottom"].s[: cfg.num_top].tolist()
    products["spectrum"] = summ.num_products

    # 2. alignment
    log("2/8 alignment of left and right singular vectors")
    al = {
        "top_cos": an.alignment(ctx["top"]).tolist(),
        "top_s": ctx["top"].s.tolist(),
        "bottom_cos": an.alignment(ctx["bottom"]).tolist(),
        "bottom_s": ctx["bottom"].s.tolist(),
        "bulk_probe": an.bulk_alignment_probe(
            J, ctx["moved"], key=next(keys), num_probes=8 if not cfg.quick else 4
        ),
    }
    if backend == "dense":
        cos_all = an.alignment(ctx["all"])
        al["all_cos"] = cos_all.tolist()
        al["summary"] = an.alignment_summary(ctx["all"].s, cos_all)
    res["alignment"] = al

    # 3. perturbation
    log("3/8 perturbation along a chaotic and a bulk direction")
    eps = np.logspace(-3, 3, cfg.num_eps)
    bulk_dir = an.random_bulk_basis(ctx["moved"], 1, key=next(keys), num_params=P)[:, 0]
    t = ctx["top"]
    res["perturbation"] = {
        "chaotic": an.perturbation_response(
            J, t.V[:, 0], u=t.U[:, 0], sigma=float(t.s[0]), eps=eps, test_loss=model.test_loss
        ),
        "bulk": an.perturbation_response(J, bulk_dir, eps=eps, test_loss=model.test_loss),
    }

    # 4. in/out of distribution
    log("4/8 in/out-of-distribution effect of unit final-parameter perturbations")
    inputs = an.ood_inputs(model.X_train, model.X_test, key=next(keys))
    n_dir = min(cfg.num_top, cfg.num_vectors)
    groups = {
        "top": ctx["top"].V[:, :n_dir],
        "bulk": an.random_bulk_basis(ctx["moved"], n_dir, key=next(keys), num_params=P),
        "bottom": ctx["bottom"].V[:, :n_dir],
    }
    ood: dict = {}
    for g, D in groups.items():
        kl = an.output_sensitivity(model.apply, J, D, inputs)
        ood[g] = {name: v.tolist() for name, v in kl.items()}
        ood[g]["mean"] = {name: float(np.mean(v)) for name, v in kl.items()}
    if backend == "dense":
        idx = np.unique(np.linspace(0, P - 1, 24 if not cfg.quick else 8).astype(int))
        kl = an.output_sensitivity(model.apply, J, ctx["all"].V[:, idx], inputs)
        ood["sweep"] = {
            "index": idx.tolist(),
            "sigma": ctx["all"].s[idx].tolist(),
            **{name: v.tolist() for name, v in kl.items()},
        }
    res["ood"] = ood

    # 5. restricted training
    log("5/8 restricted training")
    if backend == "dense":
        s, V = ctx["all"].s, ctx["all"].V
        dist = np.argsort(np.abs(s - 1.0), kind="stable")
        bases = {
            "bulk": V[:, dist],
            "complement": V[:, dist[::-1]],
            "chaotic": V,
            "stable": V[:, ::-1],
        }
        ks = _linspace_ints(max(1, P // 48), P, 3 if cfg.quick else 20)
        # also the matrix-free sizes, so the two backends can be compared at k = num_vectors
        ks = sorted(set(ks) | set(_linspace_ints(max(1, cfg.num_vectors // 4), cfg.num_vectors, 4)))
    else:
        kmax = cfg.num_vectors
        bases = {
            "bulk": an.random_bulk_basis(ctx["moved"], kmax, key=next(keys), num_params=P),
            "complement": ctx["moved"].V[:, :kmax],
            "chaotic": ctx["top"].V,
            "stable": ctx["bottom"].V,
        }
        ks = _linspace_ints(max(1, kmax // 4), kmax, 4)
    res["restricted"] = rt = an.restricted_training(
        J, bases, ks, eval_fn=model.test_loss, progress=log if not cfg.quick else None
    )
    # progress = (initial - loss) / (initial - unconstrained) at k = num_vectors
    i = rt["ks"].index(cfg.num_vectors)
    gain = rt["initial"] - rt["unconstrained"]
    rt["k_compare"] = cfg.num_vectors
    rt["progress_at_k"] = {n: (rt["initial"] - rt[n][i]) / gain for n in bases}

    # 7. bulk vs nullspace of the function Jacobian on test data
    log("7/8 bulk vs near-nullspace of the parameter-to-function Jacobian")
    F = an.function_jacobian(model.apply, J, model.X_test[: cfg.num_test_function])
    sF, R = an.function_rowspace(F)
    ks7 = _linspace_ints(1, cfg.num_moved, 3 if cfg.quick else 8)
    res["nullspace"] = an.bulk_nullspace_overlap(ctx["moved"], R, ks7)
    res["nullspace"]["rowspace_dim"] = int(R.shape[1])
    res["products"] = products
    return res, ctx


class _Runs:
    """Training Jacobians (and dense matrices) built once and shared by experiments and backends."""

    def __init__(self, cfg: StudyConfig, log):
        self.cfg, self.log, self._runs, self._dense = cfg, log, {}, {}

    def get(self, seed: int | None = None, labels: str = "original", inputs: str = "original"):
        name = (self.cfg.seed if seed is None else seed, labels, inputs)
        if name not in self._runs:
            m = build_model(self.cfg, seed=name[0], labels=labels, inputs=inputs)
            self.log(f"training Jacobian: seed={name[0]} labels={labels} inputs={inputs}")
            J = training_jacobian(m.train_fn, m.params0, check_deterministic=not self.cfg.quick)
            self._runs[name] = (m, J)
        return self._runs[name]

    def dense(self, J) -> np.ndarray:
        if id(J) not in self._dense:
            self.log(f"dense: materialising J ({J.shape[0]} forward products)")
            self._dense[id(J)] = np.asarray(J.to_dense(), dtype=np.float64)
        return self._dense[id(J)]


def _seed_experiment(cfg, backend, key, log, ctx0, runs: _Runs) -> dict:
    log("8/8 bulk overlap across seeds")
    moved = [ctx0["moved"]]
    for i in range(1, cfg.num_seeds):
        _, J = runs.get(seed=cfg.seed + i)
        dense = runs.dense(J) if backend == "dense" else None
        moved.append(
            an.moved_directions(
                J,
                cfg.num_moved,
                key=jax.random.fold_in(key, 100 + i),
                backend=backend,
                dense=dense,
                **(cfg.solver_opts() if backend == "matrix-free" else {}),
            )
        )
    out = an.seed_overlap(moved)
    out["seeds"] = [cfg.seed + i for i in range(cfg.num_seeds)]
    out["num_moved"] = cfg.num_moved
    return out


def _data_labels(cfg, backend, key, log, summary0, runs: _Runs) -> dict:
    log("6/8 data versus labels (shuffled labels, white-noise inputs)")
    out = {"original": summary0}
    for i, (name, kw) in enumerate(
        (("shuffled_labels", dict(labels="shuffled")), ("noise_inputs", dict(inputs="noise")))
    ):
        _, J = runs.get(**kw)
        svd = dense_svd(runs.dense(J)) if backend == "dense" else None
        out[name] = an.spectrum_summary(
            J,
            key=jax.random.fold_in(key, 200 + i),
            backend=backend,
            lo=cfg.lo,
            hi=cfg.hi,
            num_top=min(cfg.num_top, J.shape[0]),
            num_probes=cfg.num_probes,
            num_steps=cfg.num_steps,
            svd=svd,
        ).to_dict(include_all_values=True)
    return out


def run_study(
    cfg: StudyConfig, *, key: jax.Array, progress: Callable[[str], None] | None = None
) -> dict:
    r"""Run the eight experiments of the paper with ``cfg.backend`` (``"both"``: each backend).

    Cost (reference model, matrix-free): the triplets (``num_vectors`` top and bottom of ``J``,
    ``num_moved`` top of ``J - I``) plus SLQ counts, for each of 1 + 2 (data vs labels) +
    ``num_seeds - 1`` training Jacobians (seeds only need ``J - I``); ~``num_eps`` x 2 training runs
    for the perturbations and one training run per restricted-training point. Dense: one
    materialisation (``P`` products) and one ``O(P^3)`` SVD per Jacobian.
    """
    cfg = cfg.resolved()
    log = _Progress(progress)
    t0 = time.perf_counter()
    runs = _Runs(cfg, log)
    model, J = runs.get()
    log(
        f"model: digits MLP hidden={cfg.hidden} optimizer={cfg.optimizer} seed={cfg.seed} "
        f"P={model.num_params} T={model.config['num_steps']}"
    )
    backends = list(an.BACKENDS) if cfg.backend == "both" else [cfg.backend]
    results: dict = {
        "config": dataclasses.asdict(cfg),
        "model": model.config,
        "num_params": model.num_params,
        "environment": environment(),
        "backends": {},
    }
    for b in backends:
        tb = time.perf_counter()
        kb = jax.random.fold_in(key, an.BACKENDS.index(b))
        log(f"=== backend: {b}")
        res, ctx = _experiments(model, J, cfg, b, kb, log, runs)
        res["data_labels"] = _data_labels(cfg, b, kb, log, res["spectrum"], runs)
        res["seeds"] = _seed_experiment(cfg, b, kb, log, ctx, runs)
        res["seconds"] = time.perf_counter() - tb
        results["backends"][b] = res
        log(f"backend {b} done in {res['seconds']:.1f}s")
    results["claims"] = claims(results)
    results["seconds"] = time.perf_counter() - t0
    return results


# ------------------------------------------------------------------------------------------
# Claims table
# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------
# Report: JSON, figures, Markdown
# ------------------------------------------------------------------------------------------


def _json_default(x: Any):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _figures(results: dict, out: str) -> list[str]:
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
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
    figs = _figures(results, out)
    mpath = os.path.join(out, "summary.md")
    with open(mpath, "w") as f:
        f.write(_markdown(results, figs, out))
    return {"json": jpath, "figures": figs, "markdown": mpath}


def _stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
