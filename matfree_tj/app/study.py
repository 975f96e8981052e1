r"""The whole study of Belrose & Scherlis (2024) on a digits MLP: run, tabulate, plot, summarise.

:func:`run_study` runs the eight experiments (see :mod:`matfree_tj.analysis`) with one or both
backends and returns a JSON-ready dict; :func:`write_report` writes ``study.json``, PNG figures
and ``summary.md`` (one row per claim of the paper: dense number, matrix-free number, agreement).
Used by ``matfree-tj study`` and ``examples/reproduce_paper.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import analysis as an
from ..core import training_jacobian
from ..linalg import dense_svd
from ._claims import claims
from ._report import _json_default, write_report

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


def _backend_context(J, cfg: StudyConfig, backend: str, key, log, runs, store=None) -> dict:
    """Triplets one backend provides to the experiments (matrix-free with a ``store``: each
    solver saves its restart cycles and result there, and a resumed study continues them)."""
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
        for which in ("top", "bottom"):
            ctx[which] = an.singular_triplets(
                J, cfg.num_vectors, which=which, backend="dense", dense=svd
            )
    else:
        k1, k2, k3 = jax.random.split(key, 3)
        log(f"matrix-free: top {cfg.num_vectors} singular triplets of J")
        opts = cfg.solver_opts()

        def kept(name):  # the solver's own resume: after every restart cycle
            return {} if store is None else {"checkpoint": store.sub(name)}

        ctx["top"] = an.singular_triplets(
            J, cfg.num_vectors, key=k1, which="top", **opts, **kept("top")
        )
        log(f"matrix-free: bottom {cfg.num_vectors} singular triplets of J")
        ctx["bottom"] = an.singular_triplets(
            J, cfg.num_vectors, key=k2, which="bottom", **opts, **kept("bottom")
        )
        log(f"matrix-free: top {cfg.num_moved} singular triplets of J - I (moved directions)")
        ctx["moved"] = an.moved_directions(J, cfg.num_moved, key=k3, **opts, **kept("moved"))
    return ctx


def _saved(store, name: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, saved once it has finished when ``store`` (a :class:`~matfree_tj.linalg.RunStore`
    view) is given, and loaded instead of recomputed when an earlier run of the same study saved
    it: a killed study repeats at most the experiment it was in. Results are JSON (the form the
    report writes), the same whether computed now or loaded."""
    if store is None:
        return fn()
    stage = store.stage("experiment", name=name)
    saved = stage.load("result")
    if saved is not None:
        return json.loads(bytes(np.asarray(saved["json"], np.uint8)).decode())
    text = json.dumps(fn(), default=_json_default)
    stage.save("result", {"json": np.frombuffer(text.encode(), np.uint8)})
    return json.loads(text)


def _experiments(model, J, cfg: StudyConfig, backend: str, key, log, runs, store=None) -> dict:
    P = J.shape[0]
    # the keys in the order the experiments use them, drawn whether an experiment runs or is
    # loaded from a resumed run (so a resumed study uses the same randomness)
    keys = jax.random.split(key, 16)
    ctx = _backend_context(J, cfg, backend, keys[0], log, runs, store)
    res: dict = {}
    # the accuracy of every set of triplets the experiments stand on (flags, residuals, status)
    res["triplets"] = {n: ctx[n].accuracy() for n in ("top", "bottom", "moved")}

    def spectrum():
        log("1/8 spectrum and region counts")
        summ = an.spectrum_summary(
            J,
            key=keys[1],
            backend=backend,
            lo=cfg.lo,
            hi=cfg.hi,
            num_top=min(cfg.num_top, P),
            num_probes=cfg.num_probes,
            num_steps=cfg.num_steps,
            svd=ctx.get("svd"),
        )
        out = summ.to_dict(include_all_values=True)
        out["bottom_singular_values"] = ctx["bottom"].s[: cfg.num_top].tolist()
        return out

    res["spectrum"] = _saved(store, "spectrum", spectrum)
    products = {
        "triplets": sum(int(ctx[n].num_products) for n in ("top", "bottom", "moved")),
        "spectrum": res["spectrum"]["num_products"],
    }

    def alignment():
        log("2/8 alignment of left and right singular vectors")
        al = {
            "top_cos": an.alignment(ctx["top"]).tolist(),
            "top_s": ctx["top"].s.tolist(),
            "bottom_cos": an.alignment(ctx["bottom"]).tolist(),
            "bottom_s": ctx["bottom"].s.tolist(),
            "bulk_probe": an.bulk_alignment_probe(
                J, ctx["moved"], key=keys[2], num_probes=8 if not cfg.quick else 4
            ).to_dict(),
        }
        if backend == "dense":
            cos_all = an.alignment(ctx["all"])
            al["all_cos"] = cos_all.tolist()
            al["summary"] = an.alignment_summary(ctx["all"].s, cos_all).to_dict()
        return al

    res["alignment"] = _saved(store, "alignment", alignment)

    def perturbation():
        log("3/8 perturbation along a chaotic and a bulk direction")
        eps = np.logspace(-3, 3, cfg.num_eps)
        bulk_dir = an.random_bulk_basis(ctx["moved"], 1, key=keys[3], num_params=P)[:, 0]
        t = ctx["top"]
        return {
            "chaotic": an.perturbation_response(
                J, t.V[:, 0], u=t.U[:, 0], sigma=float(t.s[0]), eps=eps, test_loss=model.test_loss
            ).to_dict(),
            "bulk": an.perturbation_response(
                J, bulk_dir, eps=eps, test_loss=model.test_loss
            ).to_dict(),
        }

    res["perturbation"] = _saved(store, "perturbation", perturbation)

    def ood():
        log("4/8 in/out-of-distribution effect of unit final-parameter perturbations")
        inputs = an.ood_inputs(model.X_train, model.X_test, key=keys[4])
        n_dir = min(cfg.num_top, cfg.num_vectors)
        groups = {
            "top": ctx["top"].V[:, :n_dir],
            "bulk": an.random_bulk_basis(ctx["moved"], n_dir, key=keys[5], num_params=P),
            "bottom": ctx["bottom"].V[:, :n_dir],
        }
        out: dict = {}
        for g, D in groups.items():
            kl = an.output_sensitivity(model.apply, J, D, inputs)
            out[g] = {**kl.to_dict(), "mean": kl.mean()}
        if backend == "dense":
            idx = np.unique(np.linspace(0, P - 1, 24 if not cfg.quick else 8).astype(int))
            kl = an.output_sensitivity(model.apply, J, ctx["all"].V[:, idx], inputs)
            out["sweep"] = {
                "index": idx.tolist(),
                "sigma": ctx["all"].s[idx].tolist(),
                **kl.to_dict(),
            }
        return out

    res["ood"] = _saved(store, "ood", ood)

    def restricted():
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
            ks = sorted(
                set(ks) | set(_linspace_ints(max(1, cfg.num_vectors // 4), cfg.num_vectors, 4))
            )
        else:
            kmax = cfg.num_vectors
            bases = {
                "bulk": an.random_bulk_basis(ctx["moved"], kmax, key=keys[6], num_params=P),
                "complement": ctx["moved"].V[:, :kmax],
                "chaotic": ctx["top"].V,
                "stable": ctx["bottom"].V,
            }
            ks = _linspace_ints(max(1, kmax // 4), kmax, 4)
        rt = an.restricted_training(
            J, bases, ks, eval_fn=model.test_loss, progress=log if not cfg.quick else None
        )
        # the claim compares the bases at k = num_vectors, a size both backends run
        return {
            **rt.to_dict(),
            "k_compare": cfg.num_vectors,
            "progress_at_k": rt.progress_at(cfg.num_vectors),
        }

    res["restricted"] = _saved(store, "restricted", restricted)

    def nullspace():
        log("7/8 bulk vs near-nullspace of the parameter-to-function Jacobian")
        F = an.function_jacobian(model.apply, J, model.X_test[: cfg.num_test_function])
        sF, R = an.function_rowspace(F)
        ks7 = _linspace_ints(1, cfg.num_moved, 3 if cfg.quick else 8)
        return an.bulk_nullspace_overlap(ctx["moved"], R, ks7).to_dict()

    res["nullspace"] = _saved(store, "nullspace", nullspace)
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


def _seed_experiment(cfg, backend, key, log, ctx0, runs: _Runs, store=None) -> dict:
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
                **(
                    {"checkpoint": store.sub(f"seed-{i}")}
                    if store is not None and backend == "matrix-free"
                    else {}
                ),
            )
        )
    out = an.seed_overlap(moved).to_dict()
    out["seeds"] = [cfg.seed + i for i in range(cfg.num_seeds)]
    out["num_moved"] = cfg.num_moved
    return out


def _data_labels(cfg, backend, key, log, summary0, runs: _Runs, store=None) -> dict:
    log("6/8 data versus labels (shuffled labels, white-noise inputs)")
    out = {"original": summary0}
    for i, (name, kw) in enumerate(
        (("shuffled_labels", dict(labels="shuffled")), ("noise_inputs", dict(inputs="noise")))
    ):

        def summary(i=i, kw=kw):
            _, J = runs.get(**kw)
            svd = dense_svd(runs.dense(J)) if backend == "dense" else None
            return an.spectrum_summary(
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

        out[name] = _saved(store, f"data_labels/{name}", summary)
    return out


def run_study(
    cfg: StudyConfig,
    *,
    key: jax.Array,
    progress: Callable[[str], None] | None = None,
    resume_dir: Any = None,
) -> dict:
    r"""Run the eight experiments of the paper with ``cfg.backend`` (``"both"``: each backend).

    Cost (reference model, matrix-free): the triplets (``num_vectors`` top and bottom of ``J``,
    ``num_moved`` top of ``J - I``) plus SLQ counts, for each of 1 + 2 (data vs labels) +
    ``num_seeds - 1`` training Jacobians (seeds only need ``J - I``); ~``num_eps`` x 2 training runs
    for the perturbations and one training run per restricted-training point. Dense: one
    materialisation (``P`` products) and one ``O(P^3)`` SVD per Jacobian.

    ``resume_dir``: a folder (or :class:`~matfree_tj.linalg.RunStore`) where every finished
    experiment's result is saved (and, matrix-free, every restart cycle of the triplet solvers);
    running the same study with the same folder continues a killed one with the same numbers,
    repeating at most the experiment it was in (a spectrum or restricted-training sweep is one
    experiment). Another configuration or key with that folder is an error
    (:class:`~matfree_tj.linalg.ResumeError`). Dense work (materialising J, its SVD) is redone.
    """
    cfg = cfg.resolved()
    log = _Progress(progress)
    t0 = time.perf_counter()
    store = None
    if resume_dir is not None:
        from .. import __version__
        from ..linalg import RunStore

        store = resume_dir if isinstance(resume_dir, RunStore) else RunStore(resume_dir)
        store.claim(
            "study",
            {
                "config": dataclasses.asdict(cfg),
                "key": np.asarray(jax.random.key_data(key)).tolist(),
                "version": __version__,
            },
        )
        log(f"saving every finished experiment in {store.path}")
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
        sb = None if store is None else store.sub(b)
        res, ctx = _experiments(model, J, cfg, b, kb, log, runs, sb)
        res["data_labels"] = _data_labels(cfg, b, kb, log, res["spectrum"], runs, sb)
        seeds = functools.partial(_seed_experiment, cfg, b, kb, log, ctx, runs, sb)
        res["seeds"] = _saved(sb, "seeds", seeds)
        res["seconds"] = time.perf_counter() - tb
        results["backends"][b] = res
        log(f"backend {b} done in {res['seconds']:.1f}s")
    results["claims"] = claims(results)
    results["seconds"] = time.perf_counter() - t0
    return results
