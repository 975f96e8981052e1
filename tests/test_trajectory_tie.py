"""trajectory_vs_jacobian on GD least squares, where every number has a closed form: the
displacement and the trajectory's principal directions lie in the moved subspace (range of
J - I), the stress fraction of the moved subspace is 1, the chaotic one matches a NumPy oracle,
and the random baselines match k/P within their sampling error."""

import jax
import numpy as np
import optax
import pytest

import matfree_tj as mtj
from matfree_tj.trajectory import trajectory_vs_jacobian


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):
    yield


ETA, SIGMA = 0.5, 0.5


@pytest.fixture(scope="module")
def run():
    lam = np.array([2.4, 0.6, 0.3, 0.1]) / ETA  # one chaotic mode: |1 - 2.4|^8 = 14.8
    lin = mtj.examples.linear_regression(
        jax.random.key(3), 4, 12, eta=ETA, num_steps=8, eigenvalues=lam
    )
    traj = mtj.record_trajectory(lin.train_fn, lin.params0, every=2)
    J = mtj.training_jacobian(lin.train_fn, lin.params0)
    probe = jax.random.normal(jax.random.key(4), (7, 12))
    tie = trajectory_vs_jacobian(
        traj,
        J,
        k=4,
        key=jax.random.key(5),
        backend="dense",
        dense=lin.dense(),
        num_random=64,
        apply_fn=lambda w, x: x @ w,
        inputs=probe,
        kind="gaussian",
        sigma=SIGMA,
    )
    return lin, traj, probe, tie


def test_moved_subspace_holds_the_trajectory(run):
    lin, traj, _, tie = run
    assert (tie.num_params, tie.num_checkpoints, tie.k, tie.num_pcs) == (12, 5, 4, 4)
    assert tie.num_products == 0 and tie.num_chaotic == 1
    for name in ("moved_right", "moved_left"):  # J symmetric here: both are span(W)
        assert abs(tie.displacement_cos2[name] - 1.0) < 1e-10
        np.testing.assert_allclose(tie.pca_cosines[name], 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(tie.singular_values[0], 1.4**8, rtol=1e-10)
    np.testing.assert_allclose(np.sum(tie.pca_variance_ratio), 1.0, rtol=1e-12)
    d = np.asarray(traj.params[-1] - traj.params[0])
    assert abs(tie.displacement_norm - np.linalg.norm(d)) < 1e-12


def test_random_baselines(run):
    _, _, _, tie = run
    assert tie.expected_cos2 == 4 / 12 and tie.expected_pca_cos2 == 4 / 12
    for mean, std in (tie.random_cos2, tie.random_pca_cos2):
        assert abs(mean - 4 / 12) < 4 * std / np.sqrt(64)


def _chi(Theta, B, X):
    def w_of(T):
        F = T @ X.T
        D = ((F[:, None, :] - F[None, :, :]) ** 2).sum(-1) / (8 * SIGMA**2 * X.shape[0])
        L = np.eye(len(T)) - 1.0 / len(T)
        return -0.5 * L @ D @ L

    W = w_of(Theta)
    Wb = w_of(Theta[0] + (Theta - Theta[0]) @ B @ B.T)
    return 1 - np.linalg.norm(W - Wb) / np.linalg.norm(W)


def test_stress_fractions_match_oracle(run):
    lin, traj, probe, tie = run
    Theta, X = np.asarray(traj.flat()), np.asarray(probe)
    chaotic = np.asarray(lin.eigenvectors)[:, :1]  # the mode with factor (1 - 2.4)^8
    assert abs(tie.stress_fraction["chaotic"] - _chi(Theta, chaotic, X)) < 1e-10
    assert abs(tie.stress_fraction["moved_right"] - 1.0) < 1e-10
    # the chaotic mode carries most of the ribbon; a random direction does not
    assert tie.stress_fraction["chaotic"] > 0.5
    assert tie.random_stress_fraction["chaotic"][0] < tie.stress_fraction["chaotic"]
    d = tie.to_dict()
    assert d["stress_fraction"]["moved_right"] == pytest.approx(1.0)


def test_bad_inputs(run):
    lin, traj, probe, _ = run
    J = mtj.training_jacobian(lin.train_fn, lin.params0)
    other = mtj.examples.linear_regression(jax.random.key(9), 4, 12, eta=ETA, num_steps=8)
    wrong = mtj.record_trajectory(other.train_fn, other.params0, every=4)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="different runs"):
        trajectory_vs_jacobian(wrong, J, k=2, key=key, backend="dense")
    with pytest.raises(ValueError, match="1 <= k < P"):
        trajectory_vs_jacobian(traj, J, k=12, key=key, backend="dense")
    with pytest.raises(ValueError, match="both apply_fn and inputs"):
        trajectory_vs_jacobian(traj, J, k=2, key=key, backend="dense", inputs=probe)
    with pytest.raises(TypeError, match="record_trajectory"):
        trajectory_vs_jacobian(traj.params, J, k=2, key=key, backend="dense")


def test_matrix_free_backend_agrees(run):
    """The matrix-free triplets give the same moved subspace (J - I has rank 4 here) and the
    same stress, and count their products."""
    lin, traj, probe, dense_tie = run
    J = mtj.training_jacobian(lin.train_fn, lin.params0)
    tie = trajectory_vs_jacobian(
        traj,
        J,
        k=4,
        key=jax.random.key(5),
        apply_fn=lambda w, x: x @ w,
        inputs=probe,
        kind="gaussian",
        sigma=SIGMA,
        num_random=4,
        num_random_stress=1,
    )
    assert tie.num_products > 0
    assert abs(tie.displacement_cos2["moved_right"] - 1.0) < 1e-8
    np.testing.assert_allclose(
        tie.moved_singular_values, dense_tie.moved_singular_values, rtol=1e-8
    )
    assert abs(tie.stress_fraction["chaotic"] - dense_tie.stress_fraction["chaotic"]) < 1e-8
    assert abs(tie.stress_fraction["moved_right"] - 1.0) < 1e-8


def test_frozen_leaves_follow_the_recorded_run():
    """With trainable={"w": True, "b": False} and plain SGD the run still moves b; the ribbon
    is the recorded one (b_t in D and D^B), not one with b held at b_0 (J.unravel's fill)."""
    kx, ky, kw = jax.random.split(jax.random.key(11), 3)
    X, y = jax.random.normal(kx, (10, 4)), 3.0 + jax.random.normal(ky, (10,))
    params0 = {"w": jax.random.normal(kw, (4,)), "b": jax.numpy.zeros(())}

    def apply(p, x):
        return x @ p["w"] + p["b"]

    def loss(p, batch):
        return 0.5 * jax.numpy.mean((apply(p, batch[0]) - batch[1]) ** 2)

    train = mtj.make_train_fn(
        loss,
        optax.sgd(0.3),
        mtj.full_batch_schedule((X, y), 6),
        trainable={"w": True, "b": False},
    )
    traj = mtj.record_trajectory(train, params0, every=2)
    b = np.asarray(traj.params["b"])
    assert np.ptp(b) > 0.5  # b moves
    J = mtj.training_jacobian(train, params0)
    Jd = np.asarray(J.to_dense())
    tie = trajectory_vs_jacobian(
        traj,
        J,
        k=2,
        key=jax.random.key(0),
        backend="dense",
        dense=Jd,
        num_random=2,
        apply_fn=apply,
        inputs=X,
        kind="gaussian",
        sigma=SIGMA,
        num_random_stress=1,
    )
    B = np.linalg.svd(Jd - np.eye(4))[2][:2].T  # the moved subspace (top 2 of J - I)
    Theta, Xn = np.asarray(traj.flat()), np.asarray(X)

    def w_of(T, b):
        F = T @ Xn.T + b[:, None]
        D = ((F[:, None, :] - F[None, :, :]) ** 2).sum(-1) / (8 * SIGMA**2 * Xn.shape[0])
        L = np.eye(len(T)) - 1.0 / len(T)
        return -0.5 * L @ D @ L

    def chi(b):
        W, Wb = w_of(Theta, b), w_of(Theta[0] + (Theta - Theta[0]) @ B @ B.T, b)
        return 1 - np.linalg.norm(W - Wb) / np.linalg.norm(W)

    assert abs(tie.stress_fraction["moved_right"] - chi(b)) < 1e-10
    assert abs(chi(b) - chi(np.zeros_like(b))) > 1e-3  # the two definitions differ here
