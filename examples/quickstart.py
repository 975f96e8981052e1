"""Quickstart: the training Jacobian of the paper's reference MLP, matrix-free.

Builds the reference run (digits, 64-hidden GELU MLP, 625 SGD steps), wraps
J = d theta_T / d theta_0 as an operator, times one forward and one reverse product, checks
the adjoint identity, and prints the top singular values found by Lanczos.

    python examples/quickstart.py            # reference model (P = 4810), ~1-2 min on 2 CPU cores
    python examples/quickstart.py --quick    # a tiny model, seconds
"""

import argparse
import time

import jax
import jax.numpy as jnp

import matfree_tj as mtj


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model for a smoke run")
    parser.add_argument("--k", type=int, default=10, help="number of top singular values")
    args = parser.parse_args(argv)

    if args.quick:
        ref = mtj.examples.digits_mlp(hidden=8, num_train=256, num_epochs=2)
    else:
        ref = mtj.examples.digits_mlp()
    print(f"model: {ref.config}  P = {ref.num_params}")

    t0 = time.perf_counter()
    J = mtj.training_jacobian(ref.train_fn, ref.params0)
    print(f"operator built (one training run + compile checks) in {time.perf_counter() - t0:.1f} s")

    key_u, key_v, key_s = jax.random.split(jax.random.key(0), 3)
    u = jax.random.normal(key_u, J.shape[:1], J.dtype)
    v = jax.random.normal(key_v, J.shape[:1], J.dtype)
    for name, fn, x in (("J v  ", J.mv, v), ("J^T u", J.rmv, u)):
        fn(x).block_until_ready()  # compile
        t0 = time.perf_counter()
        fn(x).block_until_ready()
        print(f"{name}: {1e3 * (time.perf_counter() - t0):.0f} ms per product")
    lhs, rhs = jnp.vdot(u, J.mv(v)), jnp.vdot(J.rmv(u), v)
    print(f"adjoint identity <u, Jv> - <J^T u, v> (relative): {abs(lhs - rhs) / abs(lhs):.1e}")

    t0 = time.perf_counter()
    top = mtj.top_singular(J, args.k, key=key_s)
    print(
        f"top-{args.k} singular values ({top.num_products} products, "
        f"{time.perf_counter() - t0:.1f} s):"
    )
    for i in range(args.k):
        flag = "converged" if bool(top.converged[i]) else "NOT converged"
        print(
            f"  sigma_{i + 1:<3d} = {float(top.s[i]):10.5f}   "
            f"residual {float(top.residuals[i]):.1e}  {flag}"
        )


if __name__ == "__main__":
    main()
