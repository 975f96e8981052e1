"""Reproduce the training-Jacobian study of Belrose & Scherlis (2024) on the reference model.

The reference configuration: the 64 -> 64 (GELU) -> 10 MLP on scikit-learn digits (P = 4810),
625 steps of SGD with momentum. The eight experiments run with both backends -- dense (the
authors' method: materialise J with forward mode and take a full SVD) and matrix-free (Krylov
triplets and stochastic Lanczos quadrature) -- and the report puts the two side by side:

    python examples/reproduce_paper.py --out out/reproduce          # full study (~30+ min)
    python examples/reproduce_paper.py --quick --out out/quick      # tiny model, ~minutes

Outputs in --out: ``study.json`` (every number), PNG figures, ``summary.md`` (one row per claim:
dense number, matrix-free number, agreement).

The same functions are available one by one in :mod:`matfree_tj.analysis` for your own model:

    import jax, matfree_tj as mtj
    from matfree_tj import analysis
    J = mtj.training_jacobian(train_fn, params0)
    summary = analysis.spectrum_summary(J, key=jax.random.key(0))   # counts with error bars
    moved = analysis.moved_directions(J, 100, key=jax.random.key(1))  # the bulk's complement
"""

import argparse
import sys

import jax

from matfree_tj.app.study import StudyConfig, run_study, write_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/reproduce_paper", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny model: runs in minutes")
    p.add_argument("--backend", choices=("dense", "matrix-free", "both"), default="both")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--hidden", type=int, default=None, help="hidden width (64: reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-products",
        type=int,
        default=None,
        help="budget per matrix-free triplet solve (bounds the bottom-k cost)",
    )
    args = p.parse_args(argv)

    cfg = StudyConfig(
        hidden=args.hidden,
        optimizer=args.optimizer,
        seed=args.seed,
        backend=args.backend,
        quick=args.quick,
        max_products=args.max_products,
    )
    results = run_study(
        cfg, key=jax.random.key(args.seed), progress=lambda m: print(m, file=sys.stderr, flush=True)
    )
    paths = write_report(results, args.out)
    print(open(paths["markdown"]).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
