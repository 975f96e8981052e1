r"""Command line: ``matfree-tj spectrum`` and ``matfree-tj study`` (also ``python -m matfree_tj``).

``spectrum`` measures the singular-value regions of a training Jacobian (the paper's reference
digits MLP by default; ``--problem`` takes a built-in example by name or any ``module:function``
returning ``.train_fn`` and ``.params0``), matrix-free by default, and prints
``region | count | stderr`` and the top singular values; ``--json`` writes every number, ``--out``
gets a PNG of the values.
``study`` runs the eight experiments of Belrose & Scherlis (2024) into ``--out``: ``study.json``,
PNG figures and ``summary.md``. ``--quick`` uses a tiny model and few probes (seconds).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import sys
import time

from . import _distributed

__all__ = ["main", "build_parser"]


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``, else a message naming ``what`` was expected."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _finite_float(text: str) -> float:
    """An argparse type: a finite number (``inf`` and ``nan`` parse as floats but are no bound)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


# Built-in problems by name (``--problem NAME`` or ``--problem matfree_tj.examples:NAME``).
BUILTIN_PROBLEMS = ("digits_mlp", "lenet5_digits", "transformer")
_EXAMPLES_MODULES = ("matfree_tj.examples", "matfree_tj.app.examples")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--problem",
        default=None,
        metavar="NAME|MODULE:FUNCTION",
        help="the training run: a built-in example (digits_mlp, the default; lenet5_digits, "
        "P = 61,706; transformer) or MODULE:FUNCTION, imported with the current folder on the "
        "path, where FUNCTION() returns an object with .train_fn and .params0 or a "
        "(train_fn, params0) tuple (it is passed seed=, dtype= and quick= if it takes them)",
    )
    p.add_argument(
        "--hidden",
        type=_positive_int,
        default=None,
        help="hidden width of the digits MLP (default 64: the reference, P = 4810; 8 with --quick)",
    )
    p.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default=None,
        help="digits MLP: sgd (default): momentum 0.9, cosine from 0.1 (reference); "
        "adam: cosine from 3e-3",
    )
    p.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="initialisation seed (default 0)"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="dtype of the parameters, training and products (default float32 for the built-in "
        "examples, as the paper; a MODULE:FUNCTION problem keeps its own); float64 enables JAX's "
        "x64 mode before anything is built",
    )
    p.add_argument(
        "--lo", type=_finite_float, default=0.9, help="stable/bulk boundary (default 0.9)"
    )
    p.add_argument(
        "--hi", type=_finite_float, default=1.1, help="bulk/chaotic boundary (default 1.1)"
    )
    p.add_argument(
        "--num-probes",
        type=_positive_int,
        default=None,
        help="SLQ probe vectors (matrix-free counts; default 10, 4 with --quick)",
    )
    p.add_argument(
        "--num-steps",
        type=_int_at_least(2, "an integer >= 2"),
        default=None,
        help="Lanczos steps per probe (default: enough to resolve [lo, hi] given sigma_1, "
        "at least 80; 20 with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny model (digits MLP: hidden 8, 128 examples, 2 epochs; a problem taking "
        "quick= gets quick=True) and few probes: seconds",
    )
    p.add_argument(
        "--out",
        default="matfree_tj_out",
        help="output folder for figures/reports (default ./matfree_tj_out)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matfree-tj",
        description="The spectrum of a neural network's training Jacobian "
        "J = d theta_T / d theta_0, matrix-free.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{spectrum,study}")
    sub.required = True
    sp = sub.add_parser(
        "spectrum",
        help="region counts (chaotic/bulk/stable) and top singular values",
        description="Region counts with error bars and the top singular values of "
        "a training Jacobian (the digits MLP, a built-in example or your own --problem).",
    )
    _common(sp)
    sp.add_argument(
        "--backend",
        choices=("matrix-free", "dense"),
        default="matrix-free",
        help="matrix-free (default: SLQ counts, Lanczos top values) or dense "
        "(materialise J: P products, O(P^2) memory, full SVD)",
    )
    sp.add_argument(
        "--num-top",
        type=_positive_int,
        default=10,
        help="number of top singular values (default 10)",
    )
    sp.add_argument(
        "--num-deflate",
        type=_nonnegative_int,
        default=None,
        help="matrix-free: top triplets computed first, counted exactly and projected out of "
        "the quadrature (default min(150, max(num_top, P // 32)); 0: plain SLQ)",
    )
    sp.add_argument(
        "--max-products",
        type=_positive_int,
        default=None,
        help="matrix-free: budget of operator products for the whole run (default none); "
        "the counts then use fewer probes/steps if needed and say so",
    )
    sp.add_argument(
        "--cache",
        choices=("auto", "off"),
        default="auto",
        help="auto (default): cache the linearisation and the pullback when they fit in a "
        "quarter of memory (fastest single products); off: re-run training in every product "
        "(memory flat in T; for wide models whose block products would not fit)",
    )
    sp.add_argument(
        "--checkpoint",
        choices=("none", "step", "sqrt"),
        default="none",
        help="reverse-product memory layout (see matfree_tj.training_jacobian; default none)",
    )
    sp.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    sp.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    _distributed.add_arguments(sp)

    st = sub.add_parser(
        "study",
        help="the eight experiments of the paper into --out",
        description="Run the eight experiments of Belrose & Scherlis (2024) and "
        "write study.json, PNG figures and summary.md into --out.",
    )
    _common(st)
    st.add_argument(
        "--backend",
        choices=("matrix-free", "dense", "both"),
        default="matrix-free",
        help="matrix-free (default), dense, or both (adds a dense vs matrix-free agreement column)",
    )
    st.add_argument(
        "--num-vectors",
        type=_positive_int,
        default=None,
        help="matrix-free top/bottom triplets of J (default 48, 8 with --quick)",
    )
    st.add_argument(
        "--num-moved",
        type=_positive_int,
        default=None,
        help="top triplets of J - I spanning the bulk's complement (default 96)",
    )
    st.add_argument(
        "--max-products",
        type=_positive_int,
        default=None,
        help="budget of operator products per matrix-free triplet solve (default: the solver's)",
    )
    st.add_argument(
        "--tol",
        type=_finite_float,
        default=None,
        help="relative residual tolerance of the triplet solves (default: the solver's)",
    )
    st.add_argument(
        "--num-seeds",
        type=_positive_int,
        default=3,
        help="seeds for the bulk-overlap experiment (>= 2; default 3)",
    )
    st.add_argument(
        "--num-eps",
        type=_positive_int,
        default=30,
        help="perturbation scales in logspace(-3, 3) (default 30)",
    )
    return parser


def _log(args):
    t0 = time.perf_counter()
    if args.quiet or not _distributed.is_writer(args):
        return lambda msg: None
    return lambda msg: print(
        f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True
    )


def _setup(args, parser) -> None:
    """Check every option that needs no model, then enable x64 if asked (before any build)."""
    if not (0.0 <= args.lo <= 1.0 <= args.hi and args.lo < args.hi):
        parser.error(
            f"expected 0 <= --lo <= 1 <= --hi and --lo < --hi, got --lo {args.lo} --hi {args.hi}"
        )
    if getattr(args, "tol", None) is not None and not 0.0 < args.tol < 1.0:
        parser.error(f"expected 0 < --tol < 1, got --tol {args.tol}")
    if args.command == "study" and args.num_seeds < 2:
        parser.error(f"--num-seeds must be >= 2, got {args.num_seeds}")
    _check_problem_options(args, parser)
    if _distributed.is_writer(args):  # the other processes of a distributed run write nothing
        _check_outputs(args, parser)
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


def _problem_name(args) -> str:
    """``digits_mlp``, another built-in's name, or ``module:function`` as given."""
    spec = args.problem or "digits_mlp"
    module, sep, name = spec.partition(":")
    if sep and module in _EXAMPLES_MODULES and name in BUILTIN_PROBLEMS:
        return name
    return spec


def _check_problem_options(args, parser) -> None:
    """Options that belong to the digits MLP, and study's needs, against ``--problem``."""
    name = _problem_name(args)
    if name != "digits_mlp":
        given = [o for o, v in (("--hidden", args.hidden), ("--optimizer", args.optimizer)) if v]
        if given:
            parser.error(
                f"{' and '.join(given)} only apply to the digits MLP, not to "
                f"--problem {args.problem}: set the model's options in its function"
            )
    if args.command == "study" and name != "digits_mlp":
        parser.error(
            f"--problem {args.problem}: study retrains the digits MLP with other seeds, shuffled "
            "labels and noise inputs, which a given problem cannot provide; use "
            f"`matfree-tj spectrum --problem {args.problem}`"
        )
    if ":" not in name and name not in BUILTIN_PROBLEMS:
        parser.error(
            f"--problem {args.problem}: not a built-in example ({', '.join(BUILTIN_PROBLEMS)}); "
            "for your own model give MODULE:FUNCTION"
        )


def _load_problem(spec: str, parser):
    """The function named by ``spec`` (a built-in name or ``module:function``), imported the way
    ``python -m`` imports: the current folder first on ``sys.path``."""
    if ":" not in spec:
        from . import examples

        return getattr(examples, spec)
    module_name, _, fn_name = spec.partition(":")
    if module_name in _EXAMPLES_MODULES:
        module_name = "matfree_tj.app.examples"  # matfree_tj.examples is a lazy attribute
    if not module_name or not fn_name:
        parser.error(f"--problem {spec}: expected MODULE:FUNCTION, e.g. mymodel:build")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        parser.error(
            f"--problem {spec}: cannot import {module_name!r} ({e}); run from the folder that "
            "holds it or add that folder to PYTHONPATH"
        )
    except Exception as e:  # the module itself failed: say where, in one line
        parser.error(
            f"--problem {spec}: importing {module_name!r} raised {type(e).__name__}: {e}; "
            "fix the module (run `python -c 'import " + module_name + "'` for the traceback)"
        )
    fn = getattr(module, fn_name, None)
    if fn is None:
        parser.error(
            f"--problem {spec}: module {module_name!r} has no attribute {fn_name!r}; "
            "name a function that returns the training run"
        )
    if not callable(fn):
        parser.error(f"--problem {spec}: {fn_name!r} is not callable; name a function")
    return fn


def _build_problem(args, parser):
    """``(model, label)`` for ``--problem``: ``model`` has ``train_fn``, ``params0``, ``num_params``
    and ``config`` (a dict); ``label`` names the run in the output."""
    import types

    import jax
    import jax.numpy as jnp

    spec, name = args.problem, _problem_name(args)
    fn = _load_problem(name, parser)
    offered = {"seed": args.seed, "quick": args.quick}
    if args.dtype is not None or ":" not in name:
        offered["dtype"] = jnp.dtype(args.dtype or "float32")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: offer nothing
        params = {}
    kwargs = {k: v for k, v in offered.items() if k in params}
    if not args.quick:
        kwargs.pop("quick", None)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        parser.error(
            f"--problem {spec}: cannot call {name}() ({e}); give its other parameters defaults"
        )
    except ValueError:
        pass
    run = fn(**kwargs)
    if isinstance(run, tuple | list) and len(run) == 2:
        train_fn, params0 = run
        config = {}
    elif hasattr(run, "train_fn") and hasattr(run, "params0"):
        train_fn, params0 = run.train_fn, run.params0
        config = dict(getattr(run, "config", None) or {})
    else:
        parser.error(
            f"--problem {spec}: {name}() returned a {type(run).__name__} without .train_fn and "
            ".params0; return an object with both (like matfree_tj.examples.digits_mlp()) or a "
            "(train_fn, params0) tuple"
        )
    if not callable(train_fn):
        parser.error(
            f"--problem {spec}: train_fn is a {type(train_fn).__name__}, not a function "
            "params0 -> params_T (see matfree_tj.make_train_fn)"
        )
    leaves = [x for x in jax.tree_util.tree_leaves(params0) if hasattr(x, "dtype")]
    floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
    if not floats:
        parser.error(f"--problem {spec}: params0 has no floating-point array; nothing to train")
    dtypes = sorted({jnp.dtype(x.dtype).name for x in floats})
    if args.dtype is not None and dtypes != [args.dtype]:
        parser.error(
            f"--problem {spec}: --dtype {args.dtype} asked, but params0 is {', '.join(dtypes)}; "
            f"give {name} a dtype= parameter (the CLI passes it) or build in {args.dtype}"
        )
    config.setdefault("problem", spec)
    config.setdefault("dtype", dtypes[0] if len(dtypes) == 1 else dtypes)
    num_params = int(sum(x.size for x in floats))
    model = types.SimpleNamespace(
        train_fn=train_fn, params0=params0, num_params=num_params, config=config
    )
    return model, name


def _check_outputs(args, parser) -> None:
    """Fail before any compute if the results could not be written (a run can take minutes)."""
    folders = []
    if args.command == "study" or not getattr(args, "no_plot", False):
        folders.append(("--out", args.out))
    path = getattr(args, "json", None)
    if path:
        if os.path.isdir(path):
            parser.error(f"--json {path} is a folder; give a file path, e.g. {path}/spectrum.json")
        folders.append(("--json", os.path.dirname(os.path.abspath(path))))
    for option, folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            parser.error(f"{option}: cannot create the folder {folder!r} ({e.strerror})")
        if not os.access(folder, os.W_OK):
            parser.error(f"{option}: the folder {folder!r} is not writable")


def _study_config(args, **extra):
    """The :class:`~matfree_tj.app.study.StudyConfig` of the options both commands share
    (model, backend, quadrature), with the command's own settings in ``extra``."""
    from .study import StudyConfig

    return StudyConfig(
        hidden=args.hidden,
        optimizer=args.optimizer or "sgd",
        seed=args.seed,
        backend=args.backend,
        quick=args.quick,
        dtype=args.dtype or "float32",
        num_probes=args.num_probes,
        num_steps=args.num_steps,
        **extra,
    )


def _check_sizes(args, cfg, P: int, parser) -> None:
    """Options that need P, checked once the model is built and before it is trained."""
    top_max = P if args.backend == "dense" else P - 1
    if args.num_top > top_max:
        parser.error(
            f"--num-top must be <= {top_max} for backend {args.backend}, got {args.num_top}"
        )
    if args.backend == "dense":
        return
    if cfg.num_steps is not None and cfg.num_steps > P:
        parser.error(f"--num-steps: expected 2 <= num_steps <= P = {P}, got {cfg.num_steps}")
    if args.max_products is not None:
        deflate = args.num_deflate
        if deflate is None:
            deflate = min(150, max(args.num_top, P // 32))
        need = 16 * max(args.num_top, min(deflate, P - 2), 1)
        if args.max_products < need:
            parser.error(
                f"--max-products {args.max_products} is too small for the top "
                f"{max(args.num_top, deflate)} triplets and a quadrature; allow at least {need} "
                "(or lower --num-deflate)"
            )


def _spectrum(args, parser) -> int:
    import jax

    from .. import analysis as an
    from ..core import training_jacobian
    from .study import build_model, environment

    log = _log(args)
    cfg = _study_config(args).resolved()
    t0 = time.perf_counter()
    if _problem_name(args) == "digits_mlp":
        model = build_model(cfg)
        label = f"the digits MLP (hidden={cfg.hidden}, {cfg.optimizer}, seed={cfg.seed})"
        what = f"digits MLP hidden={cfg.hidden} optimizer={cfg.optimizer} seed={cfg.seed}"
    else:
        model, label = _build_problem(args, parser)
        what = label
    P = model.num_params
    _check_sizes(args, cfg, P, parser)
    steps_t = model.config.get("num_steps")
    log(
        f"{what}: P={P}"
        + (f", T={steps_t} steps" if steps_t is not None else "")
        + "; building the training Jacobian"
    )
    cache = {} if args.cache == "auto" else dict(forward="jvp", cache_reverse=False)
    J = training_jacobian(
        model.train_fn,
        model.params0,
        checkpoint=args.checkpoint,
        mesh=_distributed.mesh(args),
        **cache,
    )
    log(f"products: cached {J.cached}, checkpoint {args.checkpoint}")
    if args.backend == "dense":
        log(f"dense: materialising J ({P} forward products) and a full SVD")
    else:
        steps = cfg.num_steps if cfg.num_steps is not None else "auto"
        log(
            f"matrix-free: top {args.num_top} singular values, then SLQ counts "
            f"({cfg.num_probes} probes x {steps} steps)"
        )
    summ = an.spectrum_summary(
        J,
        key=jax.random.key(cfg.seed),
        backend=args.backend,
        lo=args.lo,
        hi=args.hi,
        num_top=args.num_top,
        num_probes=cfg.num_probes,
        num_steps=cfg.num_steps,
        num_deflate=args.num_deflate,
        progress=log,
        max_products=args.max_products,
        top_opts={"block_size": args.block_size} if args.block_size > 1 else None,
    )
    seconds = time.perf_counter() - t0
    log(f"done in {seconds:.1f}s")
    if not _distributed.is_writer(args):
        return 0  # process 0 prints and writes the results (every process holds them)

    print(f"training Jacobian of {label}: P = {P}, backend = {args.backend}, dtype = {J.dtype}")
    print(f"{'region':<8} | {'count':>10} | {'stderr':>8} | {'95% range':>26}")
    print(f"{'-' * 8}-+-{'-' * 10}-+-{'-' * 8}-+-{'-' * 26}")
    where = {
        "chaotic": f"> {args.hi:g}",
        "bulk": f"in [{args.lo:g}, {args.hi:g}]",
        "stable": f"< {args.lo:g}",
    }
    for r in an.REGIONS:
        low, high = summ.interval(r)
        span = f"[{low:.0f}, {high:.0f}]"
        print(
            f"{r:<8} | {summ.counts[r]:>10.1f} | {summ.stderr[r]:>8.1f} | {span:>26}"
            f"   sigma {where[r]}"
        )
    print("top singular values: " + ", ".join(f"{x:.4g}" for x in summ.top_singular_values))
    sc = (summ.settings or {}).get("step_change")
    if sc:
        steps = summ.settings["num_steps"]
        print(
            f"quadrature check, change of each count from {steps // 2} to {steps} Lanczos steps "
            "(should be small against the stderr; else use more --num-steps): "
            + ", ".join(f"{r} {sc[r]:+.1f}" for r in an.REGIONS)
        )
    qb = (summ.settings or {}).get("quadrature_bounds")
    if qb:
        print(
            "quadrature bounds (guaranteed range of each count's probe average whatever the "
            "steps; the 95% range adds t-quantile x stderr for the probes): "
            + ", ".join(f"{r} [{qb[r][0]:.0f}, {qb[r][1]:.0f}]" for r in an.REGIONS)
        )
    al = (summ.settings or {}).get("alignment")
    if al:
        print(
            "alignment, mean cos(u_i, v_i) of left and right singular vectors per region: "
            + ", ".join(
                f"{r} {al[r][0]:.4f}" + (f" +- {al[r][1]:.2g}" if al[r][1] else "")
                for r in an.REGIONS
            )
        )
    print(f"operator products: {summ.num_products}; seconds: {seconds:.1f}")

    doc = summ.to_dict(include_all_values=True)  # dense: all P values; matrix-free: top only
    doc.update(
        seconds=seconds,
        problem=_problem_name(args),
        dtype=str(J.dtype),
        model=model.config,
        environment=environment(),
        products={"cached": J.cached, "checkpoint": args.checkpoint},
        processes=jax.process_count(),  # > 1: a jax.distributed run over all their devices
        block_size=args.block_size,
    )
    if not args.no_plot:
        png = _plot_spectrum(summ, args.out)
        if png:
            doc["figure"] = png
            print(f"figure: {png}")
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"json: {args.json}")
    return 0


def _plot_spectrum(summ, out: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "no figure: matplotlib is not installed (pip install 'matfree-tj[plot]'); "
            "the table and JSON are complete without it",
            file=sys.stderr,
        )
        return None
    import numpy as np

    os.makedirs(out, exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    s = summ.singular_values if summ.singular_values is not None else summ.top_singular_values
    ax[0].semilogy(np.arange(1, len(s) + 1), s, "o-" if len(s) < 50 else "-", ms=3, lw=1)
    ax[0].axhline(summ.hi, color="gray", ls=":", lw=0.8)
    ax[0].axhline(summ.lo, color="gray", ls=":", lw=0.8)
    ax[0].set(
        xlabel="index i",
        ylabel="sigma_i",
        title=f"singular values of J ({summ.backend}, P={summ.num_params})",
    )
    from ..analysis import REGIONS

    # error bars: the 95% range (guaranteed quadrature bounds widened by the Student-t
    # multiple of the probes' stderr), not the stderr alone, which misses the quadrature bias
    counts = np.array([summ.counts[r] for r in REGIONS])
    ranges = np.array([summ.interval(r) for r in REGIONS])
    yerr = np.clip(np.stack([counts - ranges[:, 0], ranges[:, 1] - counts]), 0.0, None)
    ax[1].bar(REGIONS, counts, yerr=yerr, capsize=4)
    ax[1].set(ylabel="count (95% range)", title="regions")
    fig.tight_layout()
    path = os.path.join(out, f"spectrum_{summ.backend.replace('-', '')}.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _study(args, parser) -> int:
    import jax

    from .study import run_study, write_report

    cfg = _study_config(
        args,
        lo=args.lo,
        hi=args.hi,
        num_vectors=args.num_vectors,
        num_moved=args.num_moved,
        num_eps=args.num_eps,
        num_seeds=args.num_seeds,
        max_products=args.max_products,
        tol=args.tol,
    )
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = run_study(cfg, key=jax.random.key(args.seed), progress=progress)
    paths = write_report(results, args.out)
    for row in results["claims"]:
        vals = "; ".join(f"{b}: {row[b]}" for b in ("dense", "matrix-free") if b in row)
        print(
            f"- {row['claim']}\n    {vals}"
            + (f"  [agree: {row['agree']}]" if "agree" in row else "")
        )
    print(
        f"wrote {paths['json']}, {paths['markdown']} and {len(paths['figures'])} figures "
        f"in {results['seconds']:.1f}s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``matfree-tj``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _distributed.start(args, parser)  # jax.distributed.initialize before any other JAX use
    _setup(args, parser)
    try:
        if args.command == "spectrum":
            return _spectrum(args, parser)
        return _study(args, parser)
    except ValueError as e:
        # options that only the model can check (num_steps <= P, a product budget too small
        # for the run): a usage error naming the problem, not a traceback
        parser.error(str(e))
    except OSError as e:  # writing the results failed after the checks (disk full, removed)
        print(f"matfree-tj: cannot write the results: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
