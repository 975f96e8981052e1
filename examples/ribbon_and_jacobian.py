"""The hyper-ribbon of a run tied to its training Jacobian: where does training move?

For one digits-MLP run this records the trajectory (mtj.record_trajectory), builds the training
Jacobian J of the same run, and compares (matfree_tj.trajectory.trajectory_vs_jacobian):
the displacement theta_T - theta_0 and the trajectory's principal directions against J's top
right singular vectors and the moved directions (top singular vectors of J - I), each against
the random-subspace baseline k/P; and the stress of the ribbon (categorical Bhattacharyya
distances on the test digits) that the trajectory keeps when projected on J's chaotic subspace
(singular values > 1.1) or on the moved subspace, against random subspaces of the same size.

Measured (full run: hidden 8, P = 610, 256 digits, T = 16 steps of SGD + momentum, float64,
dense J, k = 150): J has 46 chaotic singular values (up to 2.39). The displacement has
cos^2 = 0.996 with the 150 moved directions (right; 0.994 left) against 0.254 +- 0.021 for a
random 150-dim subspace, and 0.585 with J's top-150 right singular vectors; the trajectory's
top principal directions lie in the moved subspace (principal cosines 1.000, 0.999, 0.998, ...).
Projected on the 46-dim chaotic subspace the trajectory keeps 0.737 of the ribbon's stress
(random 46-dim subspaces: 0.008 +- 0.003); on the 150-dim moved subspace 0.999 (random: 0.088).
Training moves, and the ribbon lives, in the few directions where J departs from the identity.

    python examples/ribbon_and_jacobian.py           # hidden 8 (P = 610), dense J, a minute
    python examples/ribbon_and_jacobian.py --quick   # fewer steps and directions, seconds
"""

import argparse
import json
import os

import jax
import numpy as np

import matfree_tj as mtj
from matfree_tj.trajectory import trajectory_vs_jacobian

jax.config.update("jax_enable_x64", True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and directions")
    parser.add_argument("--hidden", type=int, default=None, help="MLP width (8, P = 610; quick 4)")
    parser.add_argument("--k", type=int, default=None, help="subspace dimension (default 150)")
    parser.add_argument("--out", default=".", help="folder for the JSON")
    args = parser.parse_args(argv)
    epochs, k, every = (1, 8, 1) if args.quick else (4, args.k or 150, 2)
    hidden = args.hidden or (4 if args.quick else 8)
    run = mtj.examples.digits_mlp(
        hidden=hidden, num_train=256, num_epochs=epochs, dtype=jax.numpy.float64
    )
    traj = mtj.record_trajectory(run.train_fn, run.params0, every=every)
    J = mtj.training_jacobian(run.train_fn, run.params0)
    P, T = J.shape[0], run.config["num_steps"]
    print(f"digits MLP hidden {hidden}: P = {P}, T = {T}, {traj.num_checkpoints} checkpoints")
    tie = trajectory_vs_jacobian(
        traj,
        J,
        k=k,
        key=jax.random.key(0),
        backend="dense",
        apply_fn=run.apply,
        inputs=run.X_test,
        num_random_stress=2 if args.quick else 3,
    )
    print(f"k = {k}: random baseline cos^2 = k/P = {tie.expected_cos2:.4f}")
    print(
        f"{'subspace':<12} | {'cos^2(d, Q)':>11} | principal cosines of the top {tie.num_pcs} PCs"
    )
    for name, c2 in tie.displacement_cos2.items():
        pc = tie.pca_cosines[name]
        print(f"{name:<12} | {c2:11.4f} | " + " ".join(f"{c:.3f}" for c in pc[:6]) + " ...")
    print(
        f"random subspaces: cos^2(d, Q) {tie.random_cos2[0]:.4f} +- {tie.random_cos2[1]:.4f}; "
        f"mean squared PC cosine {tie.random_pca_cos2[0]:.4f} "
        f"(expected {tie.expected_pca_cos2:.4f})"
    )
    print(
        "trajectory PCA variance ratios: "
        + " ".join(f"{v:.3f}" for v in tie.pca_variance_ratio[:5])
    )
    print(
        f"J: top singular values {tie.singular_values[0]:.3g} ... {tie.singular_values[-1]:.3g}; "
        f"{tie.num_chaotic} of the top {k} are chaotic (> 1.1)"
    )
    for name, chi in tie.stress_fraction.items():
        mean, std = tie.random_stress_fraction[name]
        print(
            f"stress kept on the {name} subspace: {chi:.4f} (random subspaces of the same "
            f"dimension: {mean:.4f} +- {std:.4f})"
        )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ribbon_and_jacobian.json"), "w") as f:
        json.dump(dict(P=P, T=T, k=k, tie=tie.to_dict()), f, indent=1)
    return np.isfinite(tie.displacement_norm)


if __name__ == "__main__":
    main()
