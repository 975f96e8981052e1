"""Randomized SVD (Halko-Martinsson-Tropp) against closed-form and dense oracles (float64)."""

import jax
import numpy as np
import pytest
from _oracles import (
    DenseOperator,
    lr_operator,
    matrix_with_spectrum,
    nearest_true,
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


def check_flags(op, res, s_true, A=None):
    r = true_residuals(op, res, A)
    smax = max(float(np.max(s_true)), float(np.max(np.asarray(res.s))))
    np.testing.assert_allclose(np.asarray(res.residuals), r, rtol=1e-6, atol=1e3 * EPS64 * smax)
    conv = np.asarray(res.converged)
    np.testing.assert_array_equal(conv, r <= res.tol * np.asarray(res.s) + res.atol)
    # every value lies within r / sqrt(2) of an exact one, and Ritz values interlace from below
    assert np.all(nearest_true(res.s, s_true) <= r / np.sqrt(2) + 10 * EPS64 * smax)
    k = res.s.shape[0]
    assert np.all(np.asarray(res.s) <= np.sort(s_true)[::-1][:k] * (1 + 1e-12))


def test_top20_linear_regression(lr20k):
    lr, op = lr20k
    s_true = lr.singular_values
    res = mtj.top_singular(
        op, 20, key=jax.random.key(0), method="randomized", oversample=15, power_iters=6, tol=1e-6
    )
    rel = np.abs(np.asarray(res.s) - s_true[:20]) / s_true[:20]
    assert rel.max() <= 1e-8, rel.max()
    assert res.num_products == (2 * 6 + 2) * 35 + 2 * 20
    assert res.num_converged >= 15
    check_flags(op, res, s_true)


def test_adaptive_on_J_minus_I_finds_the_moved_directions(lr20k):
    # J - I has rank n = 60 exactly: the adaptive range finder stops once it holds that range.
    lr, op = lr20k
    s_true = np.sort(np.abs(lr.factors - 1.0))[::-1]
    JmI = mtj.add_identity(op, -1.0)
    res = mtj.top_singular(
        JmI,
        20,
        key=jax.random.key(1),
        method="randomized",
        adaptive=True,
        oversample=10,
        power_iters=1,
        tol=1e-10,
        max_rank=120,
    )
    assert res.status == "converged"
    assert bool(res.converged.all())
    np.testing.assert_allclose(np.asarray(res.s), s_true[:20], rtol=1e-10)
    check_flags(JmI, res, np.concatenate([s_true, [0.0]]))


def test_adaptive_dense_decaying_spectrum(x64):
    s_true = 0.5 ** np.arange(200.0)
    op = DenseOperator(matrix_with_spectrum(s_true, seed=5))
    res = mtj.top_singular(
        op,
        5,
        key=jax.random.key(2),
        method="randomized",
        adaptive=True,
        block_size=10,
        power_iters=1,
        tol=1e-12,
        max_rank=200,
    )
    assert res.status == "converged" and bool(res.converged.all())
    np.testing.assert_allclose(np.asarray(res.s), s_true[:5], rtol=1e-12)
    check_flags(op, res, s_true, np.asarray(op.A))


def test_flags_honest_without_enough_power_iterations(x64):
    # a flat spectrum: one pass of the range finder cannot converge; the flags must say so
    s_true = np.linspace(1.0, 0.9, 200)
    op = DenseOperator(matrix_with_spectrum(s_true, seed=6))
    res = mtj.top_singular(
        op, 5, key=jax.random.key(3), method="randomized", oversample=5, power_iters=0, tol=1e-8
    )
    assert res.num_converged == 0 and res.status != "converged"
    check_flags(op, res, s_true, np.asarray(op.A))


def test_bad_input(x64):
    op = DenseOperator(np.diag(np.arange(1.0, 11.0)))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="1 <= k < P = 10, got k=10"):
        mtj.top_singular(op, 10, key=key, method="randomized")
    with pytest.raises(ValueError, match="oversample"):
        mtj.top_singular(op, 3, key=key, method="randomized", oversample=20)
    with pytest.raises(TypeError, match="key"):
        mtj.top_singular(op, 3, method="randomized")
    with pytest.raises(TypeError, match="lanczos"):
        mtj.top_singular(op, 3, key=key, method="randomized", num_basis=5)
