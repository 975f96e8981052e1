"""Do the left and right singular vectors of the bulk coincide? Dense SVD vs matrix-free.

Belrose & Scherlis (2024) find that in the bulk (singular values near 1) the left and right
singular vectors of the training Jacobian nearly coincide: a perturbation of the initial
parameters along a bulk direction comes out of training unchanged. Dense, that is
cos(u_i, v_i) read off a full SVD. Matrix-free there are no middle singular vectors to read;
instead the stochastic Lanczos quadrature that counts the regions also weighs each Gauss node
by the probe's overlap with its left *and* right Ritz vectors, which estimates
sum_i cos(u_i, v_i) over any interval of singular values (Hutchinson on U g(S) V^T), with no
extra products. This script prints both, region by region, for the same model.

    python examples/bulk_alignment.py            # reference (P = 4810): ~2.5 min dense + ~2.5 min
                                                 # matrix-free on 2 CPU cores
    python examples/bulk_alignment.py --quick    # a tiny model, seconds
    python examples/bulk_alignment.py --no-dense # matrix-free only (any P)
"""

import argparse
import json
import time

import jax
import numpy as np

import matfree_tj as mtj
from matfree_tj import analysis as an


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model for a smoke run")
    parser.add_argument("--hidden", type=int, default=None, help="MLP width (default 64)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense SVD")
    parser.add_argument("--seed", type=int, default=0, help="probe / start-vector key")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args(argv)

    if args.quick:
        ref = mtj.examples.digits_mlp(hidden=args.hidden or 8, num_train=256, num_epochs=2)
    else:
        ref = mtj.examples.digits_mlp(hidden=args.hidden or 64)
    J = mtj.training_jacobian(ref.train_fn, ref.params0)
    P = J.shape[0]
    print(f"model: {ref.config}  P = {P}")
    out = {"P": P, "model": ref.config}

    t0 = time.perf_counter()
    summ = an.spectrum_summary(
        J, key=jax.random.key(args.seed), num_steps=20 if args.quick else None
    )
    out["matrix_free"] = {
        "alignment": summ.settings["alignment"],
        "counts": summ.counts,
        "stderr": summ.stderr,
        "seconds": time.perf_counter() - t0,
        "num_products": summ.num_products,
    }
    if not args.no_dense:
        t0 = time.perf_counter()
        svd = mtj.dense_svd(J, compute_vectors=True)
        cos = an.alignment(svd)
        out["dense"] = {
            "alignment": an.alignment_by_region(svd.s, cos),
            "counts": an.counts_from_values(svd.s),
            "seconds": time.perf_counter() - t0,
        }
        near = np.argsort(np.abs(svd.s - 1.0))
        out["dense"]["closest_to_1"] = {
            w: float(np.mean(cos[near[:w]])) for w in (100, 500, 2000) if w <= P
        }

    print(
        f"\nmean cos(u_i, v_i) per region (matrix-free: +- stderr over "
        f"{summ.settings['num_probes']} probes)"
    )
    print(f"{'region':<8} | {'matrix-free':>20} | {'dense':>8} | {'count (dense)':>13}")
    for r in an.REGIONS:
        m, se = out["matrix_free"]["alignment"][r]
        d = out.get("dense", {}).get("alignment", {}).get(r, (float("nan"),))[0]
        n = out.get("dense", {}).get("counts", {}).get(r, float("nan"))
        print(f"{r:<8} | {m:>10.4f} +- {se:<7.2g} | {d:>8.4f} | {n:>13}")
    for name in ("matrix_free", "dense"):
        if name in out:
            print(f"{name}: {out[name]['seconds']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    main()
