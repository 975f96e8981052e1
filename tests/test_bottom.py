"""The bottom end: clustered null spaces, the growing basis, harmonic triplets, the resolution
floor (float64 accuracy tests; one float32 case for the floor)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import matrix_with_spectrum, nearest_true, true_residuals

import matfree_tj as mtj
from matfree_tj.linalg._gkl import gkl_cycle_eager
from matfree_tj.linalg._restart import harmonic_ritz, residual_block

EPS64 = np.finfo(np.float64).eps
P = 200
SIGMA1 = 110.0


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):  # float64 for the whole module (tests/conftest.py restores it)
    yield


def clustered_spectrum(num_distinct: int, size: int = P) -> np.ndarray:
    """The linear-regression oracle's structure: a bulk of ones, ``num_distinct`` values spread
    over [1e-9, 110], and a numerical null space of 8 values in [1e-14, 5e-12] (all below the
    float64 floor 100 eps 110 = 2.4e-12 but the last)."""
    return np.concatenate(
        [
            np.ones(size - num_distinct - 8),
            np.logspace(-9, np.log10(SIGMA1), num_distinct),
            np.logspace(-14, np.log10(5e-12), 8),
        ]
    )


_OPS = {}


def clustered(num_distinct: int, dtype=np.float64):
    if (num_distinct, dtype) not in _OPS:
        s = clustered_spectrum(num_distinct)
        A = matrix_with_spectrum(s, seed=num_distinct).astype(dtype)
        # the oracle of the matrix as stored (float32 rounding moves the small values)
        s_true = np.linalg.svd(A.astype(np.float64), compute_uv=False)
        _OPS[num_distinct, dtype] = (mtj.MatrixOperator(jnp.asarray(A)), A, np.sort(s_true))
    return _OPS[num_distinct, dtype]


def assert_certified(res, A, s_true, slack=0.0):
    """Reported residuals are the true ones, and every flagged value has an exact singular
    value within residual / sqrt(2) (+ slack for the products' own rounding)."""
    r = true_residuals(None, res, A.astype(np.float64))
    np.testing.assert_allclose(np.asarray(res.residuals), r, rtol=1e-3, atol=10 * slack + 1e-14)
    conv = np.asarray(res.converged)
    d = nearest_true(np.asarray(res.s), s_true)
    bound = np.asarray(res.residuals) / np.sqrt(2) + slack
    assert np.all(d[conv] <= bound[conv]), (d, bound, conv)


@pytest.mark.parametrize("num_distinct", [40, 80])
def test_clustered_null_space_is_certified(num_distinct):
    # A restarted Krylov basis of 80 holds fewer directions than there are small values here,
    # so the restarts stall (before: 1/5 in 3,970 products at num_distinct = 80, P = 400); the basis
    # grows and one cycle then resolves the whole small end.
    op, A, s_true = clustered(num_distinct)
    res = mtj.bottom_singular(op, 5, key=jax.random.key(0))
    assert bool(np.all(res.converged)), res.residuals
    # the five smallest are below the floor: certified only as within atol of zero
    floor = 100 * EPS64 * SIGMA1
    assert res.atol == pytest.approx(floor, rel=1e-6)
    assert bool(np.all(res.below_floor)) and res.status == mtj.Status.BELOW_RESOLUTION
    rec = res.accuracy()
    assert rec["status"] == "below_resolution" and rec["floor"] == res.atol
    assert rec["below_floor"] == [True] * 5
    # ... and still match the oracle to within the floor (the null space, not 1e-4 .. 4e-3)
    np.testing.assert_allclose(np.asarray(res.s), s_true[:5], rtol=0, atol=res.atol)
    assert_certified(res, A, s_true)
    # products scale with the number of distinct values, not with P (measured: 504 and 880,
    # verification included)
    assert res.num_products <= 12 * (num_distinct + 8), res.num_products


def test_without_growth_the_restarts_stall():
    # the cause of the old failure, kept as a check: a fixed basis of 80 does not resolve 88
    # small values within a budget that the growing basis needs a third of
    op, A, s_true = clustered(80)
    res = mtj.bottom_singular(
        op, 5, key=jax.random.key(0), max_basis=80, max_products=1200, verify=False
    )
    assert res.num_converged < 5 and res.status == mtj.Status.MAX_PRODUCTS
    assert_certified(res, A, s_true)


@pytest.mark.parametrize("extraction,verify", [("ritz", True), ("harmonic", False)])
def test_generic_matrix_vs_dense(extraction, verify):
    n = P  # the clustered tests' size: their compiled kernels are shared
    A = np.random.default_rng(3).standard_normal((n, n)) / np.sqrt(n)
    s_true = np.sort(np.linalg.svd(A, compute_uv=False))
    op = mtj.MatrixOperator(jnp.asarray(A))
    res = mtj.bottom_singular(op, 4, key=jax.random.key(1), extraction=extraction, verify=verify)
    assert res.status == mtj.Status.CONVERGED and bool(np.all(res.converged))
    assert not np.any(res.below_floor)
    np.testing.assert_allclose(np.asarray(res.s), s_true[:4], rtol=1e-8)
    assert_certified(res, A, s_true)


def test_harmonic_triplets_identities():
    # After a cycle (A V_m = U_m R, A^T U_m = V_{m+1} [R^T; beta e_m^T]) the SVD of
    # C = [R^T; D] gives u = U x, v = V_{m+1} y with A^T u = s v exactly, and
    # A v - s u = E y_ext with E = (I - U U^T) A v_{m+1}: one product for every residual.
    n, m = 60, 20
    A = matrix_with_spectrum(np.linspace(0.01, 3.0, n), seed=11)
    op = mtj.MatrixOperator(jnp.asarray(A))
    v0 = np.random.default_rng(0).standard_normal(n)
    Ut = jnp.zeros((m, n))
    Vt = jnp.zeros((m + 1, n)).at[0].set(v0 / np.linalg.norm(v0))
    R, D = jnp.zeros((m, m)), jnp.zeros((1, m))
    Ut, Vt, R, D, finite, _ = gkl_cycle_eager(op, Ut, Vt, R, D, 0, 1.0)
    assert finite
    X, S, Yh = harmonic_ritz(R, D)
    E, Q = residual_block(Ut, op.mv(Vt[m]), jax.random.key(0))
    U = np.asarray(Ut, np.float64).T @ X
    V = np.asarray(Vt, np.float64).T @ Yh
    np.testing.assert_allclose(A.T @ U, V * S, atol=1e-12)
    np.testing.assert_allclose(A @ V - U * S, np.outer(np.asarray(E), Yh[m]), atol=1e-12)
    # Q: orthonormal, orthogonal to U_m, spanning E
    Qn = np.asarray(Q)
    np.testing.assert_allclose(Qn.T @ Qn, np.eye(1), atol=1e-12)
    np.testing.assert_allclose(np.asarray(Ut) @ Qn, 0, atol=1e-12)
    En = np.asarray(E)
    np.testing.assert_allclose(np.abs(Qn[:, 0] @ En), np.linalg.norm(En), rtol=1e-12)
    # harmonic values bound the Ritz values from above (Cauchy-Schwarz) and the true ones too
    s_ritz = np.linalg.svd(np.asarray(R), compute_uv=False)
    assert np.all(S >= s_ritz - 1e-12) and S[-1] >= 0.01 - 1e-12


def test_harmonic_extraction_on_the_cluster():
    op, A, s_true = clustered(40)
    res = mtj.bottom_singular(op, 5, key=jax.random.key(2), extraction="harmonic")
    assert bool(np.all(res.converged)) and res.status == mtj.Status.BELOW_RESOLUTION
    np.testing.assert_allclose(np.asarray(res.s), s_true[:5], rtol=0, atol=res.atol)
    assert_certified(res, A, s_true)


def test_float32_values_below_the_floor_are_reported_as_such():
    # float32: floor 100 eps32 110 = 1.3e-3. The null space and the values up to ~1e-3 are
    # below it; whatever is flagged must be certified (an exact value within r / sqrt 2, up to
    # the products' rounding), and flagged values below the floor are marked and change the
    # status, never passed off as converged to relative accuracy.
    op, A, s_true = clustered(40, np.float32)
    res = mtj.bottom_singular(op, 5, key=jax.random.key(0), max_products=3000)
    eps32 = float(np.finfo(np.float32).eps)
    assert res.atol == pytest.approx(100 * eps32 * SIGMA1, rel=1e-3)
    assert_certified(res, A, s_true, slack=4 * eps32 * SIGMA1)
    below = np.asarray(res.below_floor)
    np.testing.assert_array_equal(below, np.asarray(res.s, np.float64) <= res.atol)
    assert below.any()
    if bool(np.all(res.converged)):
        assert res.status == mtj.Status.BELOW_RESOLUTION
    else:
        assert res.status == mtj.Status.MAX_PRODUCTS
    assert res.accuracy()["below_floor"] == [bool(b) for b in below]


def test_bad_bottom_options():
    op = mtj.MatrixOperator(jnp.diag(jnp.arange(1.0, 101.0)))
    with pytest.raises(ValueError, match="max_basis"):
        mtj.bottom_singular(op, 2, key=jax.random.key(0), num_basis=60, max_basis=40)
    with pytest.raises(ValueError, match="extraction"):
        mtj.bottom_singular(op, 2, key=jax.random.key(0), extraction="refined")
