"""make_train_fn's options (model state, per-step keys, a trainable subset, output=) against
hand-written loops, their bad-input errors, and the precision / bad-input items of issue 13.

Every Jacobian is checked twice in float64: against ``jax.jacfwd`` of a plain Python loop that
repeats the training by hand (to 1e-10), and by the dot-product identity
<u, J v> = <J^T u, v> (to 1e-10 relative to |u| |J| |v|), both exact up to rounding."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import matfree_tj as mtj

T = 3


def check_jacobian(J, hand, theta0):
    """J equals jacfwd of the hand-written loop, and the adjoint identity holds."""
    dense = np.asarray(J.to_dense())
    ref = np.asarray(jax.jacfwd(hand)(theta0))
    assert dense.shape == ref.shape == (theta0.size, theta0.size)
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-10 * scale)
    ku, kv = jax.random.split(jax.random.key(7))
    u = jax.random.normal(ku, theta0.shape, theta0.dtype)
    v = jax.random.normal(kv, theta0.shape, theta0.dtype)
    lhs, rhs = float(u @ J.mv(v)), float(J.rmv(u) @ v)
    bound = 1e-10 * float(jnp.linalg.norm(u) * jnp.linalg.norm(v)) * np.linalg.norm(ref, 2)
    assert abs(lhs - rhs) <= bound


def data(n=6, d=3, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, d)), jax.random.normal(ky, (n,))


def params(d=3, seed=1):
    kw, kb = jax.random.split(jax.random.key(seed))
    return {"w": jax.random.normal(kw, (d,)), "b": jax.random.normal(kb, ())}


def loss_state(p, batch, s):
    """A running mean of the predictions that feeds back into the loss (BatchNorm-like)."""
    x, y = batch
    pred = jnp.tanh(x @ p["w"] + p["b"])
    s_new = {"mean": 0.8 * s["mean"] + 0.2 * jnp.mean(pred), "count": s["count"] + 1}
    return jnp.mean((pred - s_new["mean"] - y) ** 2) / 2, s_new


def loss_key(p, batch, *, key):
    x, y = batch
    keep = jax.random.bernoulli(key, 0.7, x.shape)  # dropout on the inputs
    pred = jnp.tanh((x * keep / 0.7) @ p["w"] + p["b"])
    return jnp.mean((pred - y) ** 2) / 2


def loss_both(p, batch, s, *, key):
    x, y = batch
    keep = jax.random.bernoulli(key, 0.7, x.shape)
    return loss_state(p, (x * keep / 0.7, y), s)


def state0():  # built inside each test: its float dtype follows the x64 setting
    return {"mean": jnp.asarray(0.3), "count": jnp.asarray(0, jnp.int32)}


def hand_loop(loss, opt, p0, X, y, *, state=None, key=None):
    """The training by hand: a Python loop, step t with fold_in(key, t)."""
    p, static = eqx.partition(p0, eqx.is_array)  # modules: functions are not trained
    o, s = opt.init(p), state
    for t in range(T):
        kw = {} if key is None else {"key": jax.random.fold_in(key, t)}
        if state is None:
            g = jax.grad(lambda q, kw=kw: loss(eqx.combine(q, static), (X, y), **kw))(p)
        else:
            g, s = jax.grad(
                lambda q, s=s, kw=kw: loss(eqx.combine(q, static), (X, y), s, **kw), has_aux=True
            )(p)
        u, o = opt.update(g, o, p)
        p = optax.apply_updates(p, u)
    return eqx.combine(p, static), o, s


@pytest.mark.parametrize("option", ["state", "key", "both"])
def test_state_and_key_match_hand_loop(x64, option):
    X, y = data()
    p0 = params()
    key = jax.random.key(3)
    opt = optax.sgd(0.3, momentum=0.5)
    loss, kw = {
        "state": (loss_state, {"model_state": state0()}),
        "key": (loss_key, {"key": key}),
        "both": (loss_both, {"model_state": state0(), "key": key}),
    }[option]
    train = mtj.make_train_fn(loss, opt, mtj.full_batch_schedule((X, y), T), **kw)
    hand_kw = {"state": kw.get("model_state"), "key": kw.get("key")}
    theta0, unravel = ravel_pytree(p0)

    def hand(theta):
        return ravel_pytree(hand_loop(loss, opt, unravel(theta), X, y, **hand_kw)[0])[0]

    J = mtj.training_jacobian(train, p0)
    check_jacobian(J, hand, theta0)
    # train_fn still maps params0 -> params_T; the final model state is there too.
    out = train(p0)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(p0)
    final = train.final_state(p0)
    p_ref, _, s_ref = hand_loop(loss, opt, p0, X, y, **hand_kw)
    np.testing.assert_allclose(ravel_pytree(final.params)[0], ravel_pytree(p_ref)[0], atol=1e-12)
    if option != "key":
        assert int(final.model_state["count"]) == T
        np.testing.assert_allclose(final.model_state["mean"], s_ref["mean"], atol=1e-12)
    else:
        assert final.model_state is None


def test_state_and_key_with_minibatches_and_checkpoints(x64):
    """Per-batch steps (not FullBatch) and every reverse layout give the same products."""
    X, y = data(n=8)
    batches = mtj.minibatch_schedule((X, y), batch_size=4, num_epochs=2)  # T = 4
    p0 = params()
    train = mtj.make_train_fn(
        loss_both, optax.sgd(0.3), batches, model_state=state0(), key=jax.random.key(1)
    )
    u = jnp.arange(4.0) / 4
    ref = mtj.training_jacobian(train, p0, cache_reverse=False).rmv(u)
    for mode in ("step", "sqrt"):
        Jm = mtj.training_jacobian(train.with_checkpoint(mode), p0, checkpoint=mode)
        np.testing.assert_allclose(Jm.rmv(u), ref, rtol=0, atol=1e-12)


def test_trainable_subset(x64):
    X, y = data()
    p0 = params()
    # Adam couples nothing across leaves, but the loss does: the frozen b moves with w0.
    opt = optax.adam(0.1, eps_root=1e-8)
    loss = lambda p, b: jnp.mean((jnp.tanh(b[0] @ p["w"] + p["b"]) - b[1]) ** 2) / 2  # noqa: E731
    batches = mtj.full_batch_schedule((X, y), T)

    def hand(w0):
        return hand_loop(loss, opt, {"w": w0, "b": p0["b"]}, X, y)[0]["w"]

    for mask in ({"w": True, "b": False}, lambda p: {"w": True, "b": False}):
        train = mtj.make_train_fn(loss, opt, batches, trainable=mask)
        J = mtj.training_jacobian(train, p0)
        assert J.shape == (3, 3)
        check_jacobian(J, hand, p0["w"])
        assert J.trainable == {"w": True, "b": False}
        # unravel: theta into the trainable leaves, params0's values in the frozen ones.
        back = J.unravel(J.params0_flat)
        assert float(back["b"]) == float(p0["b"])
        np.testing.assert_array_equal(back["w"], p0["w"])
        # The run itself is unchanged: the optimizer moves b too.
        assert float(train(p0)["b"]) != float(p0["b"])


def test_trainable_on_an_equinox_module(x64):
    """A mask built with jax.tree.map over a module is itself a (callable) module."""
    model = eqx.nn.MLP(2, 1, 3, 1, key=jax.random.key(0))
    model = jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_array(x) else x, model)
    mask = jax.tree.map(lambda _: False, model)
    mask = eqx.tree_at(lambda m: m.layers[-1].weight, mask, True)
    X, y = data(d=2)
    loss = lambda m, b: jnp.mean((jax.vmap(m)(b[0])[:, 0] - b[1]) ** 2)  # noqa: E731
    train = mtj.make_train_fn(
        loss, optax.sgd(0.2), mtj.full_batch_schedule((X, y), T), trainable=mask
    )
    J = mtj.training_jacobian(train, model)
    assert J.shape == (3, 3)

    def hand(w0):
        m = eqx.tree_at(lambda m: m.layers[-1].weight, model, w0.reshape(1, 3))
        return hand_loop(loss, optax.sgd(0.2), m, X, y)[0].layers[-1].weight.reshape(-1)

    check_jacobian(J, hand, model.layers[-1].weight.reshape(-1))


class ParamEmaState(eqx.Module):
    ema: dict


def param_ema(decay):
    """Keeps an exponential moving average of the parameters in the optimizer state."""

    def init(p):
        return ParamEmaState(p)

    def update(updates, state, p):
        new = optax.apply_updates(p, updates)
        ema = jax.tree.map(lambda e, q: decay * e + (1 - decay) * q, state.ema, new)
        return updates, ParamEmaState(ema)

    return optax.GradientTransformation(init, update)


def test_ema_output(x64):
    X, y = data()
    p0 = params()
    opt = optax.chain(optax.sgd(0.3), param_ema(0.6))
    loss = lambda p, b: jnp.mean((jnp.tanh(b[0] @ p["w"] + p["b"]) - b[1]) ** 2) / 2  # noqa: E731
    train = mtj.make_train_fn(
        loss, opt, mtj.full_batch_schedule((X, y), T), output=lambda final: final.opt_state[1].ema
    )
    theta0, unravel = ravel_pytree(p0)

    def hand(theta):
        return ravel_pytree(hand_loop(loss, opt, unravel(theta), X, y)[1][1].ema)[0]

    J = mtj.training_jacobian(train, p0)
    check_jacobian(J, hand, theta0)
    # The EMA lags the parameters: a different map from params0 -> params_T.
    assert not np.allclose(J.params_T_flat, ravel_pytree(train.final_state(p0).params)[0])


# ---------------------------------------------------------------- bad input


def test_signature_mismatch_names_the_option():
    X, y = data()
    b = mtj.full_batch_schedule((X, y), 2)
    opt = optax.sgd(0.1)
    with pytest.raises(TypeError, match="model_state=s0"):
        mtj.make_train_fn(loss_state, opt, b)
    with pytest.raises(TypeError, match="key=jax.random.key"):
        mtj.make_train_fn(loss_key, opt, b)
    with pytest.raises(TypeError, match="keyword parameter"):
        mtj.make_train_fn(lambda p, b: 0.0, opt, b, key=jax.random.key(0))
    with pytest.raises(TypeError, match="drop model_state"):
        mtj.make_train_fn(lambda p, b: 0.0, opt, b, model_state=state0())
    with pytest.raises(TypeError, match="PRNG key"):
        mtj.make_train_fn(loss_key, opt, b, key="seed")


def test_loss_returning_the_wrong_thing():
    X, y = data()
    b = mtj.full_batch_schedule((X, y), 2)
    p0 = params()
    # A signature we cannot see through (*args): checked when the run is traced.
    train = mtj.make_train_fn(lambda *a: loss_state(*a[:2], state0()), optax.sgd(0.1), b)
    with pytest.raises(TypeError, match="model_state=s0"):
        train(p0)
    train = mtj.make_train_fn(lambda *a: 0.0, optax.sgd(0.1), b, model_state=state0())
    with pytest.raises(TypeError, match=r"\(loss, new_model_state\)"):
        train(p0)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: {"mean": s["mean"]},  # structure
        lambda s: {"mean": jnp.stack([s["mean"]] * 2), "count": s["count"]},  # shape
        lambda s: {"mean": s["mean"], "count": s["count"] + 0.5},  # dtype
    ],
    ids=["structure", "shape", "dtype"],
)
def test_model_state_layout_change(change):
    X, y = data()
    b = mtj.full_batch_schedule((X, y), 2)

    def loss(p, batch, s):
        value, s_new = loss_state(p, batch, s)
        return value, change(s_new)

    train = mtj.make_train_fn(loss, optax.sgd(0.1), b, model_state=state0())
    with pytest.raises(ValueError, match="must keep its layout"):
        train(params())
    with pytest.raises(ValueError, match="must keep its layout"):
        mtj.training_jacobian(train, params())


def test_bad_masks():
    X, y = data()
    b = mtj.full_batch_schedule((X, y), 2)
    p0 = params()
    loss = lambda p, b: jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)  # noqa: E731

    def jac(mask):
        return mtj.training_jacobian(mtj.make_train_fn(loss, optax.sgd(0.1), b, trainable=mask), p0)

    with pytest.raises(ValueError, match="structure of params0"):
        jac({"w": True})
    with pytest.raises(ValueError, match="structure of params0"):
        jac(lambda p: {"w": True, "c": True})
    with pytest.raises(TypeError, match="not a bool"):
        jac({"w": jnp.ones(3, bool), "b": True})
    with pytest.raises(ValueError, match="no array leaf"):
        jac({"w": False, "b": False})


# ---------------------------------------------------------------- issue 13, section 6


def test_narrow_optimizer_state_warns(x64):
    X, y = data()
    b = mtj.full_batch_schedule((X, y), 4)
    p0 = params()
    loss = lambda p, b: jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)  # noqa: E731
    narrow = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2)  # float32 accumulator
    with pytest.warns(UserWarning, match="accumulator_dtype"):
        mtj.training_jacobian(mtj.make_train_fn(loss, narrow, b), p0)
    wide = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2, accumulator_dtype=jnp.float64)
    mtj.training_jacobian(mtj.make_train_fn(loss, wide, b), p0)  # warnings are errors here


def test_nan_data_is_not_called_nondeterministic():
    X, y = data()
    X = X.at[0, 0].set(jnp.nan)
    b = mtj.full_batch_schedule((X, y), 2)
    loss = lambda p, b: jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)  # noqa: E731
    train = mtj.make_train_fn(loss, optax.sgd(0.1), b)
    J = mtj.training_jacobian(train, params(), check_finite=False)
    assert bool(jnp.all(jnp.isnan(J.params_T_flat)))


def test_eps_root_warning_sees_inject_hyperparams():
    X, y = data()
    b = mtj.full_batch_schedule((X, y), 2)
    loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)  # noqa: E731
    injected = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
    with pytest.warns(UserWarning, match="eps_root"):
        mtj.make_train_fn(loss, injected, b)
    with pytest.warns(UserWarning, match="eps_root"):
        mtj.make_train_fn(loss, optax.chain(optax.clip(1.0), injected), b)
    fine = optax.inject_hyperparams(optax.adam)(learning_rate=0.1, eps_root=1e-8)
    mtj.make_train_fn(loss, fine, b)  # no warning (warnings are errors)


def test_integer_leaf_error_points_to_model_state():
    X, y = data()
    b = mtj.full_batch_schedule((X, y), 2)
    p0 = {**params(), "count": jnp.asarray(0, jnp.int32)}
    loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)  # noqa: E731
    with pytest.raises(TypeError, match=r"model_state=s0"):
        mtj.training_jacobian(mtj.make_train_fn(loss, optax.sgd(0.1), b), p0)


def test_analyses_on_a_masked_jacobian(x64):
    # the perturbation analysis retrains on J's own variables (the trainable leaves): its
    # linear response is J v; restricted training refuses a mask instead of projecting the
    # frozen leaves too
    from matfree_tj import analysis as an

    X, y = data()
    p0 = params()
    loss = lambda p, b: jnp.mean((jnp.tanh(b[0] @ p["w"] + p["b"]) - b[1]) ** 2) / 2  # noqa: E731
    batches = mtj.full_batch_schedule((X, y), T)
    train = mtj.make_train_fn(loss, optax.sgd(0.1), batches, trainable={"w": True, "b": False})
    J = mtj.training_jacobian(train, p0)
    v = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    resp = an.perturbation_response(J, v, eps=[1e-6, 1e-5])
    # second-order remainder: |delta - eps J v| = O(eps^2) against eps sigma
    assert np.all(np.asarray(resp.linearisation_error) < 1e-3)
    np.testing.assert_allclose(resp.projection, resp.expected, rtol=1e-4)
    with pytest.raises(ValueError, match="trainable"):
        an.restricted_training(J, {"b": np.eye(3)}, [1], eval_fn=lambda p: jnp.sum(p["w"]))
