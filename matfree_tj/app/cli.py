r"""Command line: ``matfree-tj spectrum``, ``study`` and ``trajectory`` (``python -m matfree_tj``).

``spectrum`` measures the singular-value regions of a training Jacobian (the paper's reference
digits MLP by default; ``--problem`` takes a built-in example by name or any ``module:function``
returning ``.train_fn`` and ``.params0``), matrix-free by default, and prints
``region | count | stderr`` and the top singular values; ``--json`` writes every number, ``--out``
gets a PNG of the values.
``study`` runs the eight experiments of Belrose & Scherlis (2024) into ``--out``: ``study.json``,
PNG figures and ``summary.md``. ``--quick`` uses a tiny model and few probes (seconds).
``trajectory`` records one run's checkpoints every ``--every`` steps and writes the InPCA
embedding of their predictions (the hyper-ribbon: eigenvalues, explained stress, widths and
their decay) as ``trajectory.json`` and PNGs into ``--out``.
``spectrum --resume DIR`` saves progress after every restart cycle and SLQ probe (``study
--resume DIR`` after every finished experiment) and continues a killed run (README, "Long
runs: resume and progress"); Ctrl-C stops with one line, exit 130.
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
import uuid

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


def _model_options(p: argparse.ArgumentParser) -> None:
    """The options every command shares: which training run, where the output goes."""
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


def _common(p: argparse.ArgumentParser) -> None:
    """The options of the spectral commands (spectrum, study)."""
    _model_options(p)
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


def _resume_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--resume DIR`` (``what`` says what is saved) and ``--restart``."""
    p.add_argument("--resume", default=None, metavar="DIR", help=what)
    p.add_argument(
        "--restart",
        action="store_true",
        help="with --resume: delete the state saved in DIR and start over",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matfree-tj",
        description="The spectrum of a neural network's training Jacobian "
        "J = d theta_T / d theta_0, matrix-free.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{spectrum,study,trajectory}")
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
        choices=("matrix-free", "dense", "auto"),
        default="matrix-free",
        help="matrix-free (default: SLQ counts, Lanczos top values), dense "
        "(materialise J: P products, O(P^2) memory, full SVD) or auto (dense when it fits in "
        "memory and is expected to be cheaper, else matrix-free; the output says which and why)",
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
    sp.add_argument(
        "--compare-dense",
        action="store_true",
        help="matrix-free: also materialise J and take its dense SVD (P products, P^2 memory), "
        "overlay it on the picture and report the share of indices inside the 95%% band",
    )
    _resume_options(
        sp,
        "matrix-free: save progress in DIR after every restart cycle and SLQ probe; the "
        "same command with the same DIR continues a killed or interrupted run (identical "
        "numbers); another run's DIR is an error",
    )
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
    _resume_options(
        st,
        "save every finished experiment (and, matrix-free, every restart cycle of the "
        "triplet solvers) in DIR; the same command with the same DIR continues a killed or "
        "interrupted study with the same numbers; another study's DIR is an error",
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

    tr = sub.add_parser(
        "trajectory",
        help="the hyper-ribbon of one training run: InPCA of its checkpoints",
        description="Record the parameters every --every steps of one training run, compare "
        "the checkpoints' predictions on the probe set by Bhattacharyya distances, embed them "
        "by InPCA and write trajectory.json (eigenvalues, explained stress, ribbon widths and "
        "their geometric decay) and PNG figures into --out. The problem gives apply(params, x) "
        "and probe_inputs (or X_test); prediction_kind 'categorical' (default; softmax of "
        "apply) or 'gaussian' (apply's output as means, standard deviation .sigma). A run "
        "with model_state= whose apply takes three arguments gets apply(params, x, state) "
        "with each checkpoint's state.",
    )
    _model_options(tr)
    _resume_options(
        tr,
        "save the checkpoints' predictions and the distance matrix in DIR once computed; "
        "the same command with the same DIR continues from there (another run's DIR is an "
        "error)",
    )
    tr.add_argument(
        "--every",
        type=_positive_int,
        default=None,
        help="checkpoint spacing in optimizer steps (default: about 50 checkpoints, T // 50); "
        "the last step is always a checkpoint",
    )
    tr.add_argument(
        "--num-components",
        type=_positive_int,
        default=10,
        help="InPCA components (default 10; at most the number of checkpoints)",
    )
    tr.add_argument(
        "--method",
        choices=("auto", "dense", "lanczos"),
        default="auto",
        help="InPCA eigensolver: auto (default: dense below 5,000 checkpoints), dense, lanczos",
    )
    tr.add_argument(
        "--num-inputs",
        type=_positive_int,
        default=None,
        help="use the first N probe inputs only (default: all of them)",
    )
    tr.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=16,
        help="checkpoints evaluated together when predicting (default 16)",
    )
    tr.add_argument("--no-plot", action="store_true", help="do not write the PNGs")
    return parser


def _log(args):
    """Progress lines on stderr with the seconds since the start, and a bar of the current
    stage when stderr is a terminal (:class:`~matfree_tj.app._progress.Progress`); nothing with
    ``--quiet``."""
    from ._progress import Progress

    return Progress(quiet=args.quiet or not _distributed.is_writer(args))


def _setup(args, parser) -> None:
    """Check every option that needs no model, then enable x64 if asked (before any build)."""
    if hasattr(args, "lo") and not (0.0 <= args.lo <= 1.0 <= args.hi and args.lo < args.hi):
        parser.error(
            f"expected 0 <= --lo <= 1 <= --hi and --lo < --hi, got --lo {args.lo} --hi {args.hi}"
        )
    if getattr(args, "tol", None) is not None and not 0.0 < args.tol < 1.0:
        parser.error(f"expected 0 < --tol < 1, got --tol {args.tol}")
    if args.command == "study" and args.num_seeds < 2:
        parser.error(f"--num-seeds must be >= 2, got {args.num_seeds}")
    _check_problem_options(args, parser)
    if args.command == "spectrum" and args.resume is not None and args.backend == "dense":
        parser.error("--resume applies to --backend matrix-free (dense is a single SVD)")
    if getattr(args, "restart", False) and getattr(args, "resume", None) is None:
        parser.error("--restart needs --resume DIR (the folder to start over in)")
    if getattr(args, "resume", None) is not None and getattr(args, "coordinator", None):
        parser.error(
            "--resume does not combine with --coordinator yet (every process would write the "
            "same state folder); run the distributed job without --resume"
        )
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
        train_fn=train_fn, params0=params0, num_params=num_params, config=config, run=run
    )
    return model, name


def _check_outputs(args, parser) -> None:
    """Fail before any compute if the results could not be written (a run can take minutes)."""
    folders = []
    # trajectory always writes trajectory.json into --out
    if args.command in ("study", "trajectory") or not getattr(args, "no_plot", False):
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

    if args.compare_dense and args.backend == "dense":
        parser.error("--compare-dense adds a dense SVD to a matrix-free run; drop --backend dense")
    log = _log(args)
    args._log = log  # main() closes its bar on an interrupt
    auto = args.backend == "auto"
    if auto:  # decided once J exists; checked as matrix-free (the stricter limits) until then
        args.backend = "matrix-free"
    cfg = _study_config(args).resolved()
    t0 = time.perf_counter()
    run_id = uuid.uuid4().hex[:12]
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
    store = None
    if args.resume is not None:
        from ..linalg import RunStore

        store = RunStore(args.resume, restart=args.restart)
        skip = ("out", "json", "no_plot", "quiet", "resume", "restart", "_log")
        store.claim(
            "command",
            {
                "command": "spectrum",
                "problem": _problem_name(args),
                "model": model.config,
                "options": {k: v for k, v in vars(args).items() if k not in skip},
            },
        )
    stale = [args.json] if args.json else []
    if not args.no_plot:
        stale += [
            _figure_path(args.out, b)
            for b in (("matrix-free", "dense") if auto else (args.backend,))
        ]
    for path in stale:  # a run that fails must not leave a previous run's results as its own
        if _distributed.is_writer(args) and os.path.exists(path):
            os.remove(path)
            log(f"removed the previous run's {path}")
    cache = {} if args.cache == "auto" else dict(forward="jvp", cache_reverse=False)
    J = training_jacobian(
        model.train_fn,
        model.params0,
        checkpoint=args.checkpoint,
        mesh=_distributed.mesh(args),
        **cache,
    )
    log(f"products: cached {J.cached}, checkpoint {args.checkpoint}")
    why = None
    if auto and (store is not None or args.compare_dense or args.coordinator is not None):
        why = "--resume, --compare-dense and --coordinator need the matrix-free backend"
        log(f"--backend auto: matrix-free ({why})")
    elif auto:
        args.backend, why = an.choose_backend(
            J,
            num_top=args.num_top,
            num_deflate=args.num_deflate,
            num_probes=cfg.num_probes,
            num_steps=cfg.num_steps,
        )
        log(f"--backend auto: {args.backend} ({why})")
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
        resume_dir=store,
        top_opts={"block_size": args.block_size} if args.block_size > 1 else None,
    )
    log.close()
    seconds = time.perf_counter() - t0
    log(f"done in {seconds:.1f}s")
    if not _distributed.is_writer(args):
        return 0  # process 0 prints and writes the results (every process holds them)

    print(f"training Jacobian of {label}: P = {P}, backend = {args.backend}, dtype = {J.dtype}")
    if why is not None:
        print(f"backend chosen by --backend auto: {args.backend}, because {why}")
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
    _print_top(summ)
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
        run_id=run_id,
        seconds=seconds,
        problem=_problem_name(args),
        dtype=str(J.dtype),
        model=model.config,
        environment=environment(),
        products={"cached": J.cached, "checkpoint": args.checkpoint},
        processes=jax.process_count(),  # > 1: a jax.distributed run over all their devices
        block_size=args.block_size,
    )
    dense_values = None
    if args.compare_dense:
        import numpy as np

        from ..linalg import dense_svd

        log(f"--compare-dense: materialising J ({P} forward products) and a full SVD")
        dense_values = np.asarray(dense_svd(J).s, dtype=np.float64)
        inside = summ.profile.coverage(dense_values)
        print(
            f"dense check: {inside:.1%} of the {summ.profile.index.size} plotted indices have the "
            f"dense sigma_i inside the {summ.profile.level:.0%} band"
        )
        doc["dense_check"] = {
            "inside_band": inside,
            "num_indices": int(summ.profile.index.size),
            "singular_values": [float(x) for x in dense_values],
        }
    if not args.no_plot:
        png = _plot_spectrum(summ, args.out, dense_values)
        if png:
            doc["figure"] = png
            print(f"figure: {png}")
    if store is not None:
        doc["resume_dir"] = store.path
    if args.json:
        from ..linalg import atomic_write

        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        atomic_write(args.json, json.dumps(doc, indent=1))
        print(f"json: {args.json}")
    return 0


def _figure_path(out: str, backend: str) -> str:
    return os.path.join(out, f"spectrum_{backend.replace('-', '')}.png")


def _plot_spectrum(summ, out: str, dense_values=None) -> str | None:
    """The whole spectrum (sigma_i and |sigma_i - 1| against i; matrix-free: the SLQ estimate
    with its 95% band and the deflated top values; dense values when computed) into
    ``out/spectrum_<backend>.png``; ``None`` without matplotlib (said on stderr)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "no figure: matplotlib is not installed (pip install 'matfree-tj[plot]'); "
            "the table and JSON are complete without it",
            file=sys.stderr,
        )
        return None
    from ._figures import spectrum_figure

    os.makedirs(out, exist_ok=True)
    return spectrum_figure(summ, _figure_path(out, summ.backend), values=dense_values)


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
    progress = None if args.quiet else _log(args)
    args._log = progress
    for name in ("study.json", "summary.md"):  # not a previous run's results as this one's
        path = os.path.join(args.out, name)
        if os.path.exists(path):
            os.remove(path)
    store = None
    if args.resume is not None:
        from ..linalg import RunStore

        store = RunStore(args.resume, restart=args.restart)
    results = run_study(cfg, key=jax.random.key(args.seed), progress=progress, resume_dir=store)
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


def _trajectory_problem(args, parser):
    """``(model, label)``: the run with ``apply``, ``probe_inputs``, ``prediction_kind`` and
    ``sigma`` for trajectory geometry, checked before any training."""
    from ..core import TrainFn
    from .study import StudyConfig, build_model

    if _problem_name(args) == "digits_mlp":
        cfg = StudyConfig(
            hidden=args.hidden,
            optimizer=args.optimizer or "sgd",
            seed=args.seed,
            quick=args.quick,
            dtype=args.dtype or "float32",
        ).resolved()
        run = build_model(cfg)
        label = f"digits MLP hidden={cfg.hidden} optimizer={cfg.optimizer} seed={cfg.seed}"
        model = _namespace(run.train_fn, run.params0, run.num_params, dict(run.config), run)
    else:
        model, label = _build_problem(args, parser)
        run = model.run
    spec = args.problem or "digits_mlp"
    apply = getattr(run, "apply", None) or getattr(run, "apply_fn", None)
    probe = getattr(run, "probe_inputs", None)
    if probe is None:
        probe = getattr(run, "X_test", None)
    kind = getattr(run, "prediction_kind", "categorical")
    sigma = getattr(run, "sigma", None)
    if not callable(apply) or probe is None:
        parser.error(
            f"--problem {spec}: trajectory compares the checkpoints' predictions, so the "
            "object FUNCTION() returns needs .apply(params, x) (or .apply_fn) and "
            ".probe_inputs (or .X_test), like matfree_tj.examples.digits_mlp()"
        )
    if kind not in ("categorical", "gaussian"):
        parser.error(
            f"--problem {spec}: prediction_kind must be 'categorical' or 'gaussian', got {kind!r}"
        )
    if kind == "gaussian" and not (isinstance(sigma, (int, float)) and sigma > 0):
        parser.error(
            f"--problem {spec}: prediction_kind 'gaussian' needs .sigma > 0 (the predictions' "
            f"standard deviation), got {sigma!r}"
        )
    if not isinstance(model.train_fn, TrainFn):
        parser.error(
            f"--problem {spec}: trajectory records the steps of a run built by "
            "matfree_tj.make_train_fn; train_fn is a "
            f"{type(model.train_fn).__name__}"
        )
    import jax

    n_probe = int(jax.tree_util.tree_leaves(probe)[0].shape[0])
    if args.num_inputs is not None:
        if args.num_inputs > n_probe:
            parser.error(
                f"--num-inputs must be <= {n_probe} (the probe set), got {args.num_inputs}"
            )
        probe = jax.tree_util.tree_map(lambda a: a[: args.num_inputs], probe)
    T = model.train_fn.num_steps
    every = args.every if args.every is not None else max(1, T // 50)
    if every > T:
        parser.error(f"--every must be <= T = {T} (the run's steps), got {every}")
    m = len(range(0, T + 1, every)) + (T % every != 0)
    if args.num_components > m:
        parser.error(
            f"--num-components must be <= {m} (the checkpoints of --every {every} over "
            f"T = {T} steps), got {args.num_components}; lower it or --every"
        )
    if args.method == "lanczos" and args.num_components > m - 1:
        parser.error(f"--method lanczos needs --num-components <= {m - 1}")
    # a run with model state (BatchNorm statistics, ...) whose apply takes it: apply(p, x, s_t)
    with_state = model.train_fn.model_state is not None and _takes_three(apply)
    extra = dict(
        apply=apply, probe=probe, kind=kind, sigma=sigma, every=every, T=T, with_state=with_state
    )
    return model, label, extra


def _takes_three(fn) -> bool:
    import inspect

    try:
        inspect.signature(fn).bind(0, 0, 0)
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (a builtin): assume (params, x)
        return False
    return True


def _namespace(train_fn, params0, num_params, config, run):
    import types

    return types.SimpleNamespace(
        train_fn=train_fn, params0=params0, num_params=num_params, config=config, run=run
    )


def _trajectory(args, parser) -> int:
    import jax
    import numpy as np

    from ..core import record_trajectory, trajectory_predictions
    from ..trajectory import bhattacharyya_distances, inpca, ribbon_widths
    from .study import environment

    log = _log(args)
    t0 = time.perf_counter()
    model, label, x = _trajectory_problem(args, parser)
    kind, every, T = x["kind"], x["every"], x["T"]
    stage = None
    if args.resume is not None:
        from ..linalg import RunStore

        store = RunStore(args.resume, restart=args.restart)
        skip = ("out", "no_plot", "quiet", "resume", "restart", "_log")
        store.claim(
            "command",
            {
                "command": "trajectory",
                "problem": _problem_name(args),
                "model": model.config,
                "options": {k: v for k, v in vars(args).items() if k not in skip},
            },
        )
        stage = store.stage("trajectory", every=int(every), T=int(T))
        log(f"saving the predictions and distances in {store.path}")
    stale = os.path.join(args.out, "trajectory.json")
    if os.path.exists(stale):  # a run that fails must not leave a previous run's results
        os.remove(stale)
    n_in = int(jax.tree_util.tree_leaves(x["probe"])[0].shape[0])
    saved = None if stage is None else stage.load("predictions")
    if saved is not None:
        preds, steps = saved["preds"], saved["steps"]
        m = len(steps)
        log(f"{m} checkpoints' predictions loaded from {args.resume}")
    else:
        log(
            f"{label}: P={model.num_params}, T={T} steps; recording every {every} steps "
            "(one training run)"
        )
        traj = record_trajectory(model.train_fn, model.params0, every=every)
        m, steps = traj.num_checkpoints, np.asarray(traj.steps)
        log(f"{m} checkpoints; predictions on {n_in} probe inputs ({kind})")
        output = "log_probabilities" if kind == "categorical" else "raw"
        preds = trajectory_predictions(
            x["apply"],
            traj,
            x["probe"],
            output=output,
            chunk_size=args.chunk_size,
            with_model_state=x["with_state"],
        )
        if stage is not None:
            stage.save("predictions", {"preds": np.asarray(preds), "steps": steps})
    saved = None if stage is None else stage.load("distances")
    if saved is not None:
        D = jax.numpy.asarray(saved["D"])
        log(f"distances ({m} x {m}) loaded from {args.resume}")
    else:
        log(f"Bhattacharyya distances ({m} x {m})")
        if kind == "categorical":
            D = bhattacharyya_distances(preds, kind="categorical", log=True)
        else:
            D = bhattacharyya_distances(preds, kind="gaussian", sigma=float(x["sigma"]))
        if stage is not None:
            stage.save("distances", {"D": np.asarray(D)})
    log(f"InPCA: {args.num_components} components ({args.method})")
    res = inpca(
        D,
        num_components=args.num_components,
        method=args.method,
        key=jax.random.key(args.seed),
        progress=log,
    )
    rw, ribbon_note = None, "fewer than 2 components"
    if res.num_components >= 2:
        try:
            rw = ribbon_widths(res)
        except ValueError as e:  # fewer than 2 eigenvalues resolved from zero: no decay to fit
            ribbon_note = str(e)
            log(f"no width decay fit: {e}")
    seconds = time.perf_counter() - t0
    log(f"done in {seconds:.1f}s")

    steps = np.asarray(steps)
    print(
        f"hyper-ribbon of {label}: {m} checkpoints (every {every} of T = {T} steps), "
        f"{n_in} probe inputs, {kind} distances, InPCA {res.method}"
    )
    print("eigenvalues (signed, by |lambda|): " + ", ".join(f"{v:.4g}" for v in res.eigenvalues))
    print(
        "explained stress: "
        + ", ".join(f"{j + 1}: {c:.4f}" for j, c in enumerate(res.explained_stress))
    )
    if rw is not None:
        print(
            f"widths sqrt|lambda|: decay ratio {rw.decay_ratio:.4f} +- "
            f"{rw.decay_ratio_stderr:.2g} per component (log slope {rw.log_slope:.4f} +- "
            f"{rw.log_slope_stderr:.2g}); stress of 2 / 3 components: "
            f"{_fmt(rw.stress_2)} / {_fmt(rw.stress_3)}"
        )
    print(
        f"residuals max {float(np.max(res.residuals)):.2g}, all converged: "
        f"{bool(np.all(res.converged))}; seconds: {seconds:.1f}"
    )

    doc = dict(
        settings=dict(
            problem=_problem_name(args),
            model=model.config,
            num_params=int(model.num_params),
            num_steps=int(T),
            every=int(every),
            steps=[int(s) for s in steps],
            num_checkpoints=int(m),
            num_inputs=int(n_in),
            kind=kind,
            sigma=None if kind == "categorical" else float(x["sigma"]),
            num_components=int(args.num_components),
            method=args.method,
            seed=int(args.seed),
        ),
        inpca=res.to_dict(include_coords=True),
        ribbon=None if rw is None else rw.to_dict(),
        ribbon_note=None if rw is not None else ribbon_note,
        seconds=seconds,
        environment=environment(),
    )
    if not args.no_plot:
        figs = _plot_trajectory(res, rw, steps, args.out, label)
        if figs:
            doc["figures"] = figs
            print("figures: " + ", ".join(figs))
    path = os.path.join(args.out, "trajectory.json")
    from ..linalg import atomic_write

    atomic_write(path, json.dumps(doc, indent=1))
    print(f"json: {path}")
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _plot_trajectory(res, rw, steps, out: str, label: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "no figures: matplotlib is not installed (pip install 'matfree-tj[plot]'); "
            "the table and JSON are complete without it",
            file=sys.stderr,
        )
        return []
    import numpy as np

    from ._figures import save_png

    os.makedirs(out, exist_ok=True)
    paths = []
    X, k = np.asarray(res.coords), res.num_components
    pairs = [(0, 1), (0, 2)] if k >= 3 else [(0, 1)] if k >= 2 else []
    if pairs:
        fig, axes = plt.subplots(
            1, len(pairs), figsize=(4.6 * len(pairs), 3.8), squeeze=False, layout="constrained"
        )
        for ax, (i, j) in zip(axes[0], pairs, strict=True):
            ax.plot(X[:, i], X[:, j], "-", color="0.8", lw=0.8, zorder=1)
            sc = ax.scatter(X[:, i], X[:, j], c=steps, cmap="viridis", s=14, zorder=2)
            ax.set(
                xlabel=f"InPCA {i + 1} (lambda {res.eigenvalues[i]:+.3g})",
                ylabel=f"InPCA {j + 1} (lambda {res.eigenvalues[j]:+.3g})",
            )
        fig.colorbar(sc, ax=axes[0].tolist(), label="training step")
        fig.suptitle(f"trajectory of {label}", fontsize=9)
        paths.append(os.path.join(out, "trajectory_embedding.png"))
        save_png(fig, paths[-1])
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.plot(np.arange(1, k + 1), res.explained_stress, "o-", ms=3)
    ax.set(
        xlabel="components j",
        ylabel="explained stress chi_j",
        ylim=(0, 1.02),
        title="stress explained by the first j components",
    )
    fig.tight_layout()
    paths.append(os.path.join(out, "trajectory_stress.png"))
    save_png(fig, paths[-1])
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    w = np.sqrt(np.abs(np.asarray(res.eigenvalues)))
    idx = np.arange(k)
    pos = np.asarray(res.eigenvalues) >= 0
    ax.semilogy(idx[pos] + 1, w[pos], "o", ms=4, label="lambda > 0")
    ax.semilogy(idx[~pos] + 1, w[~pos], "s", ms=4, mfc="none", label="lambda < 0")
    if rw is not None:
        a, b = rw.fit_range
        fit = np.exp(rw.intercept + rw.log_slope * idx[a:b])
        ax.semilogy(
            idx[a:b] + 1,
            fit,
            "-",
            color="0.4",
            lw=1,
            label=f"ratio {rw.decay_ratio:.3f} per component",
        )
    ax.set(xlabel="component i", ylabel="width sqrt|lambda_i|", title="ribbon widths")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out, "trajectory_widths.png"))
    save_png(fig, paths[-1])
    return paths


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``matfree-tj``; returns the exit status (130 after Ctrl-C)."""
    from ..linalg import ResumeError

    parser = build_parser()
    args = parser.parse_args(argv)
    _distributed.start(args, parser)  # jax.distributed.initialize before any other JAX use
    _setup(args, parser)
    from ._progress import catch_interrupts

    catch_interrupts()
    try:
        if args.command == "spectrum":
            return _spectrum(args, parser)
        if args.command == "trajectory":
            return _trajectory(args, parser)
        return _study(args, parser)
    except ValueError as e:
        # options that only the model can check (num_steps <= P, a product budget too small
        # for the run): a usage error naming the problem, not a traceback
        parser.error(str(e))
    except OSError as e:  # writing the results failed after the checks (disk full, removed)
        print(f"matfree-tj: cannot write the results: {e}", file=sys.stderr)
        return 1
    except ResumeError as e:  # another run's folder, a corrupt state file
        print(f"matfree-tj: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; the saved state stays
        log = getattr(args, "_log", None)
        if log is not None and hasattr(log, "close"):
            log.close()
        resume = getattr(args, "resume", None)
        if resume:
            msg = f"progress is saved in {resume}; run the same command to continue"
        elif args.command == "spectrum" and args.backend == "matrix-free":
            msg = "nothing saved (--resume DIR makes a run continue where it stopped)"
        else:
            msg = "nothing saved"
        print(f"matfree-tj: interrupted; {msg}", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _print_top(summ) -> None:
    """The top singular values; matrix-free, each uncertified one marked with its residual (a
    value without a certificate is a Ritz value, not a measured singular value)."""
    st = summ.settings or {}
    conv, res = st.get("top_converged"), st.get("top_residuals")
    vals = [float(x) for x in summ.top_singular_values]
    if conv is None or res is None:
        print("top singular values: " + ", ".join(f"{x:.4g}" for x in vals))
        return
    cells = [
        f"{x:.4g}" if c else f"{x:.4g} (NOT certified: residual {r:.2g})"
        for x, c, r in zip(vals, conv, res, strict=True)
    ]
    n_ok = sum(bool(c) for c in conv)
    print(
        f"top singular values ({n_ok}/{len(vals)} certified; residuals from fresh products, "
        "an exact value within residual/sqrt(2) of each certified one): " + ", ".join(cells)
    )
