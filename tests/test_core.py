"""Core contract: training loops, the training-Jacobian operator, composition, dense oracle."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import matfree_tj as mtj


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):
    yield


def _flat(train_fn, params0):
    theta0, unravel = ravel_pytree(params0)
    return theta0, lambda th: ravel_pytree(train_fn(unravel(th)))[0]


def _tiny(optimizer):
    return mtj.examples.digits_mlp(
        hidden=4,
        num_train=48,
        batch_size=16,
        num_epochs=2,
        optimizer=optimizer,
        dtype=jnp.float64,
        seed=3,
    )


# ---------------------------------------------------------------- adjoint identity ---------
def _full_batch_mlp(optimizer):
    m = _tiny("sgd")
    train = mtj.make_train_fn(
        m.loss_fn, optimizer, mtj.full_batch_schedule((m.X_train, m.y_train), 5)
    )
    return train, m.params0


@pytest.mark.parametrize(
    "case",
    [
        "sgd-minibatch",
        "momentum-cosine-minibatch",
        "adam-minibatch",
        "sgd-fullbatch",
        "momentum-cosine-fullbatch",
        "adam-fullbatch",
    ],
)
def test_adjoint_identity(case):
    name, schedule = case.rsplit("-", 1)
    opt = {
        "sgd": optax.sgd(0.3),
        "momentum-cosine": optax.sgd(optax.cosine_decay_schedule(0.3, 6), momentum=0.9),
        "adam": optax.adam(optax.cosine_decay_schedule(3e-2, 6), eps_root=1e-8),
    }[name]
    if schedule == "minibatch":
        m = _tiny("sgd")
        train = mtj.make_train_fn(m.loss_fn, opt, m.batches)
        params0 = m.params0
    else:
        train, params0 = _full_batch_mlp(opt)
    J = mtj.training_jacobian(train, params0)
    P = J.shape[0]
    ku, kv = jax.random.split(jax.random.key(hash(case) % 2**31))
    u, v = jax.random.normal(ku, (P,)), jax.random.normal(kv, (P,))
    lhs, rhs = jnp.vdot(u, J.mv(v)), jnp.vdot(J.rmv(u), v)
    scale = jnp.linalg.norm(u) * jnp.linalg.norm(J.mv(v))
    assert abs(lhs - rhs) <= 1e-10 * scale


def test_optimizers_with_extra_update_arguments():
    # optax's extra-arguments protocol: polyak_sgd needs the loss value at each step; the
    # operator must match jacfwd of the same run. A while_loop line search (lbfgs) has no
    # reverse-mode derivative: a clear error, not a crash inside tracing.
    X = jax.random.normal(jax.random.key(1), (16, 3))
    y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.1
    loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)  # noqa: E731
    train = mtj.make_train_fn(
        loss, optax.polyak_sgd(max_learning_rate=0.1), mtj.full_batch_schedule((X, y), 4)
    )
    J = mtj.training_jacobian(train, jnp.ones(3))
    np.testing.assert_allclose(J.to_dense(), jax.jacfwd(train)(jnp.ones(3)), atol=1e-12)
    u = jax.random.normal(jax.random.key(2), (3,))
    np.testing.assert_allclose(J.rmv(u), jax.jacfwd(train)(jnp.ones(3)).T @ u, atol=1e-12)
    lbfgs = mtj.make_train_fn(loss, optax.lbfgs(), mtj.full_batch_schedule((X, y), 2))
    with pytest.raises(TypeError, match="not differentiable"):
        mtj.training_jacobian(lbfgs, jnp.ones(3))


# ---------------------------------------------------------------- dense and blocks ---------
@pytest.fixture(scope="module")
def tiny_sgd():
    m = _tiny("sgd")
    return m, mtj.training_jacobian(m.train_fn, m.params0, chunk_size=16)


def test_to_dense_matches_jacfwd(tiny_sgd):
    m, J = tiny_sgd
    theta0, f = _flat(m.train_fn, m.params0)
    ref = jax.jacfwd(f)(theta0)
    D = J.to_dense()
    assert D.shape == (m.num_params, m.num_params)
    np.testing.assert_allclose(D, ref, rtol=0, atol=1e-10 * float(jnp.abs(ref).max()))


def test_block_products_match_columns(tiny_sgd):
    _, J = tiny_sgd
    P = J.shape[0]
    V = jax.random.normal(jax.random.key(7), (P, 37))  # not a multiple of chunk_size
    MV, RMV = J.matmat(V), J.rmatmat(V)
    for i in (0, 15, 16, 36):
        np.testing.assert_allclose(MV[:, i], J.mv(V[:, i]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(RMV[:, i], J.rmv(V[:, i]), rtol=1e-12, atol=1e-12)


def test_no_recompilation_on_second_call(tiny_sgd):
    # compiles counted by JAX itself (the cache sizes of the compiled products), not log text
    from matfree_tj.core import Projected, products_cache_size

    _, J = tiny_sgd
    P = J.shape[0]
    assert J.cached == {"forward": True, "reverse": True}
    J.mv(jnp.ones(P))
    J.rmv(jnp.ones(P))
    J.matmat(jnp.ones((P, 2)))
    J.rmatmat(jnp.ones((P, 2)))
    before = products_cache_size()
    J.mv(2 * jnp.ones(P))
    J.rmv(2 * jnp.ones(P))
    assert products_cache_size() == before
    # operators derived from J reuse its compiled products: none compiles a product again
    Q = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (P, 2)))[0]
    for derived in (
        mtj.add_identity(J, -1.0),
        mtj.add_identity(J, 0.5),
        J.T,
        mtj.gram(J),
        mtj.gram(J, "left"),
        Projected(J, Q, Q),
        mtj.add_identity(mtj.gram(mtj.add_identity(J)), 2.0),
    ):
        derived.mv(jnp.ones(P))
        derived.rmv(jnp.ones(P))
        derived.matmat(jnp.ones((P, 2)))
    assert products_cache_size() == before
    # a solver reuses the operator's compiled products: none is compiled into its kernels
    mtj.top_singular(J, 2, key=jax.random.key(0), num_basis=8)
    mtj.top_singular(mtj.add_identity(J, -1.0), 2, key=jax.random.key(0), num_basis=8)
    assert products_cache_size() == before


def test_eager_block_products_trace_once_and_free_the_operator():
    import gc
    import weakref

    A = jax.random.normal(jax.random.key(3), (7, 5))
    traces = []

    def mv(v):
        traces.append(1)  # runs once per trace, not per call
        return A @ v

    op = mtj.LinearOperator(mv, lambda u: A.T @ u, A.shape, A.dtype, chunk_size=2)
    V = jax.random.normal(jax.random.key(4), (5, 3))
    for _ in range(3):
        np.testing.assert_allclose(op.matmat(V), A @ V, rtol=1e-12)
    assert len(traces) == 1
    ref = weakref.ref(mv)
    del op, mv
    gc.collect()
    assert ref() is None  # the compiled block product does not keep the operator alive


def test_cache_budget_is_shared_between_the_two_caches(tiny_sgd):
    m, J = tiny_sgd
    from matfree_tj.core._jacobian import default_cache_budget

    assert default_cache_budget(J.params0_flat) >= 1024**3
    f = lambda th: ravel_pytree(m.train_fn(J.unravel(th)))[0]  # noqa: E731
    lin = jax.eval_shape(lambda th: jax.linearize(f, th)[1], J.params0_flat)
    lin_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(lin))
    J4 = mtj.training_jacobian(
        m.train_fn, m.params0, cache_budget_bytes=lin_bytes, check_deterministic=False
    )
    assert J4.cached == {"forward": True, "reverse": False}  # nothing left for the pullback


def test_primal_and_unravel(tiny_sgd):
    m, J = tiny_sgd
    theta_T, _ = ravel_pytree(m.train_fn(m.params0))
    np.testing.assert_allclose(J.params_T_flat, theta_T, rtol=1e-12)
    back = J.unravel(J.params0_flat)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(m.params0)


def test_cached_and_recomputed_products_agree(tiny_sgd):
    m, J = tiny_sgd
    assert J.cached == {"forward": True, "reverse": True}  # "auto": tiny residuals fit the budget
    J2 = mtj.training_jacobian(m.train_fn, m.params0, forward="jvp", cache_reverse=False)
    assert J2.cached == {"forward": False, "reverse": False}
    J3 = mtj.training_jacobian(m.train_fn, m.params0, cache_budget_bytes=0)  # auto -> recompute
    assert J3.cached == {"forward": False, "reverse": False}
    v = jax.random.normal(jax.random.key(1), (J.shape[0],))
    np.testing.assert_allclose(J2.mv(v), J.mv(v), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(J2.rmv(v), J.rmv(v), rtol=1e-11, atol=1e-12)


def test_mesh_sharded_block_products(tiny_sgd):
    m, J = tiny_sgd
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    V = jax.random.normal(jax.random.key(2), (J.shape[0], 10))  # 10 columns over 4 devices
    # a plain Mesh has Auto axes; jax.make_mesh gives Explicit ones (sharding in the types)
    for mesh in (
        jax.sharding.Mesh(np.array(devices), ("cols",)),
        jax.make_mesh((len(devices),), ("cols",)),
    ):
        Jm = mtj.training_jacobian(m.train_fn, m.params0, mesh=mesh, chunk_size=4)
        np.testing.assert_allclose(Jm.matmat(V), J.matmat(V), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Jm.rmatmat(V), J.rmatmat(V), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(jax.jit(Jm.matmat)(V[:, :3]), J.matmat(V[:, :3]), atol=1e-12)


# ---------------------------------------------------------------- closed forms --------------
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_linear_regression_closed_form(momentum):
    lr = mtj.examples.linear_regression(
        jax.random.key(0), 12, 40, eta=0.7, num_steps=9, momentum=momentum
    )
    J = mtj.training_jacobian(lr.train_fn, lr.params0)
    np.testing.assert_allclose(J.to_dense(), lr.dense(), rtol=0, atol=1e-10)
    if momentum == 0.0:
        Sigma = np.asarray(lr.X.T @ lr.X) / lr.X.shape[0]
        expect = np.linalg.matrix_power(np.eye(40) - 0.7 * Sigma, 9)
        np.testing.assert_allclose(J.to_dense(), expect, rtol=0, atol=1e-10)
    s = mtj.dense_svd(J).s
    np.testing.assert_allclose(s, lr.singular_values, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- checkpointing -------------
def test_checkpoint_options_agree():
    m = mtj.examples.digits_mlp(
        hidden=4,
        num_train=32,
        batch_size=8,
        num_epochs=3,  # T = 12
        dtype=jnp.float64,
    )
    u = jax.random.normal(jax.random.key(5), (m.num_params,))
    outs = {
        ck: mtj.training_jacobian(m.train_fn, m.params0, checkpoint=ck).rmv(u)
        for ck in ("none", "step", "sqrt")
    }
    for ck in ("step", "sqrt"):
        np.testing.assert_allclose(outs[ck], outs["none"], rtol=1e-10, atol=1e-12)


def _reverse_temp_bytes(T, checkpoint):
    m = mtj.examples.digits_mlp(
        hidden=4,
        num_train=16,
        batch_size=16,
        num_epochs=T,
        dtype=jnp.float64,
        checkpoint=checkpoint,
    )
    theta0, f = _flat(m.train_fn, m.params0)
    g = jax.jit(lambda u: jax.vjp(f, theta0)[1](u)[0])
    return g.lower(theta0).compile().memory_analysis().temp_size_in_bytes


def test_sqrt_checkpoint_memory_is_sublinear_in_T():
    small, large = 32, 512  # 16x more steps
    none_ratio = _reverse_temp_bytes(large, "none") / _reverse_temp_bytes(small, "none")
    sqrt_ratio = _reverse_temp_bytes(large, "sqrt") / _reverse_temp_bytes(small, "sqrt")
    assert none_ratio > 8  # residuals for every step: ~16x
    assert sqrt_ratio < 6  # O(sqrt(T)) carries: ~4x plus constant parts


# ---------------------------------------------------------------- pytrees and equinox -------
def test_equinox_module_params():
    key = jax.random.key(0)
    model = eqx.nn.MLP(3, 2, 4, 1, activation=jax.nn.tanh, key=key)
    model = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if eqx.is_array(x) else x, model)
    X = jax.random.normal(jax.random.key(1), (10, 3))
    Y = jax.random.normal(jax.random.key(2), (10, 2))

    def loss(mdl, batch):
        x, y = batch
        return jnp.mean((jax.vmap(mdl)(x) - y) ** 2)

    train = mtj.make_train_fn(
        loss, optax.sgd(0.1, momentum=0.5), mtj.full_batch_schedule((X, Y), 4)
    )
    J = mtj.training_jacobian(train, model)
    arrays, static = eqx.partition(model, eqx.is_array)
    theta0, unravel = ravel_pytree(arrays)
    f = lambda th: ravel_pytree(eqx.filter(train(eqx.combine(unravel(th), static)), eqx.is_array))[
        0
    ]
    np.testing.assert_allclose(J.to_dense(), jax.jacfwd(f)(theta0), rtol=0, atol=1e-10)


def test_schedules():
    X = jnp.arange(10.0)[:, None]
    y = jnp.arange(10)
    b = mtj.minibatch_schedule((X, y), 3, 2)
    assert b[0].shape == (6, 3, 1) and b[1].shape == (6, 3)
    np.testing.assert_array_equal(b[1][:3].ravel(), np.arange(9))
    key = jax.random.key(4)
    s1 = mtj.minibatch_schedule((X, y), 5, 3, key=key)
    s2 = mtj.minibatch_schedule((X, y), 5, 3, key=key)
    np.testing.assert_array_equal(s1[1], s2[1])
    assert sorted(np.asarray(s1[1][:2]).ravel().tolist()) == list(range(10))
    assert not np.array_equal(s1[1][:2], s1[1][2:4])  # reshuffled per epoch
    with pytest.raises(ValueError, match="batch_size"):
        mtj.minibatch_schedule((X, y), 11, 1)
    # a Python list of per-step (x, y) batches: the leading axis would be read as 5 steps
    loss = lambda w, batch: jnp.mean((batch[0][:, 0] * w[0] - batch[1]) ** 2)  # noqa: E731
    per_step = [(X[:5], y[:5]), (X[5:], y[5:])]
    with pytest.raises(TypeError, match="list of 2 per-step batches"):
        mtj.make_train_fn(loss, optax.sgd(0.1), per_step)
    stacked = jax.tree.map(lambda *b: jnp.stack(b), *per_step)  # the fix the message gives
    assert mtj.make_train_fn(loss, optax.sgd(0.1), stacked).num_steps == 2
    assert mtj.make_train_fn(loss, optax.sgd(0.1), list(stacked)).num_steps == 2


# ---------------------------------------------------------------- composition ---------------
def test_composition_and_scipy():
    A = jax.random.normal(jax.random.key(0), (6, 6))
    op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype, chunk_size=4)
    np.testing.assert_allclose(mtj.add_identity(op).to_dense(), A - jnp.eye(6), atol=1e-14)
    np.testing.assert_allclose(
        mtj.add_identity(op, 2.5).T.to_dense(), A.T + 2.5 * jnp.eye(6), atol=1e-14
    )
    np.testing.assert_allclose(mtj.gram(op).to_dense(), A.T @ A, atol=1e-13)
    np.testing.assert_allclose(mtj.gram(op, "left").to_dense(), A @ A.T, atol=1e-13)
    sp = op.to_scipy()
    x = np.random.default_rng(0).standard_normal((6, 3))
    np.testing.assert_allclose(sp.matvec(x[:, 0]), np.asarray(A) @ x[:, 0], atol=1e-13)
    np.testing.assert_allclose(sp.rmatvec(x[:, 0]), np.asarray(A).T @ x[:, 0], atol=1e-13)
    np.testing.assert_allclose(sp.matmat(x), np.asarray(A) @ x, atol=1e-13)
    svd = mtj.dense_svd(op, compute_vectors=True)
    np.testing.assert_allclose(svd.U * svd.s @ svd.V.T, A, atol=1e-12)
    np.testing.assert_allclose(svd.s, np.linalg.svd(np.asarray(A), compute_uv=False), rtol=1e-12)
    with pytest.raises(ValueError, match="square"):
        wide = mtj.LinearOperator(lambda v: v[:2], lambda u: jnp.pad(u, (0, 1)), (2, 3), A.dtype)
        mtj.add_identity(wide)


def test_composition_of_operators_with_their_own_products():
    # subclasses that compute products in their methods (deflated and transposed views) work in
    # every derived operator and conversion, not only in the solvers
    from matfree_tj.core import Projected, Transposed

    B = jax.random.normal(jax.random.key(1), (7, 5))
    op = mtj.LinearOperator(lambda v: B @ v, lambda u: B.T @ u, B.shape, B.dtype)
    Q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (7, 2)))
    W, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(3), (5, 1)))
    D = (jnp.eye(7) - Q @ Q.T) @ B @ (jnp.eye(5) - W @ W.T)
    for wrapped, dense in ((Projected(op, Q, W), D), (Transposed(op), B.T)):
        np.testing.assert_allclose(wrapped.to_dense(), dense, atol=1e-13)
        np.testing.assert_allclose(wrapped.T.to_dense(), dense.T, atol=1e-13)
        np.testing.assert_allclose(mtj.gram(wrapped).to_dense(), dense.T @ dense, atol=1e-12)
        x = np.random.default_rng(0).standard_normal((dense.shape[1], 2))
        np.testing.assert_allclose(wrapped.to_scipy().matmat(x), np.asarray(dense) @ x, atol=1e-12)
    Pw = jnp.eye(5) - W @ W.T  # a derived operator of a wrapper of a derived operator
    sq = mtj.add_identity(Projected(mtj.add_identity(mtj.gram(op)), W, W), 1.5)
    expected = Pw @ (B.T @ B - jnp.eye(5)) @ Pw + 1.5 * jnp.eye(5)
    np.testing.assert_allclose(sq.to_dense(), expected, atol=1e-12)


# ---------------------------------------------------------------- bad input -----------------
def test_operator_checks_what_its_products_return(x64):
    A = np.random.default_rng(0).standard_normal((5, 4))
    ok = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, jnp.float64)
    assert ok.mv(jnp.ones(4)).shape == (5,)
    with pytest.raises(TypeError, match=r"mv maps a .4,. float64 .* dtype float32"):
        mtj.LinearOperator(
            lambda v: (A @ v).astype(jnp.float32), lambda u: A.T @ u, A.shape, jnp.float64
        )
    with pytest.raises(TypeError, match="rmv maps a .5,. float64 vector to shape .5,."):
        mtj.LinearOperator(lambda v: A @ v, lambda u: u, A.shape, jnp.float64)


def test_bad_vectors(tiny_sgd):
    _, J = tiny_sgd
    P = J.shape[0]
    with pytest.raises(ValueError, match=rf"shape \({P},\)"):
        J.mv(jnp.ones(P + 1))
    with pytest.raises(ValueError, match="shape"):
        J.rmv(jnp.ones((P, 1)))
    with pytest.raises(TypeError, match="dtype"):
        J.mv(jnp.ones(P, jnp.float32))
    with pytest.raises(TypeError, match="dtype"):
        J.rmv(jnp.ones(P, jnp.int32))
    with pytest.raises(ValueError, match="block"):
        J.matmat(jnp.ones(P))
    with pytest.raises(TypeError, match="ravel_pytree"):  # a parameter pytree, not flattened
        J.mv({"w": jnp.ones(P - 1), "b": jnp.ones(1)})
    with pytest.raises(TypeError, match="ravel_pytree"):
        J.rmatmat({"w": jnp.ones((P, 2))})


def test_integer_params_rejected():
    train = lambda p: p
    with pytest.raises(TypeError, match=r"\['step'\] has dtype int.*floating-point"):
        mtj.training_jacobian(train, {"w": jnp.ones(3), "step": jnp.array(1)})


def test_output_structure_mismatch_rejected():
    with pytest.raises(ValueError, match="same structure"):
        mtj.training_jacobian(lambda p: (p, p), jnp.ones(3))
    with pytest.raises(ValueError, match="same structure"):
        mtj.training_jacobian(lambda p: p[:2], jnp.ones(3))


def test_divergent_training_rejected():
    lr = mtj.examples.linear_regression(
        jax.random.key(0), 5, 8, eta=1.0, num_steps=3000, eigenvalues=np.full(5, 3.0)
    )  # |1 - 3| ^ 3000 overflows
    with pytest.raises(FloatingPointError, match="diverged"):
        mtj.training_jacobian(lr.train_fn, lr.params0)


def test_non_finite_product_rejected():
    J = mtj.training_jacobian(lambda p: jnp.sqrt(p), jnp.array([0.0, 1.0]))  # d sqrt at 0 = inf
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        J.mv(jnp.ones(2))
    with pytest.raises(Exception, match="NaN or inf"):
        jax.jit(J.matmat)(jnp.ones((2, 2)))
    sp = J.to_scipy()  # scipy callers get the same error, not an internal callback failure
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        sp.matvec(np.ones(2))
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        sp.matmat(np.ones((2, 2)))
    raw = mtj.training_jacobian(lambda p: jnp.sqrt(p), jnp.array([0.0, 1.0]), check_finite=False)
    assert not bool(jnp.all(jnp.isfinite(raw.mv(jnp.ones(2)))))


def test_non_differentiable_rejected():
    def train(p):
        return jax.pure_callback(
            lambda x: np.asarray(x) * 2, jax.ShapeDtypeStruct(p.shape, p.dtype), p
        )

    with pytest.raises(TypeError, match="not differentiable"):
        mtj.training_jacobian(train, jnp.ones(3))


def test_non_deterministic_rejected():
    calls = {"n": 0}

    def train(p):
        calls["n"] += 1  # a value baked in at trace time: differs between traces
        return p * calls["n"]

    with pytest.raises(ValueError, match="not deterministic"):
        mtj.training_jacobian(train, jnp.ones(3))


def test_adam_without_eps_root_warns():
    X, y = jnp.ones((4, 2)), jnp.zeros(4)
    loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    with pytest.warns(UserWarning, match="eps_root"):
        mtj.make_train_fn(loss, optax.adam(1e-3), mtj.full_batch_schedule((X, y), 2))
    with pytest.warns(UserWarning, match="eps_root"):
        mtj.make_train_fn(loss, optax.adamw(1e-3), mtj.full_batch_schedule((X, y), 2))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mtj.make_train_fn(loss, optax.adam(1e-3, eps_root=1e-8), mtj.full_batch_schedule((X, y), 2))


def test_checkpoint_needs_make_train_fn():
    with pytest.raises(ValueError, match="make_train_fn"):
        mtj.training_jacobian(lambda p: 2 * p, jnp.ones(3), checkpoint="sqrt")
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        mtj.training_jacobian(lambda p: 2 * p, jnp.ones(3), checkpoint="bogus")


# ---------------------------------------------------------------- memory guard -------------
def test_dense_refused_before_allocation_when_it_cannot_fit():
    # P = 10^6: a dense float32 J is 4 TB. Both routes refuse at once with the estimate, the
    # memory available and the matrix-free alternative, before any allocation or product.
    P = 10**6
    op = mtj.LinearOperator(lambda v: v, lambda u: u, (P, P), jnp.float32)
    op = mtj.add_identity(op, 0.0)  # a derived operator goes through the same guard
    for call in (op.to_dense, lambda: mtj.dense_svd(op), lambda: mtj.materialise(op)):
        with pytest.raises(
            mtj.MemoryBudgetError,
            match=r"needs about (4\d{3}|\d{5,})\.\d GB, .* available.*matrix-free",
        ):
            call()
    assert issubclass(mtj.MemoryBudgetError, MemoryError)
    # an explicit budget: a 1000 x 1000 SVD with vectors (~40 MB) refused under 1 MB
    from matfree_tj.core import check_fits

    with pytest.raises(mtj.MemoryBudgetError, match="dense J"):
        check_fits(40 * 10**6, "dense J", limit=10**6)
    check_fits(40 * 10**6, "dense J", limit=10**9)  # fits: no error


def test_function_operator_on_a_mesh_and_as_a_jit_argument(x64):
    # a LinearOperator's closure-converted products run inside shard_map (both mesh kinds) and
    # the operator is a valid jax.jit argument (its code static, its captured arrays leaves)
    from jax.sharding import Mesh

    A = jnp.asarray(np.random.default_rng(0).standard_normal((6, 5)))
    meshes = (Mesh(np.array(jax.devices()), ("d",)), jax.make_mesh((len(jax.devices()),), ("d",)))
    for mesh in meshes:
        op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype, mesh=mesh)
        for k in (1, 3, 7):
            V, U = jnp.ones((5, k)), jnp.ones((6, k))
            np.testing.assert_allclose(op.matmat(V), A @ V, atol=1e-13)
            np.testing.assert_allclose(op.rmatmat(U), A.T @ U, atol=1e-13)
    op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)
    x = jnp.arange(5.0)
    np.testing.assert_allclose(jax.jit(lambda o, x: o.mv(x))(op, x), A @ x, atol=1e-13)
    np.testing.assert_allclose(
        jax.jit(lambda o, x: mtj.gram(o).mv(x))(op, x), A.T @ (A @ x), atol=1e-12
    )
