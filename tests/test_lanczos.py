"""Golub-Kahan-Lanczos top/bottom triplets against closed-form and dense oracles (float64)."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import (
    DenseOperator,
    dense_operator,
    lr_operator,
    make_lr,
    matrix_with_spectrum,
    nearest_true,
    small_mlp,
    true_residuals,
)

import matfree_tj as mtj

EPS64 = np.finfo(np.float64).eps


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):  # float64 for the whole module (tests/conftest.py restores it)
    yield


@pytest.fixture(scope="module")
def lr20k(x64):
    return lr_operator(20_000, 60)


@pytest.fixture(scope="module")
def mlp(x64):
    return small_mlp()


def assert_honest(op, res, s_true=None, A=None):
    """Reported residuals are the true ones; converged values are certified exact values."""
    if A is None and isinstance(op, DenseOperator):
        A = np.asarray(op.A)
    r = true_residuals(op, res, A)
    smax = float(np.max(np.abs(np.asarray(res.s))))
    if s_true is not None:
        smax = max(smax, float(np.max(s_true)))  # rounding in products scales with ||A||
    np.testing.assert_allclose(np.asarray(res.residuals), r, rtol=1e-6, atol=1e3 * EPS64 * smax)
    conv = np.asarray(res.converged)
    np.testing.assert_array_equal(conv, r <= res.tol * np.abs(np.asarray(res.s)) + res.atol)
    for X in (res.U, res.V):
        X = np.asarray(X)
        np.testing.assert_allclose(X.T @ X, np.eye(X.shape[1]), atol=1e-10)
    if s_true is not None:
        d = nearest_true(np.asarray(res.s)[conv], s_true)
        # perturbation theory for [[0, A], [A^T, 0]]: an exact value within r / sqrt(2)
        assert np.all(d <= r[conv] / np.sqrt(2) + 10 * EPS64 * smax)


def test_top20_linear_regression_closed_form(lr20k):
    lr, op = lr20k
    s_true = lr.singular_values
    res = mtj.top_singular(op, 20, key=jax.random.key(1))
    rel = np.abs(np.asarray(res.s) - s_true[:20]) / s_true[:20]
    assert rel.max() <= 1e-8, rel.max()
    assert bool(res.converged.all()) and res.status == "converged"
    assert np.all(np.diff(np.asarray(res.s)) <= 0)
    assert res.num_products <= 400
    assert_honest(op, res, s_true)


def test_top20_linear_regression_through_training(x64):
    # P = 20,000 through jax.jvp / jax.vjp of the actual training loop.
    lr = make_lr(20_000, 40, seed=3)
    J = mtj.training_jacobian(lr.train_fn, lr.params0, check_deterministic=False)
    s_true = lr.singular_values
    res = mtj.top_singular(J, 20, key=jax.random.key(2))
    rel = np.abs(np.asarray(res.s) - s_true[:20]) / s_true[:20]
    assert rel.max() <= 1e-8, rel.max()
    assert bool(res.converged.all())


def test_bottom_linear_regression(lr20k):
    lr, op = lr20k
    s_true = lr.singular_values
    res = mtj.bottom_singular(op, 5, key=jax.random.key(3))
    assert np.all(np.diff(np.asarray(res.s)) >= 0)
    conv = np.asarray(res.converged)
    # the Krylov space of J^T J here has dimension n + 1 = 61 < num_basis, so all converge
    assert conv.all(), res.residuals
    s = np.asarray(res.s)
    d = nearest_true(s, s_true)
    assert np.all((d <= 1e-6 * s) | (d <= 1e-10)), d
    np.testing.assert_allclose(s, np.sort(s_true)[:5], rtol=1e-6, atol=1e-10)
    assert_honest(op, res, s_true)


def test_mlp_top_and_bottom_vs_dense(mlp):
    J, Jd, s_dense = mlp
    top = mtj.top_singular(J, 8, key=jax.random.key(4), num_basis=60)
    np.testing.assert_allclose(np.asarray(top.s), s_dense[:8], rtol=1e-10)
    assert bool(top.converged.all())
    assert_honest(J, top, s_dense, Jd)
    bot = mtj.bottom_singular(J, 8, key=jax.random.key(5), num_basis=60)
    conv = np.asarray(bot.converged)
    assert conv.sum() >= 6, bot.residuals
    np.testing.assert_allclose(
        np.asarray(bot.s)[conv], np.sort(s_dense)[:8][conv], rtol=1e-8, atol=1e-12
    )
    assert_honest(J, bot, s_dense, Jd)


def test_mlp_top_vs_scipy_svds(mlp):
    from scipy.sparse.linalg import svds

    J, _, _ = mlp
    res = mtj.top_singular(J, 5, key=jax.random.key(6), num_basis=60)
    s_scipy = np.sort(
        svds(J.to_scipy(), k=5, tol=1e-12, random_state=0, return_singular_vectors=False)
    )[::-1]
    np.testing.assert_allclose(np.asarray(res.s), s_scipy, rtol=1e-10)


def test_no_ghosts_with_well_separated_top_values(x64):
    s_true = np.concatenate([np.arange(20.0, 10.0, -1.0), np.linspace(0.0, 1.0, 190)])
    op = DenseOperator(matrix_with_spectrum(s_true, seed=1))
    # one long cycle (no restart): plain Lanczos would show copies of 20, 19, ... by now
    res = mtj.top_singular(op, 10, key=jax.random.key(7), num_basis=150)
    s = np.asarray(res.s)
    np.testing.assert_allclose(s, s_true[:10], rtol=1e-12)
    assert np.min(-np.diff(s)) > 0.5
    # many thick restarts in a small basis: still no duplicates
    res = mtj.top_singular(op, 5, key=jax.random.key(8), num_basis=12)
    assert res.num_restarts >= 1
    np.testing.assert_allclose(np.asarray(res.s), s_true[:5], rtol=1e-10)
    assert_honest(op, res, s_true)


def test_converged_flags_are_honest_when_budget_runs_out(x64):
    s_true = np.logspace(-9, 1, 200)[::-1]
    op = DenseOperator(matrix_with_spectrum(s_true, seed=2))
    res = mtj.bottom_singular(op, 5, key=jax.random.key(9), num_basis=12, max_products=400)
    assert res.status == "max_products"
    assert res.num_products <= 400
    assert not bool(res.converged.all())
    assert_honest(op, res, s_true)
    d = nearest_true(np.asarray(res.s)[np.asarray(res.converged)], s_true)
    assert np.all((d <= 1e-6 * np.asarray(res.s)[np.asarray(res.converged)]) | (d <= 1e-10))
    # a top cluster that a tiny budget cannot split
    s_true = np.concatenate([1 + 1e-6 * np.arange(10)[::-1], np.linspace(0, 0.99, 190)])
    op = DenseOperator(matrix_with_spectrum(s_true, seed=3))
    res = mtj.top_singular(op, 5, key=jax.random.key(10), num_basis=12, max_products=40)
    assert not bool(res.converged.all())
    assert_honest(op, res, s_true)


def test_rectangular_top(x64):
    s_true = np.linspace(5.0, 0.1, 40)
    op = DenseOperator(matrix_with_spectrum(s_true, seed=4, shape=(60, 40)))
    res = mtj.top_singular(op, 4, key=jax.random.key(11))
    assert res.U.shape == (60, 4) and res.V.shape == (40, 4)
    np.testing.assert_allclose(np.asarray(res.s), s_true[:4], rtol=1e-12)
    assert_honest(op, res, s_true)


def test_wide_operator_top_converges(x64):
    # rows < columns: the solver works on A^T (whose right Krylov basis can be completed)
    s_true = np.linspace(4.0, 0.5, 30)
    A = matrix_with_spectrum(s_true, seed=8, shape=(30, 80))
    op = DenseOperator(A)
    for k in (3, 15, 29):
        res = mtj.top_singular(op, k, key=jax.random.key(k))
        assert res.U.shape == (30, k) and res.V.shape == (80, k)
        assert res.status == "converged"
        np.testing.assert_allclose(np.asarray(res.s), s_true[:k], rtol=1e-12)
        assert_honest(op, res, s_true)


@pytest.mark.parametrize("mult,k", [(10, 10), (12, 6)])
def test_repeated_top_value_closed_form(x64, mult, k):
    # GD on least squares with the largest Hessian eigenvalue repeated: J has a top singular
    # value of multiplicity `mult` (closed form), which a single-vector Krylov space holds only
    # once. Every returned value must be a copy of it, not merely some singular value.
    n, P, eta, T = 120, 200, 1.0, 5
    lam = np.concatenate([np.full(mult, 2.3), np.linspace(2.0, 2.29, n - mult)])
    lr = mtj.examples.linear_regression(
        jax.random.key(mult), n, P, eta=eta, num_steps=T, eigenvalues=lam
    )
    J = mtj.training_jacobian(lr.train_fn, lr.params0)
    s_true = lr.singular_values
    assert np.allclose(s_true[:mult], 1.3**T)
    res = mtj.top_singular(J, k, key=jax.random.key(0))
    assert res.status == "converged"
    np.testing.assert_allclose(np.asarray(res.s), s_true[:k], rtol=1e-10)
    # the vectors span k independent directions of the repeated value's singular subspace
    V = np.asarray(res.V)
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-8)
    assert_honest(J, res, s_true, A=lr.dense())
    # without the check the same run may stop with a wrong top-k, every flag set
    plain = mtj.top_singular(J, k, key=jax.random.key(0), verify=False)
    assert plain.num_products < res.num_products


@pytest.mark.parametrize("smallest", [0.0, 0.05])
def test_repeated_bottom_value_is_not_missed(x64, smallest):
    # a smallest value repeated three times (a 3-dim null space, or 0.05 x 3): a single-vector
    # Krylov space holds one copy; the check for missed values must find the other two
    rng = np.random.default_rng(11)
    s_true = np.concatenate([np.full(3, smallest), np.sort(rng.uniform(0.1, 5.0, 117))])
    A = matrix_with_spectrum(s_true, seed=12)
    op = dense_operator(A)
    for seed in (7, 8):
        res = mtj.bottom_singular(op, 5, key=jax.random.key(seed))
        conv = np.asarray(res.converged)
        # a null space lies below the resolution floor: certified only as within atol of 0
        ok = ("below_resolution",) if smallest == 0.0 else ("converged",)
        assert conv.all() and res.status in (*ok, "unverified"), res.status
        assert bool(np.all(res.below_floor[:3])) == (smallest == 0.0)
        atol = 1e3 * EPS64 * 5.0
        np.testing.assert_allclose(np.asarray(res.s), s_true[:5], atol=atol)
        V = np.asarray(res.V)
        np.testing.assert_allclose(V.T @ V, np.eye(5), atol=1e-8)
        assert_honest(op, res, s_true)
    plain = mtj.bottom_singular(op, 5, key=jax.random.key(7), verify=False)
    assert plain.num_products < res.num_products


@pytest.mark.parametrize("rank,k", [(1, 3), (10, 12)])
def test_top_k_above_rank_verifies(x64, rank, k):
    # k beyond the rank: the deflated operator of the missed-value check is ~0; the check must
    # still conclude (tolerance from ||A||, not from the deflated operator's own norm)
    s_true = np.concatenate([np.linspace(9.0, 1.0, rank), np.zeros(40 - rank)])
    A = matrix_with_spectrum(s_true, seed=rank, shape=(40, 40))
    op = dense_operator(A)
    res = mtj.top_singular(op, k, key=jax.random.key(rank))
    assert res.status == "converged" and bool(np.all(res.converged))
    np.testing.assert_allclose(np.asarray(res.s), s_true[:k], atol=1e3 * EPS64 * 9.0)
    plain = mtj.top_singular(op, k, key=jax.random.key(rank), verify=False)
    assert res.num_products < plain.num_products + 200  # a short check, not the whole budget


def test_bad_input(x64):
    op = dense_operator(np.eye(6) * np.arange(1.0, 7.0))
    key = jax.random.key(0)
    for bad in (None, "3", 2.5):
        with pytest.raises(TypeError, match="expected an integer k"):
            mtj.top_singular(op, bad, key=key)
        with pytest.raises(TypeError, match="expected an integer k"):
            mtj.bottom_singular(op, bad, key=key)
        with pytest.raises(TypeError, match="expected an integer k"):
            mtj.top_singular(op, bad, key=key, method="randomized")
    with pytest.raises(ValueError, match=r"1 <= k < P = 6, got k=6"):
        mtj.top_singular(op, 6, key=key)
    with pytest.raises(ValueError, match=r"1 <= k < P = 6, got k=0"):
        mtj.bottom_singular(op, 0, key=key)
    with pytest.raises(TypeError, match="key"):
        mtj.top_singular(op, 2)
    with pytest.raises(ValueError, match="square"):
        mtj.bottom_singular(dense_operator(np.ones((5, 4))), 1, key=key)
    with pytest.raises(ValueError, match="method"):
        mtj.top_singular(op, 2, key=key, method="arnoldi")
    with pytest.raises(ValueError, match="num_basis"):
        mtj.top_singular(op, 2, key=key, num_basis=7)
    with pytest.raises(TypeError, match="unknown options"):
        mtj.top_singular(op, 2, key=key, power_iters=3)


@pytest.mark.parametrize("check_finite", [True, False])
def test_nan_product_raises(x64, check_finite):
    A = jnp.eye(8)
    op = mtj.LinearOperator(
        lambda v: A @ v * jnp.nan, lambda u: A.T @ u, (8, 8), A.dtype, check_finite=check_finite
    )
    with pytest.raises(FloatingPointError):
        mtj.top_singular(op, 2, key=jax.random.key(0))


# JAX reports every XLA compilation as this monitoring event (jax._src.dispatch)
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_COMPILE_WINDOWS: list = []  # open recording windows of _recording_compiles


def _on_duration(event, duration_secs, **kwargs):
    if event == _COMPILE_EVENT:
        for window in _COMPILE_WINDOWS:
            window.append(kwargs.get("fun_name", event))


@contextlib.contextmanager
def _recording_compiles():
    """Every backend compile while open, as JAX's own monitoring reports it. The listener is
    registered once per process (jax < 0.8 has no public way to unregister one)."""
    if not getattr(_on_duration, "registered", False):
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _on_duration.registered = True
    window: list = []
    _COMPILE_WINDOWS.append(window)
    try:
        yield window
    finally:
        _COMPILE_WINDOWS.remove(window)


def _kernel_cache_sizes(block_size):
    """Compiled variants held by each of the restarted solver's own kernels (JAX's per-function
    jit caches): a recompilation of any of them shows as a larger count."""
    from matfree_tj.linalg import _certify, _gkl, _restart

    kernels = {
        "left_half": _gkl._left_half_jit[True],
        "right_half": _gkl._right_half_jit[True],
        "thick_restart": _restart.thick_restart._cached,  # eqx.filter_jit's inner jax.jit
        "column": _certify._column,
        "residual_norm": _certify._residual_norm,
    }
    if block_size > 1:
        kernels["rows_as_columns"] = _gkl._rows_as_columns
    return {name: f._cache_size() for name, f in kernels.items()}


@pytest.mark.parametrize("block_size", [1, 4])
def test_no_recompilation_on_second_call(x64, block_size):
    # block_size 4: the block path reuses the operator's compiled block products and the same
    # half-step kernels, so it too compiles nothing for a new operator of the same shape
    s_true = np.linspace(3.0, 0.5, 200)
    op = DenseOperator(matrix_with_spectrum(s_true, seed=7))
    opts = dict(num_basis=12, block_size=block_size)
    first = mtj.top_singular(op, 3, key=jax.random.key(0), **opts)
    assert first.num_restarts >= 1  # the restart kernel is exercised too
    before = _kernel_cache_sizes(block_size)
    assert all(n >= 1 for n in before.values()), before
    op2 = DenseOperator(matrix_with_spectrum(s_true, seed=8))  # same shape: same kernels
    with _recording_compiles() as compiles:
        mtj.top_singular(op2, 3, key=jax.random.key(1), **opts)
    assert _kernel_cache_sizes(block_size) == before
    assert not compiles, compiles  # nothing else (products, eager ops) compiled either


def test_block_variant(x64):
    s_true = np.concatenate([np.arange(20.0, 10.0, -1.0), np.linspace(0.0, 1.0, 190)])
    op = DenseOperator(matrix_with_spectrum(s_true, seed=1))
    res = mtj.top_singular(op, 5, key=jax.random.key(12), num_basis=24, block_size=4)
    np.testing.assert_allclose(np.asarray(res.s), s_true[:5], rtol=1e-12)
    assert bool(res.converged.all())
    assert_honest(op, res, s_true)
    # thick restarts with blocks (small basis), then the honest bottom end
    res = mtj.top_singular(op, 6, key=jax.random.key(13), num_basis=16, block_size=4)
    assert res.num_restarts >= 1
    np.testing.assert_allclose(np.asarray(res.s), s_true[:6], rtol=1e-10)
    assert_honest(op, res, s_true)
    res = mtj.bottom_singular(
        op, 3, key=jax.random.key(14), num_basis=24, block_size=4, max_products=600
    )
    assert_honest(op, res, s_true)
    with pytest.raises(ValueError, match="block_size"):
        mtj.top_singular(op, 5, key=jax.random.key(0), num_basis=8, block_size=4)


def test_one_triplets_type_dense_and_matrix_free(x64):
    import json

    s_true = np.linspace(4.0, 0.5, 30)
    A = matrix_with_spectrum(s_true, seed=5, shape=(40, 30))
    op = dense_operator(A)
    dense = mtj.dense_svd(op, compute_vectors=True)
    assert isinstance(dense, mtj.SingularTriplets) and len(dense) == 30
    assert (dense.method, dense.which, dense.status) == ("dense", "all", mtj.Status.CONVERGED)
    assert dense.num_products == 30 and mtj.dense_svd(A).num_products == 0
    assert mtj.dense_svd(A).U is None and mtj.dense_svd(A).V is None
    # the a-priori bound covers the true residuals of the LAPACK triplets
    r = true_residuals(op, dense, A)
    assert np.all(r <= np.asarray(dense.residuals)) and bool(np.all(dense.converged))
    top = mtj.top_singular(op, 4, key=jax.random.key(3))
    for res in (dense, top):
        record = json.loads(json.dumps(res.accuracy()))
        assert record["status"] == "converged" and record["num_products"] == res.num_products
        np.testing.assert_array_equal(record["s"], np.asarray(res.s))
        np.testing.assert_array_equal(record["residuals"], np.asarray(res.residuals))
        # canonical signs: the largest-magnitude entry of each v_i is positive, u_i flips with it
        flipped = res.with_canonical_signs()
        V, U = np.asarray(flipped.V), np.asarray(flipped.U)
        assert np.all(V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])] > 0)
        np.testing.assert_allclose(A @ V, U * np.asarray(res.s), atol=1e-10)
        np.testing.assert_allclose(np.abs(V), np.abs(np.asarray(res.V)), rtol=0, atol=0)
    np.testing.assert_allclose(
        np.asarray(top.with_canonical_signs().V), dense.with_canonical_signs().V[:, :4], atol=1e-8
    )
    assert mtj.Status("max_products") is mtj.Status.MAX_PRODUCTS and f"{top.status}" == "converged"
