"""Models written in equinox (eqx.nn.BatchNorm, eqx.nn.State), flax NNX (nnx.split / nnx.merge)
and flax Linen (init / apply, batch_stats as model state): J from make_train_fn(model_state=...)
equals jax.jacfwd of a hand-written training loop to 1e-10 in float64, and the adjoint identity
<u, J v> = <J^T u, v> holds to 1e-10 (both exact up to rounding). These are the README recipes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import matfree_tj as mtj

T = 3
OPT = optax.sgd(0.2, momentum=0.5)


def f64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree)


def data():
    kx, ky = jax.random.split(jax.random.key(0))
    return jax.random.normal(kx, (5, 3), jnp.float64), jax.random.normal(ky, (5,), jnp.float64)


def hand_loop(loss, params0, state0, batch):
    """The training by hand: T plain steps of the optimizer on loss(params, batch, state)."""
    p, static = eqx.partition(params0, eqx.is_array)
    o, s = OPT.init(p), state0
    for _ in range(T):
        g, s = jax.grad(lambda q, s=s: loss(eqx.combine(q, static), batch, s), has_aux=True)(p)
        u, o = OPT.update(g, o, p)
        p = optax.apply_updates(p, u)
    return eqx.combine(p, static)


def check(loss, params0, state0):
    X, y = data()
    train = mtj.make_train_fn(loss, OPT, mtj.full_batch_schedule((X, y), T), model_state=state0)
    J = mtj.training_jacobian(train, params0)
    theta0 = J.params0_flat

    def hand(theta):
        out = hand_loop(loss, J.unravel(theta), state0, (X, y))
        return ravel_pytree(eqx.filter(out, eqx.is_array))[0]

    dense, ref = np.asarray(J.to_dense()), np.asarray(jax.jacfwd(hand)(theta0))
    assert dense.shape == ref.shape == (theta0.size, theta0.size)
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-10 * max(1.0, np.abs(ref).max()))
    ku, kv = jax.random.split(jax.random.key(1))
    u = jax.random.normal(ku, theta0.shape, theta0.dtype)
    v = jax.random.normal(kv, theta0.shape, theta0.dtype)
    bound = 1e-10 * float(jnp.linalg.norm(u) * jnp.linalg.norm(v)) * np.linalg.norm(ref, 2)
    assert abs(float(u @ J.mv(v)) - float(J.rmv(u) @ v)) <= bound
    # The running statistics moved, and their trajectory is part of the run.
    final = train.final_state(params0).model_state
    assert not np.allclose(ravel_pytree(final)[0], ravel_pytree(state0)[0])


def test_equinox_batchnorm(x64):
    class Net(eqx.Module):
        lin1: eqx.nn.Linear
        bn: eqx.nn.BatchNorm
        lin2: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.lin1 = eqx.nn.Linear(3, 4, key=k1)
            # mode="ema" normalises with the running statistics: the state feeds the training.
            self.bn = eqx.nn.BatchNorm(4, axis_name="batch", momentum=0.5, mode="ema")
            self.lin2 = eqx.nn.Linear(4, 1, key=k2)

        def __call__(self, x, state):
            h, state = self.bn(self.lin1(x), state)
            return self.lin2(jnp.tanh(h))[0], state

    model, state = f64(eqx.nn.make_with_state(Net)(jax.random.key(0)))

    def loss(model, batch, state):
        x, y = batch
        batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        pred, state = batched(x, state)
        return jnp.mean((pred - y) ** 2), state

    check(loss, model, state)


def test_flax_nnx(x64):
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin1 = nnx.Linear(3, 4, rngs=rngs, param_dtype=jnp.float64)
            self.bn = nnx.BatchNorm(4, momentum=0.5, rngs=rngs, param_dtype=jnp.float64)
            self.lin2 = nnx.Linear(4, 1, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            return self.lin2(jnp.tanh(self.bn(self.lin1(x))))[:, 0]

    graphdef, params, stats = nnx.split(Net(nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
    stats = f64(stats)

    def loss(params, batch, stats):
        x, y = batch
        # copy=True: fresh Variables in this trace (BatchNorm mutates them; inputs may come
        # from an enclosing trace, as in a hand-written loop under jax.jacfwd).
        model = nnx.merge(graphdef, params, stats, copy=True)
        pred = model(x)  # updates the BatchNorm statistics in the merged copy
        _, _, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        return jnp.mean((pred - y) ** 2), stats

    check(loss, params, stats)


def test_flax_linen(x64):
    nn = pytest.importorskip("flax.linen")

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            h = nn.Dense(4, param_dtype=jnp.float64)(x)
            h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(h)
            return nn.Dense(1, param_dtype=jnp.float64)(jnp.tanh(h))[:, 0]

    net = Net()
    X, _ = data()
    variables = f64(net.init(jax.random.key(0), X, train=False))
    params, stats = variables["params"], variables["batch_stats"]

    def loss(params, batch, stats):
        x, y = batch
        pred, updates = net.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean((pred - y) ** 2), updates["batch_stats"]

    check(loss, params, stats)
