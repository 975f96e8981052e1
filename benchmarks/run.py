"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only PART ...]``.

Parts (default: all, in this order):

``products``   issue 2: products vs one training run on the reference model (bench_products)
``reference``  issue 3 performance + issue 5 part 4: matrix-free vs dense J + SVD and scipy
               svds anchors on the reference model (bench_reference)
``crossover``  issue 5 target: top-50 vs dense J + SVD on wider MLPs (T = 25), up to the
               largest P where dense runs here (bench_crossover)
``scaling``    issue 5 parts 1-2: scaling in P (dense until it cannot run, Lanczos, randomized,
               SLQ) and in T (reverse-product memory per checkpoint option) (bench_scaling)
``accuracy``   issue 5 part 3: error against budget, honesty of the error bars (bench_accuracy)
``gpu``        issue 5 part 5: the GPU suite; skips cleanly without a GPU (gpu_suite)

``--quick`` shrinks every part (smaller models and budgets) so the whole suite finishes in under
10 minutes on 2 CPU cores; results then go to ``*_quick.json`` / ``*_quick.md`` / ``*_quick.png``
(products measures the reference model in both modes, with fewer repeats and without the
per-product RSS processes when quick). Full mode does everything.
Results: ``benchmarks/results/`` (JSON, markdown tables, PNG plots), or ``--out DIR``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import _common as C

PARTS = ("products", "reference", "crossover", "scaling", "accuracy", "gpu")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes: < 10 min on 2 CPU cores")
    p.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=None,
        metavar="PART",
        help=f"parts to run (default all): {', '.join(PARTS)}",
    )
    p.add_argument(
        "--skip", nargs="+", choices=PARTS, default=(), metavar="PART", help="parts to leave out"
    )
    p.add_argument(
        "--scaling",
        nargs="+",
        choices=("p", "t"),
        default=("p", "t"),
        help="which halves of the scaling part (P, T)",
    )
    p.add_argument(
        "--dense-budget",
        type=float,
        default=None,
        help="seconds the dense route may take in the P scan (default 600, quick 60)",
    )
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rebuild tables and plots from the saved JSON",
    )
    a = p.parse_args(argv)
    parts = [x for x in (a.only or PARTS) if x not in a.skip]
    if a.render:
        return render(parts, a.quick, a.out)
    ok, why = C.solvers_available()
    t0 = time.perf_counter()
    print(
        f"benchmarks: {', '.join(parts)} ({'quick' if a.quick else 'full'}) at {C.utc_now()}, "
        f"load {C.load_average()}",
        flush=True,
    )
    for part in parts:
        t = time.perf_counter()
        print(f"\n== {part} ==", flush=True)
        if part in ("reference", "crossover", "scaling", "accuracy") and not ok:
            print(f"skipped: {why}", flush=True)
            continue
        if part == "products":
            from benchmarks import bench_products as B

            B.run(quick=a.quick, out_dir=a.out)
        elif part == "reference":
            from benchmarks import bench_reference as B

            B.run(quick=a.quick, out_dir=a.out)
        elif part == "crossover":
            from benchmarks import bench_crossover as B

            B.run(quick=a.quick, out_dir=a.out)
        elif part == "scaling":
            from benchmarks import bench_scaling as B

            B.run(quick=a.quick, out_dir=a.out, dense_budget=a.dense_budget, parts=a.scaling)
        elif part == "accuracy":
            from benchmarks import bench_accuracy as B

            B.run(quick=a.quick, out_dir=a.out)
        elif part == "gpu":
            from benchmarks import gpu_suite as B

            B.run(quick=a.quick, out_dir=a.out)
        print(f"== {part} done in {time.perf_counter() - t:.0f} s ==", flush=True)
    print(
        f"\nall done in {time.perf_counter() - t0:.0f} s at {C.utc_now()}, load {C.load_average()}",
        flush=True,
    )
    return 0


def render(parts, quick: bool, out_dir) -> int:
    import json

    from benchmarks import (
        bench_accuracy,
        bench_crossover,
        bench_products,
        bench_reference,
        bench_scaling,
    )

    tag = "_quick" if quick else ""
    renderers = {
        "products": [("products", bench_products.render)],
        "reference": [("reference", bench_reference.render)],
        "crossover": [("crossover", bench_crossover.render)],
        "scaling": [("scaling_p", bench_scaling.render_p), ("scaling_t", bench_scaling.render_t)],
        "accuracy": [("accuracy", bench_accuracy.render)],
    }
    for part in parts:
        for name, fn in renderers.get(part, []):
            path = Path(out_dir or C.RESULTS) / f"{name}{tag}.json"
            if not path.exists():
                print(f"{path}: not found, nothing to render")
                continue
            fn(json.loads(path.read_text()), out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
