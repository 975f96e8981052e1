"""matfree_tj.analysis on inputs beyond the study's own: token models, weight decay, dense SVDs,
odd orderings and bad arguments. Each case is checked against an independent computation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matfree_tj as mtj
from matfree_tj import analysis as an


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):
    yield


def _tiny_regression(optimizer, *, num_steps=6, seed=0):
    """A 2-layer tanh network on a dict of parameters, trained full batch: P = 4*3 + 3 + 3 = 18."""
    k = jax.random.split(jax.random.key(seed), 4)
    X = jax.random.normal(k[0], (10, 4))
    y = jnp.sin(X[:, 0]) + 0.1 * jax.random.normal(k[1], (10,))
    params0 = {
        "W": 0.5 * jax.random.normal(k[2], (4, 3)),
        "b": jnp.zeros(3),
        "w": 0.5 * jax.random.normal(k[3], (3,)),
    }

    def loss(p, batch):
        Xb, yb = batch
        return 0.5 * jnp.mean((jnp.tanh(Xb @ p["W"] + p["b"]) @ p["w"] - yb) ** 2)

    train = mtj.make_train_fn(loss, optimizer, mtj.full_batch_schedule((X, y), num_steps))
    J = mtj.training_jacobian(train, params0, check_deterministic=False)
    return J, loss, (X, y)


# ------------------------------------------------------------------- moved directions ---
def test_moved_directions_from_a_dense_svd_of_J():
    lr = mtj.examples.linear_regression(jax.random.key(4), 6, 15, eta=0.5, num_steps=4)
    J = mtj.training_jacobian(lr.train_fn, lr.params0)
    Jd = lr.dense()
    from_matrix = an.moved_directions(J, 4, backend="dense", dense=Jd)
    from_svd = an.moved_directions(J, 4, backend="dense", dense=mtj.dense_svd(Jd, True))
    # J - I = (I - eta Sigma)^T - I: singular values eta * lambda_i, not J's own sigma_i
    expected = np.sort(np.abs(np.linalg.eigvalsh(Jd - np.eye(15))))[::-1][:4]
    np.testing.assert_allclose(from_matrix.s, expected, rtol=1e-10)
    np.testing.assert_allclose(from_svd.s, expected, rtol=1e-10)
    np.testing.assert_allclose(np.abs(from_svd.V.T @ from_matrix.V), np.eye(4), atol=1e-8)
    with pytest.raises(ValueError, match="without singular vectors"):
        an.moved_directions(J, 4, backend="dense", dense=mtj.dense_svd(Jd))
    with pytest.raises(ValueError, match="must be the"):
        an.moved_directions(J, 4, backend="dense", dense=Jd[:, :5])
    with pytest.raises(ValueError, match="without singular vectors"):
        an.singular_triplets(J, 2, backend="dense", dense=mtj.dense_svd(Jd))
    with pytest.raises(TypeError, match="k must be an integer"):
        an.singular_triplets(J, 2.7, backend="dense", dense=Jd)
    with pytest.raises(TypeError, match="k must be an integer"):
        an.singular_triplets(J, None, backend="dense", dense=Jd)


# ------------------------------------------------------------- integer (token) inputs ---
def _token_model():
    V, d, C = 7, 3, 4
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    params = {"E": jax.random.normal(k1, (V, d)), "W": jax.random.normal(k2, (d, C))}
    tokens = jax.random.randint(k3, (9, 5), 0, V)  # 9 sequences of 5 token ids

    def apply(p, t):  # mean embedding -> logits; t holds integer ids
        return p["E"][t].mean(axis=1) @ p["W"]

    def apply_onehot(p, oh):  # the same model on one-hot float inputs
        return (oh @ p["E"]).mean(axis=1) @ p["W"]

    return params, tokens, apply, apply_onehot, jax.nn.one_hot(tokens, V)


def test_token_inputs_are_not_cast_to_floats():
    params, tokens, apply, apply_onehot, onehot = _token_model()
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    D = np.asarray(jax.random.normal(jax.random.key(2), (theta.size, 3)))
    kl = an.output_sensitivity(apply, theta, D, {"tok": tokens}, unravel=unravel)
    ref = an.output_sensitivity(apply_onehot, theta, D, {"tok": onehot}, unravel=unravel)
    np.testing.assert_allclose(kl.max_kl["tok"], ref.max_kl["tok"], rtol=1e-10)
    assert np.all(kl.max_kl["tok"] > 0)
    F = an.function_jacobian(apply, theta, tokens, unravel=unravel)
    F_ref = an.function_jacobian(apply_onehot, theta, onehot, unravel=unravel)
    np.testing.assert_allclose(F, F_ref, rtol=1e-10, atol=1e-12)
    assert an.model_inputs(tokens, jnp.float32).dtype == tokens.dtype
    assert an.model_inputs(np.ones(2, np.float64), jnp.float32).dtype == jnp.float32


def test_output_sensitivity_direction_shapes():
    params, tokens, apply, _, _ = _token_model()
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    D = np.asarray(jax.random.normal(jax.random.key(3), (theta.size, 2)))
    both = an.output_sensitivity(apply, theta, D, {"tok": tokens}, unravel=unravel)
    one = an.output_sensitivity(apply, theta, D[:, 1], {"tok": tokens}, unravel=unravel)
    assert one.max_kl["tok"].shape == (1,)
    np.testing.assert_allclose(one.max_kl["tok"][0], both.max_kl["tok"][1], rtol=1e-12)
    with pytest.raises(ValueError, match=r"must be \(33, m\)"):
        an.output_sensitivity(apply, theta, D[:-1], {"tok": tokens}, unravel=unravel)
    with pytest.raises(ValueError, match="finite and nonzero"):
        an.output_sensitivity(apply, theta, 0 * D, {"tok": tokens}, unravel=unravel)
    with pytest.raises(ValueError, match="inputs is empty"):
        an.output_sensitivity(apply, theta, D, {}, unravel=unravel)


# ------------------------------------------------------- restricted training, weight decay ---
@pytest.mark.parametrize(
    "name, optimizer",
    [
        ("adamw", optax.adamw(0.05, eps_root=1e-8, weight_decay=0.3)),
        ("sgd+decay", optax.chain(optax.add_decayed_weights(0.3), optax.sgd(0.2, momentum=0.9))),
    ],
)
def test_restricted_training_identity_basis_is_unconstrained_with_weight_decay(name, optimizer):
    J, _, _ = _tiny_regression(optimizer)
    P = J.shape[0]
    mse = lambda p: jnp.sum(jnp.square(jax.flatten_util.ravel_pytree(p)[0]))  # noqa: E731
    out = an.restricted_training(J, {"id": np.eye(P)}, [P], eval_fn=mse)
    # the optimizer sees theta's coordinates, so decay pulls toward 0 as it does unconstrained
    assert out.evals["id"][0] == pytest.approx(out.unconstrained, rel=1e-10), name


def test_restricted_training_keeps_the_optimizers_per_leaf_behaviour():
    # adamw decaying only the matrices (a mask over leaves), and LAMB's per-leaf trust ratio:
    # any full basis (Pi = I) reproduces the normal run; zero-padding (k=5 -> width 8) does not
    # change a run, even for transforms that average over parameters.
    mask = lambda p: jax.tree_util.tree_map(lambda a: a.ndim > 1, p)  # noqa: E731
    norm = lambda p: jnp.sum(jnp.square(jax.flatten_util.ravel_pytree(p)[0]))  # noqa: E731
    adamw = optax.adamw(0.05, eps_root=1e-8, weight_decay=0.5, mask=mask)
    for opt in (adamw, optax.lamb(0.05, eps_root=1e-8)):
        J, _, _ = _tiny_regression(opt)
        P = J.shape[0]
        Q, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(7), (P, P))))
        out = an.restricted_training(J, {"rot": Q, "five": Q[:, :5]}, [5, P], eval_fn=norm)
        assert out.evals["rot"][1] == pytest.approx(out.unconstrained, rel=1e-9)
        assert out.evals["rot"][0] == pytest.approx(out.evals["five"][0], rel=1e-12)
        assert np.isnan(out.evals["five"][1])


def test_restricted_training_is_projected_sgd_with_weight_decay():
    lr_, wd, T = 0.2, 0.3, 6
    opt = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr_))
    J, loss, data = _tiny_regression(opt, num_steps=T)
    P = J.shape[0]
    Q, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(5), (P, P))))
    theta_of = lambda p: jax.flatten_util.ravel_pytree(p)[0]  # noqa: E731
    evals = {}

    def eval_fn(p):
        return jnp.sum(theta_of(p) * jnp.arange(1.0, P + 1))  # a linear read-out of theta

    out = an.restricted_training(J, {"rot": Q}, [5, P], eval_fn=eval_fn)
    # the oracle: explicit projected gradient descent with decay, in theta space
    grad = jax.grad(lambda th: loss(J.unravel(th), data))
    for k in (5, P):
        B = Q[:, :k]
        th = np.asarray(J.params0_flat)
        for _ in range(T):
            th = th - lr_ * B @ (B.T @ (np.asarray(grad(jnp.asarray(th))) + wd * th))
        evals[k] = float(eval_fn(J.unravel(jnp.asarray(th))))
    np.testing.assert_allclose(out.evals["rot"], [evals[5], evals[P]], rtol=1e-10)
    assert out.evals["rot"][1] == pytest.approx(out.unconstrained, rel=1e-10)
    with pytest.raises(ValueError, match=r"must be \(18, k_max\)"):
        an.restricted_training(J, {"bad": Q[:-1]}, [5], eval_fn=eval_fn)
    with pytest.raises(ValueError, match="not orthonormal"):
        an.restricted_training(J, {"scaled": 3 * Q}, [5], eval_fn=eval_fn)
    with pytest.raises(ValueError, match="positive integers"):
        an.restricted_training(J, {"rot": Q}, [2.7, 0], eval_fn=eval_fn)
    with pytest.raises(ValueError, match="taken"):
        an.restricted_training(J, {"initial": Q}, [5], eval_fn=eval_fn)


# ------------------------------------------------------------------------ perturbation ---
def test_perturbation_response_ignores_the_order_of_eps():
    J, _, _ = _tiny_regression(optax.sgd(0.2, momentum=0.9))
    v = np.asarray(jax.random.normal(jax.random.key(6), (J.shape[0],)))
    eps = np.array([1e-4, 1e-2, 1.0, 1e2, 1e4])
    up = an.perturbation_response(J, v, eps=eps)
    down = an.perturbation_response(J, v, eps=eps[::-1])
    assert list(down.eps) == list(eps)
    assert [r["eps"] for r in down.to_dict()["rows"]] == list(eps)
    assert up.linear_up_to == down.linear_up_to
    assert 1e-4 <= up.linear_up_to < 1e4  # tanh saturates well before eps = 1e4
    with pytest.raises(ValueError, match="finite nonzero direction"):
        an.perturbation_response(J, 0 * v, eps=eps)
    with pytest.raises(ValueError, match=r"v must have shape \(18,\)"):
        an.perturbation_response(J, v[:-1], eps=eps)
    with pytest.raises(ValueError, match="finite and positive"):
        an.perturbation_response(J, v, u=v, sigma=0.0, eps=eps)
