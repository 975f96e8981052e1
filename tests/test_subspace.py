"""Principal cosines and projections (float64, exact identities)."""

import jax.numpy as jnp
import numpy as np
import pytest

import matfree_tj as mtj


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):  # float64 for the whole module (tests/conftest.py restores it)
    yield


def test_principal_cosines_known_angles():
    rng = np.random.default_rng(0)
    P = 50
    Q, _ = np.linalg.qr(rng.standard_normal((P, 6)))
    angles = np.array([0.0, 0.3, 1.0])
    A = Q[:, :3]
    B = np.cos(angles) * Q[:, :3] + np.sin(angles) * Q[:, 3:6]
    # any other basis of the same spaces gives the same cosines
    A2 = A @ rng.standard_normal((3, 3))
    B2 = B @ rng.standard_normal((3, 3))
    c = np.asarray(mtj.principal_cosines(A2, B2))
    np.testing.assert_allclose(c, np.cos(angles), atol=1e-12)
    assert np.all(np.diff(c) <= 0)


def test_principal_cosines_shapes_and_bounds():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((40, 5))
    c = np.asarray(mtj.principal_cosines(A, A[:, :2]))
    np.testing.assert_allclose(c, [1.0, 1.0], atol=1e-12)
    c = np.asarray(mtj.principal_cosines(A, rng.standard_normal((40, 7))))
    assert c.shape == (5,) and np.all((c >= 0) & (c <= 1))
    with pytest.raises(ValueError, match="rows"):
        mtj.principal_cosines(A, rng.standard_normal((39, 2)))
    with pytest.raises(ValueError, match="matrix"):
        mtj.principal_cosines(A[:, 0], A)


def test_projections():
    rng = np.random.default_rng(2)
    basis = jnp.asarray(rng.standard_normal((30, 4)))
    x = jnp.asarray(rng.standard_normal(30))
    on = mtj.project_onto(x, basis)
    off = mtj.project_off(x, basis)
    np.testing.assert_allclose(np.asarray(on + off), np.asarray(x), atol=1e-12)
    np.testing.assert_allclose(np.asarray(basis.T @ off), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(mtj.project_onto(on, basis)), np.asarray(on), atol=1e-12)
    X = jnp.asarray(rng.standard_normal((30, 3)))
    assert mtj.project_off(X, basis).shape == (30, 3)
    with pytest.raises(ValueError, match="rows"):
        mtj.project_onto(x[:10], basis)
