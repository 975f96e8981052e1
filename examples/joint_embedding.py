"""Do training runs with different seeds, optimizers and learning rates share one
low-dimensional manifold? A joint InPCA embedding of digits-MLP trajectories.

Mao et al. (PNAS 2024, arXiv 2305.01604) embed the checkpoints of many networks together and
find that the first few InPCA dimensions explain most of the stress: training explores the
same low-dimensional manifold whatever the configuration. This script trains several digits
MLPs (mtj.examples.digits_mlp; seeds, SGD with momentum / Adam, learning rates), records each
trajectory (mtj.record_trajectory), takes every checkpoint's class probabilities on the 197
test digits (mtj.trajectory_predictions, log-softmax), computes all categorical Bhattacharyya
distances between the checkpoints of all runs (mtj.bhattacharyya_distances) and embeds them
jointly (mtj.inpca). It prints the stress explained by 2 and 3 components for the joint
embedding and for each run alone, and saves the first two InPCA coordinates per run.

Measured (full run: hidden 16, 640 training digits, 80 steps, a checkpoint every 4 steps; six
runs, final test accuracy 0.60 to 0.93; 126 checkpoints; float32): jointly, 2 components
explain 0.944 and 3 components 0.977 of the stress (each run alone: 0.970-0.994 with 2), and the
widths shrink by 0.785 +- 0.038 per component. The runs share one low-dimensional manifold,
as the PNAS study found for far larger models (Mao et al. 2025 report that 2 dims explain
about 71% of the stress of CIFAR-10 trajectories).

    python examples/joint_embedding.py           # 6 runs x 21 checkpoints (a minute or two)
    python examples/joint_embedding.py --quick   # 2 tiny runs, seconds
"""

import argparse
import json
import os

import numpy as np

import matfree_tj as mtj

RUNS = [  # (seed, optimizer, peak learning rate)
    (0, "sgd", 0.1),
    (1, "sgd", 0.1),
    (2, "sgd", 0.1),
    (0, "sgd", 0.03),
    (0, "adam", 3e-3),
    (1, "adam", 1e-2),
]


def trajectory_log_probs(seed, optimizer, lr, *, hidden, num_train, num_epochs, every):
    run = mtj.examples.digits_mlp(
        hidden=hidden,
        seed=seed,
        optimizer=optimizer,
        learning_rate=lr,
        num_train=num_train,
        num_epochs=num_epochs,
    )
    traj = mtj.record_trajectory(run.train_fn, run.params0, every=every)
    logp = mtj.trajectory_predictions(run.apply, traj, run.X_test, output="log_probabilities")
    accuracy = float(np.mean(np.argmax(logp[-1], -1) == np.asarray(run.y_test)))
    return logp, np.asarray(traj.steps), accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two tiny runs")
    parser.add_argument("--out", default=".", help="folder for the figure and JSON")
    args = parser.parse_args(argv)
    if args.quick:
        runs, sizes = RUNS[:1] + RUNS[4:5], dict(hidden=8, num_train=128, num_epochs=2, every=1)
    else:
        runs, sizes = RUNS, dict(hidden=16, num_train=640, num_epochs=8, every=4)

    logps, labels, steps = [], [], []
    for seed, opt, lr in runs:
        logp, st, acc = trajectory_log_probs(seed, opt, lr, **sizes)
        logps.append(logp)
        labels.append(f"{opt} lr={lr:g} seed={seed}")
        steps.append(st)
        print(f"{labels[-1]:<26} {len(st)} checkpoints, final test accuracy {acc:.3f}")
    P = np.concatenate(logps)  # (sum of m_r, 197, 10)
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(steps)])
    D = mtj.bhattacharyya_distances(P, kind="categorical", log=True)
    k = min(10, P.shape[0])
    joint = mtj.inpca(D, num_components=k)
    jw = mtj.ribbon_widths(joint)
    print(
        f"joint embedding of {len(runs)} runs, {P.shape[0]} checkpoints: stress explained by "
        f"2 / 3 components {jw.stress_2:.3f} / {jw.stress_3:.3f}; widths decay ratio "
        f"{jw.decay_ratio:.3f} +- {jw.decay_ratio_stderr:.2g}; signature of the top {k} "
        f"(positive, negative) {joint.signature}"
    )
    alone = []
    Dn = np.asarray(D)
    for i, label in enumerate(labels):
        idx = np.flatnonzero(owner == i)
        res = mtj.inpca(Dn[np.ix_(idx, idx)], num_components=min(3, len(idx)))
        chi = res.explained_stress
        alone.append(dict(run=label, stress=[float(c) for c in chi]))
        print(f"  {label:<26} alone: stress of 2 / 3 components {chi[1]:.3f} / {chi[-1]:.3f}")

    os.makedirs(args.out, exist_ok=True)
    doc = dict(
        runs=labels,
        sizes=sizes,
        joint=joint.to_dict(),
        ribbon=jw.to_dict(),
        alone=alone,
    )
    with open(os.path.join(args.out, "joint_embedding.json"), "w") as f:
        json.dump(doc, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no figure: pip install 'matfree-tj[plot]'")
        return
    fig, ax = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
    X = np.asarray(joint.coords)
    for i, label in enumerate(labels):
        idx = owner == i
        ax.plot(X[idx, 0], X[idx, 1], "o-", ms=3, lw=0.8, label=label)
    ax.set(
        xlabel=f"InPCA 1 (lambda {joint.eigenvalues[0]:+.3g})",
        ylabel=f"InPCA 2 (lambda {joint.eigenvalues[1]:+.3g})",
        title=f"{len(runs)} digits-MLP runs; 2 dims explain {jw.stress_2:.2f} of the stress",
    )
    ax.legend(fontsize=7)
    path = os.path.join(args.out, "joint_embedding.png")
    fig.savefig(path, dpi=80)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
