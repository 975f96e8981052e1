"""record_trajectory and trajectory_predictions: the closed form of GD on least squares, the
final checkpoint against the run itself, every make_train_fn option, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matfree_tj as mtj


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):
    yield


@pytest.fixture(scope="module")
def lin():
    return mtj.examples.linear_regression(jax.random.key(0), 6, 10, eta=0.7, num_steps=23)


def test_linear_regression_closed_form(lin):
    traj = mtj.record_trajectory(lin.train_fn, lin.params0, every=5)
    assert traj.steps.tolist() == [0, 5, 10, 15, 20, 23]  # T always included
    X, y = np.asarray(lin.X), np.asarray(lin.y)
    n, P = X.shape
    Sigma = X.T @ X / n
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]  # any solution of the normal equations
    A = np.eye(P) - lin.eta * Sigma
    w0 = np.asarray(lin.params0)
    for i, t in enumerate(traj.steps):
        expected = w_star + np.linalg.matrix_power(A, int(t)) @ (w0 - w_star)
        np.testing.assert_allclose(np.asarray(traj.params[i]), expected, rtol=0, atol=1e-10)
    # the last checkpoint is the run's own result, bit for bit; the first is params0
    np.testing.assert_array_equal(traj.params[-1], lin.train_fn(lin.params0))
    np.testing.assert_array_equal(traj.params[0], lin.params0)
    assert traj.model_state is None and traj.outputs is None and traj.num_steps == 23


def test_explicit_steps_and_flat(lin):
    traj = mtj.record_trajectory(lin.train_fn, lin.params0, steps=[3, 4, 23])
    full = mtj.record_trajectory(lin.train_fn, lin.params0, every=1)
    np.testing.assert_array_equal(traj.params, full.params[np.array([3, 4, 23])])
    assert traj.flat().shape == (3, 10) and traj.num_checkpoints == 3


def _loss_state(params, batch, mean, *, key):
    keep = jax.random.bernoulli(key, 0.8, params["w"].shape)
    pred = batch[0] @ (params["w"] * keep) + params["b"]
    new_mean = 0.9 * mean + 0.1 * jnp.mean(pred)
    return jnp.mean((pred - new_mean - batch[1]) ** 2) / 2, new_mean


def test_every_option_matches_truncated_runs():
    """model_state, key, minibatches, a trainable mask and output= all at once: checkpoint t
    equals a run of make_train_fn on the first t steps with the same options."""
    kx, ky, kw = jax.random.split(jax.random.key(1), 3)
    X, y = jax.random.normal(kx, (12, 4)), jax.random.normal(ky, (12,))
    batches = mtj.minibatch_schedule((X, y), 4, 3)  # 9 steps
    params0 = {"w": jax.random.normal(kw, (4,)), "b": jnp.zeros(())}
    mask = {"w": True, "b": False}
    opts = dict(
        model_state=jnp.zeros(()),
        key=jax.random.key(7),
        trainable=mask,
        output=lambda st: jax.tree_util.tree_map(lambda p: 2.0 * p, st.params),
    )
    opt = optax.sgd(0.1, momentum=0.9)
    train = mtj.make_train_fn(_loss_state, opt, batches, **opts)
    traj = mtj.record_trajectory(train, params0, every=4)
    assert traj.steps.tolist() == [0, 4, 8, 9]
    for i, t in enumerate(traj.steps.tolist()):
        if t == 0:
            ref = mtj.TrainState(params0, None, jnp.zeros(()))
        else:
            part = jax.tree_util.tree_map(lambda x, t=t: x[:t], batches)
            ref = mtj.make_train_fn(_loss_state, opt, part, **opts).final_state(params0)
        for name in ("w", "b"):
            np.testing.assert_allclose(traj.params[name][i], ref.params[name], rtol=0, atol=1e-13)
        np.testing.assert_allclose(traj.model_state[i], ref.model_state, rtol=0, atol=1e-13)
        np.testing.assert_allclose(traj.outputs["w"][i], 2 * ref.params["w"], atol=1e-13)
    final = train.final_state(params0)
    np.testing.assert_array_equal(traj.model_state[-1], final.model_state)
    np.testing.assert_array_equal(traj.outputs["w"][-1], train(params0)["w"])
    # flat() keeps J's variables (the trainable leaves) in J's order
    no_output = {k: v for k, v in opts.items() if k != "output"}
    train_no_output = mtj.make_train_fn(_loss_state, opt, batches, **no_output)
    J = mtj.training_jacobian(
        train_no_output, params0, forward="jvp", cache_reverse=False, check_deterministic=False
    )
    np.testing.assert_array_equal(traj.flat()[0], J.params0_flat)
    np.testing.assert_array_equal(traj.flat()[-1], J.params_T_flat)
    assert traj.flat(which="outputs").shape == (4, 4)


def test_equinox_module_with_static_leaves():
    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    X, y = jax.random.normal(jax.random.key(1), (8, 3)), jnp.arange(8) % 2

    def loss(m, b):
        logits = jax.vmap(m)(b[0])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, b[1]))

    train = mtj.make_train_fn(loss, optax.sgd(0.5), mtj.full_batch_schedule((X, y), 6))
    traj = mtj.record_trajectory(train, model, every=3)
    last = traj.at(-1)
    np.testing.assert_array_equal(last(X[0]), train(model)(X[0]))  # the activation came along

    def apply(m, x):
        return jax.vmap(m)(x)

    probs = mtj.trajectory_predictions(apply, traj, X, chunk_size=2)  # 3 checkpoints, chunk 2
    direct = jnp.stack([jax.nn.softmax(apply(traj.at(i), X), -1) for i in range(3)])
    np.testing.assert_allclose(probs, direct, rtol=0, atol=1e-14)
    logp = mtj.trajectory_predictions(apply, traj, X, output="log_probabilities")
    np.testing.assert_allclose(jnp.exp(logp), probs, rtol=1e-13, atol=0)
    raw = mtj.trajectory_predictions(apply, traj, X, output="raw", chunk_size=5)
    np.testing.assert_allclose(raw[1], apply(traj.at(1), X), rtol=0, atol=1e-14)


def test_predictions_with_model_state():
    X, y = jnp.ones((4, 4)), jnp.zeros(4)
    batches = mtj.full_batch_schedule((X, y), 3)
    params0 = {"w": jnp.ones(4), "b": jnp.zeros(())}
    train = mtj.make_train_fn(
        _loss_state, optax.sgd(0.1), batches, model_state=jnp.ones(()), key=jax.random.key(0)
    )
    traj = mtj.record_trajectory(train, params0, every=1)
    out = mtj.trajectory_predictions(
        lambda p, x, s: x @ p["w"] - s, traj, X, output="raw", with_model_state=True
    )
    np.testing.assert_allclose(out[2], X @ traj.params["w"][2] - traj.model_state[2], atol=1e-14)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(), TypeError, "exactly one of every"),
        (dict(every=2, steps=[1]), TypeError, "exactly one of every"),
        (dict(every=0), ValueError, "1 <= every <= T"),
        (dict(every=24), ValueError, "1 <= every <= T"),
        (dict(every=2.0), TypeError, "every must be an integer"),
        (dict(steps=[3, 2]), ValueError, "strictly increasing"),
        (dict(steps=[0, 24]), ValueError, r"\[0, T = 23\]"),
        (dict(steps=[0.5]), TypeError, "integers"),
    ],
)
def test_bad_options(lin, kwargs, error, message):
    with pytest.raises(error, match=message):
        mtj.record_trajectory(lin.train_fn, lin.params0, **kwargs)


def test_bad_inputs(lin):
    with pytest.raises(TypeError, match="make_train_fn"):
        mtj.record_trajectory(lambda p: p, lin.params0, every=1)
    traj = mtj.record_trajectory(lin.train_fn, lin.params0, every=23)
    with pytest.raises(ValueError, match="output must be one of"):
        mtj.trajectory_predictions(lambda w, x: x @ w, traj, lin.X, output="softmax")
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        mtj.trajectory_predictions(lambda w, x: x @ w, traj, lin.X, chunk_size=0)
    with pytest.raises(ValueError, match="no model state"):
        mtj.trajectory_predictions(lambda w, x: x @ w, traj, lin.X, with_model_state=True)
    with pytest.raises(IndexError, match="out of range"):
        traj.at(2)
    # one output per input: a softmax would normalise over the N inputs, not over classes
    for apply in (lambda w, x: x @ w, lambda w, x: (x @ w)[:, None]):
        with pytest.raises(ValueError, match="C >= 2 classes"):
            mtj.trajectory_predictions(apply, traj, lin.X, output="log_probabilities")
    raw = mtj.trajectory_predictions(lambda w, x: x @ w, traj, lin.X, output="raw")
    assert raw.shape == (2, lin.X.shape[0])


def test_memory_independent_of_the_number_of_steps():
    """The compiled record holds the m checkpoints and one step's work, whatever T: XLA's own
    memory analysis of the same 3-checkpoint record for T = 100 and T = 1000."""
    from matfree_tj.core._trajectory import _record

    P = 500
    X, y = jnp.ones((4, P)), jnp.zeros(4)

    def loss(w, b):
        return jnp.mean((b[0] @ w - b[1]) ** 2) / 2

    sizes = []
    for T in (100, 1000):
        train = mtj.make_train_fn(loss, optax.sgd(1e-4), mtj.full_batch_schedule((X, y), T))
        fn = jax.jit(lambda w, train=train, T=T: _record(train, w, (0, T // 2, T)))
        stats = fn.lower(jnp.ones(P)).compile().memory_analysis()
        sizes.append((stats.temp_size_in_bytes, stats.output_size_in_bytes))
    itemsize = jnp.ones(P).dtype.itemsize
    assert sizes[0][1] == sizes[1][1] == 3 * P * itemsize  # the checkpoints, nothing more
    assert sizes[1][0] <= sizes[0][0] + 1024  # working memory does not grow with T
    assert sizes[1][0] < 0.1 * 1000 * P * itemsize  # far from O(T x P)


def test_compiles_once():
    """A second record of the same run, and a second prediction, trace nothing again."""
    traces = {"loss": 0, "apply": 0}

    def loss(w, b):
        traces["loss"] += 1
        return jnp.mean((b[0] @ w - b[1]) ** 2) / 2

    def apply(w, x):
        traces["apply"] += 1
        return x @ w

    X, y = jnp.eye(3), jnp.ones(3)
    train = mtj.make_train_fn(loss, optax.sgd(0.5), mtj.full_batch_schedule((X, y), 6))
    traj = mtj.record_trajectory(train, jnp.zeros(3), every=2)
    mtj.trajectory_predictions(apply, traj, X, output="raw")
    seen = dict(traces)
    traj2 = mtj.record_trajectory(train, jnp.ones(3), every=2)
    mtj.trajectory_predictions(apply, traj2, X, output="raw")
    assert traces == seen
