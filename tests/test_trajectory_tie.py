"""trajectory_vs_jacobian on GD least squares, where every number has a closed form: the
displacement and the trajectory's principal directions lie in the moved subspace (range of
J - I), the stress fraction of the moved subspace is 1, the chaotic one matches a NumPy oracle,
and the random baselines match k/P within their sampling error."""

import jax
import numpy as np
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
