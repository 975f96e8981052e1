"""Trajectory geometry: Bhattacharyya distances, InPCA (dense and matrix-free), ribbon widths.

Every check is against an independent computation: a plain NumPy implementation of the
definitions, or the closed form of the gaussian case (D_uv = |f_u - f_v|^2 / (8 sigma^2 N), so
W = Fc Fc^T / (8 sigma^2 N) with Fc the centred prediction matrix). float64 throughout.
"""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matfree_tj as mtj
from matfree_tj.trajectory import _distances

pytestmark = pytest.mark.usefixtures("x64")


# --------------------------------------------------------------------------------------
# Plain NumPy references
# --------------------------------------------------------------------------------------


def np_bhattacharyya(p, q):
    """D_uv = -(1/N) sum_n log sum_c sqrt(p_u q_v), pair by pair."""
    D = np.zeros((p.shape[0], q.shape[0]))
    for u in range(p.shape[0]):
        for v in range(q.shape[0]):
            D[u, v] = -np.mean(np.log(np.sum(np.sqrt(p[u] * q[v]), axis=-1)))
    return D


def np_inpca(D):
    m = D.shape[0]
    L = np.eye(m) - np.ones((m, m)) / m
    W = -0.5 * L @ D @ L
    lam, E = np.linalg.eigh(W)
    order = np.argsort(-np.abs(lam))
    return lam[order], E[:, order], W


def random_probs(rng, m, n, c, conc=1.0):
    return rng.dirichlet(conc * np.ones(c), size=(m, n))


def assert_same_vectors(E1, E2, tol):
    """Columns equal up to sign: |cos| = 1 within tol."""
    cos = np.abs(np.sum(E1 * E2, axis=0)) / (
        np.linalg.norm(E1, axis=0) * np.linalg.norm(E2, axis=0)
    )
    np.testing.assert_allclose(cos, 1.0, atol=tol)


# --------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 4, 9])
def test_categorical_matches_numpy(chunk_size):
    rng = np.random.default_rng(0)
    p = random_probs(rng, 7, 5, 4)
    D = np.asarray(mtj.bhattacharyya_distances(p, chunk_size=chunk_size))
    ref = np_bhattacharyya(p, p)
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(D, ref, rtol=1e-12, atol=1e-14)
    assert np.array_equal(D, D.T)  # exactly symmetric
    assert np.all(np.diag(D) == 0.0) and np.all(D >= 0)
    # the log-probability route gives the same numbers
    Dl = np.asarray(mtj.bhattacharyya_distances(np.log(p), log=True, chunk_size=chunk_size))
    np.testing.assert_allclose(Dl, ref, rtol=1e-12, atol=1e-14)


def test_cross_form_is_the_block_of_the_full_matrix():
    rng = np.random.default_rng(1)
    p, q = random_probs(rng, 6, 4, 3), random_probs(rng, 5, 4, 3)
    C = np.asarray(mtj.bhattacharyya_distances(p, q, chunk_size=4))
    np.testing.assert_allclose(C, np_bhattacharyya(p, q), rtol=1e-12, atol=1e-14)
    full = np.asarray(mtj.bhattacharyya_distances(np.concatenate([p, q])))
    np.testing.assert_allclose(C, full[:6, 6:], rtol=1e-12, atol=1e-14)
    Cl = np.asarray(mtj.bhattacharyya_distances(np.log(p), np.log(q), log=True))
    np.testing.assert_allclose(Cl, C, rtol=1e-12, atol=1e-14)


def test_gaussian_distances_and_compile_once():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(6, 5, 2))
    sigma = 0.7
    D = np.asarray(mtj.bhattacharyya_distances(f, kind="gaussian", sigma=sigma, chunk_size=4))
    diff = f[:, None] - f[None, :]
    ref = np.sum(diff**2, axis=(2, 3)) / (8 * sigma**2 * 5)
    np.testing.assert_allclose(D, ref, rtol=1e-12, atol=1e-15)
    before = _distances._matrix._cache_size()
    mtj.bhattacharyya_distances(f + 1.0, kind="gaussian", sigma=2.0, chunk_size=4)
    assert _distances._matrix._cache_size() == before  # same shapes: no new compile


def test_underflow_is_clamped_and_reported():
    # disjoint supports: the coefficient is exactly zero on the first input
    p = np.array([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])
    with pytest.warns(mtj.UnderflowWarning, match="1 of 2"):
        D = np.asarray(mtj.bhattacharyya_distances(p))
    tiny = np.finfo(np.float64).tiny
    np.testing.assert_allclose(D[0, 1], -np.log(tiny) / 2, rtol=1e-14)
    # log route: log-probabilities far below log(tiny) stay exact (log-sum-exp fallback)
    lp = np.array([[[0.0, -3000.0], [np.log(0.3), np.log(0.7)]], [[-2000.0, 0.0], [0, -4000]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Dl = np.asarray(mtj.bhattacharyya_distances(lp, log=True))
    ref = -0.5 * (np.logaddexp(-1000.0, -1500.0) + np.logaddexp(0.5 * np.log(0.3), -2000.0))
    np.testing.assert_allclose(Dl[0, 1], ref, rtol=1e-13)
    # exactly disjoint supports in log space: clamped and reported
    lp[1, 0] = [-np.inf, 0.0]
    lp[0, 0] = [0.0, -np.inf]
    with pytest.warns(mtj.UnderflowWarning):
        assert np.isfinite(np.asarray(mtj.bhattacharyya_distances(lp, log=True))).all()


def test_nearby_checkpoints_do_not_cancel():
    """Neighbouring checkpoints of a trajectory have BC = 1 - O(D): through 1 - BC the
    distances carry an absolute error ~eps (100% in float32 for D ~ 1e-8, 1e-7 relative in
    float64 for D ~ 1e-10). Through the squared Hellinger distance of differences the relative
    error is ~eps / |sqrt p_u - sqrt p_v| (a few 1e-4 in float32 here, 1e-12 in float64)."""
    rng = np.random.default_rng(7)
    m, n, c = 8, 6, 4
    z0, a, b = (rng.normal(size=(n, c)) for _ in range(3))
    t = np.linspace(0.0, 1.0, m)[:, None, None]
    z = z0 + 1e-2 * (t * a + np.sin(3 * t) * b)
    lp = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    s = np.exp(0.5 * lp)  # float64 reference: -mean log(1 - H^2)
    ref = -np.mean(np.log1p(-0.5 * np.sum((s[:, None] - s[None, :]) ** 2, -1)), -1)
    off = ~np.eye(m, dtype=bool)
    assert 1e-9 < ref[off].min() and ref.max() < 1e-4  # below float32's eps: 1 - BC is noise
    for dt, rtol in ((np.float32, 3e-3), (np.float64, 1e-9)):
        for D in (
            mtj.bhattacharyya_distances(np.exp(lp).astype(dt)),
            mtj.bhattacharyya_distances(lp.astype(dt), log=True, chunk_size=4),
            mtj.DistanceOperator.from_predictions(lp.astype(dt), log=True).to_dense(),
        ):
            D = np.asarray(D, np.float64)
            np.testing.assert_allclose(D[off], ref[off], rtol=rtol, atol=0)
    # identical models are at distance exactly 0 (not at BC's rounding, ~1e-17)
    same = mtj.bhattacharyya_distances(np.repeat(np.exp(lp[:1]), 3, axis=0))
    assert np.all(np.asarray(same) == 0.0)


def test_distance_operator_streams_the_matrix():
    rng = np.random.default_rng(3)
    p = random_probs(rng, 9, 4, 3)
    D = np.asarray(mtj.bhattacharyya_distances(p))
    op = mtj.DistanceOperator.from_predictions(np.log(p), log=True, chunk_size=16)
    V = rng.normal(size=(9, 3))
    np.testing.assert_allclose(np.asarray(op.matmat(jnp.asarray(V))), D @ V, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(op.mv(jnp.asarray(V[:, 0]))), D @ V[:, 0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(op.to_dense()), D, rtol=1e-12, atol=1e-15)
    r = D.mean(axis=1)
    g = r.mean()
    expect = np.sum((D - r[:, None] - r[None, :] + g) ** 2)
    np.testing.assert_allclose(op.centred_sq_norm(r, g), expect, rtol=1e-12)


# --------------------------------------------------------------------------------------
# InPCA
# --------------------------------------------------------------------------------------


def gd_predictions(rng, m=15, N=8, P=6, eta=0.05):
    """Predictions X w_t of a linear model along plain GD on least squares (numpy)."""
    X = rng.normal(size=(N, P))
    y = rng.normal(size=N)
    w = rng.normal(size=P)
    F = []
    for _ in range(m):
        F.append(X @ w)
        w = w - eta * X.T @ (X @ w - y) / N
    return np.array(F)


@pytest.mark.parametrize("which", ["random", "gd", "two outputs"])
def test_gaussian_closed_form(which):
    rng = np.random.default_rng(4)
    if which == "gd":
        F = gd_predictions(rng)
    else:
        F = rng.normal(size=(12, 9) if which == "random" else (12, 5, 2))
    m, N = F.shape[:2]  # N inputs (d outputs each): D sums |f_u(x) - f_v(x)|^2 over outputs
    sigma = 0.3
    D = mtj.bhattacharyya_distances(F, kind="gaussian", sigma=sigma)
    res = mtj.inpca(D, num_components=m)
    Fc = (F - F.mean(axis=0)).reshape(m, -1)
    G = Fc @ Fc.T / (8 * sigma**2 * N)
    lam = np.linalg.eigvalsh(G)
    lam = lam[np.argsort(-np.abs(lam))]
    np.testing.assert_allclose(res.eigenvalues, lam, atol=1e-10 * np.abs(lam).max())
    assert res.signature[1] == 0 or np.all(np.abs(res.eigenvalues[res.eigenvalues < 0]) < 1e-10)
    np.testing.assert_allclose(res.total_sq, np.sum(lam**2), rtol=1e-10)
    assert res.explained_stress[-1] == pytest.approx(1.0, abs=1e-10)


def test_categorical_inpca_matches_numpy_and_embeds():
    rng = np.random.default_rng(5)
    p = random_probs(rng, 10, 6, 4, conc=0.5)
    D = np.asarray(mtj.bhattacharyya_distances(p))
    k = 4
    res = mtj.inpca(D, num_components=k)
    lam, E, W = np_inpca(D)
    np.testing.assert_allclose(res.eigenvalues, lam[:k], atol=1e-12 * np.abs(lam).max())
    assert_same_vectors(res.eigenvectors, E[:, :k], 1e-10)
    np.testing.assert_allclose(
        np.abs(res.coords), np.abs(E[:, :k]) * np.sqrt(np.abs(lam[:k])), atol=1e-10
    )
    chi = 1 - np.sqrt(1 - np.cumsum(lam[:k] ** 2) / np.sum(lam**2))
    np.testing.assert_allclose(res.explained_stress, chi, atol=1e-12)
    assert res.signature == (int(np.sum(lam[:k] > 0)), int(np.sum(lam[:k] < 0)))
    assert res.converged.all() and res.status == "converged"
    # a reference point embeds at its own coordinates
    np.testing.assert_allclose(res.embed(D[[2, 7]]), res.coords[[2, 7]], atol=1e-12)
    np.testing.assert_allclose(res.embed(D[3]), res.coords[3], atol=1e-12)
    d = json.loads(json.dumps(res.to_dict(include_coords=True)))
    assert d["signature"] == list(res.signature) and len(d["eigenvalues"]) == k
    assert np.allclose(d["coords"], res.coords)
    assert json.loads(json.dumps(mtj.ribbon_widths(res).to_dict()))["total_from"] == "W"


def test_embed_new_point_in_the_span_reproduces_its_distances():
    # Euclidean D of points in R^3 (m = 8 > 4): a new point in their affine span, embedded with
    # the 3 nonzero components, sits at its true squared distances from every reference point
    rng = np.random.default_rng(6)
    F = rng.normal(size=(8, 3))
    D = mtj.bhattacharyya_distances(F, kind="gaussian", sigma=0.5)
    res = mtj.inpca(D, num_components=3)
    f_new = rng.normal(size=(2, 3))
    D_new = np.asarray(mtj.bhattacharyya_distances(f_new, F, kind="gaussian", sigma=0.5))
    y = res.embed(D_new)
    d2 = np.sum((y[:, None, :] - res.coords[None, :, :]) ** 2, axis=-1)
    np.testing.assert_allclose(d2, D_new, rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def big_gaussian(x64):
    """m = 2000 checkpoints' predictions of dimension 40 with geometrically decaying spread."""
    rng = np.random.default_rng(7)
    F = rng.normal(size=(2000, 40)) * 0.8 ** np.arange(40)
    D = mtj.bhattacharyya_distances(F, kind="gaussian", sigma=0.5)
    return D, mtj.inpca(D, num_components=6, method="dense")


def test_matrix_free_agrees_with_dense(big_gaussian):
    D, dense = big_gaussian
    free = mtj.inpca(D, num_components=6, method="lanczos", key=jax.random.key(0))
    assert free.method == "lanczos" and free.status == "converged" and free.converged.all()
    np.testing.assert_allclose(
        free.eigenvalues, dense.eigenvalues, rtol=1e-8, atol=1e-8 * abs(dense.eigenvalues[0])
    )
    assert_same_vectors(free.eigenvectors, dense.eigenvectors, 1e-8)
    np.testing.assert_allclose(free.total_sq, dense.total_sq, rtol=1e-12)
    np.testing.assert_allclose(free.explained_stress, dense.explained_stress, atol=1e-9)
    # the residual certificate holds against the dense eigenvalues
    assert np.all(np.abs(free.eigenvalues - dense.eigenvalues) <= free.residuals + 1e-12)
    assert free.num_products > 0


def trajectory_logp(m, n, c, seed):
    """Log-probabilities along a smooth curve of logits (a training-like trajectory): its
    Bhattacharyya geometry is non-Euclidean, with negative InPCA eigenvalues among the top."""
    rng = np.random.default_rng(seed)
    L0, L1, L2 = (3.0 * rng.normal(size=(n, c)) for _ in range(3))
    s = 1.0 - np.exp(-np.linspace(0.0, 5.0, m))[:, None, None]
    logits = L0 + s * (L1 - L0) + 0.3 * np.sin(3 * np.pi * s) * L2
    return logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))


def test_matrix_free_on_streamed_distances_with_negative_eigenvalues():
    lp = trajectory_logp(60, 8, 4, seed=1)
    op = mtj.DistanceOperator.from_predictions(lp, log=True)
    dense = mtj.inpca(np.asarray(mtj.bhattacharyya_distances(lp, log=True)), num_components=5)
    free = mtj.inpca(op, num_components=5, key=jax.random.key(1))
    assert free.method == "lanczos" and free.converged.all()
    np.testing.assert_allclose(
        free.eigenvalues, dense.eigenvalues, rtol=1e-8, atol=1e-10 * abs(dense.eigenvalues[0])
    )
    np.testing.assert_allclose(free.total_sq, dense.total_sq, rtol=1e-10)
    via_dense = mtj.inpca(op, num_components=5, method="dense")  # materialised once
    np.testing.assert_allclose(via_dense.eigenvalues, dense.eigenvalues, rtol=1e-12)
    # both ends of the spectrum: two of the top five are negative (time-like), found in one run
    assert dense.signature == (3, 2) and free.signature == dense.signature


# --------------------------------------------------------------------------------------
# Ribbon widths
# --------------------------------------------------------------------------------------


def test_ribbon_widths_fit_and_stress():
    rng = np.random.default_rng(9)
    lam = 3.0 * 0.6 ** (2 * np.arange(8)) * np.exp(rng.normal(scale=0.1, size=8))
    lam[[1, 4]] *= -1
    rw = mtj.ribbon_widths(lam)
    i = np.arange(8)
    coef, cov = np.polyfit(i, np.log(np.sqrt(np.abs(lam))), 1, cov="unscaled")
    resid = np.log(np.sqrt(np.abs(lam))) - np.polyval(coef, i)
    se = np.sqrt(cov[0, 0] * resid @ resid / 6)
    assert rw.log_slope == pytest.approx(coef[0], rel=1e-12)
    assert rw.log_slope_stderr == pytest.approx(se, rel=1e-10)
    assert rw.decay_ratio == pytest.approx(np.exp(coef[0]), rel=1e-12)
    assert abs(np.log(rw.decay_ratio) - np.log(0.6)) < 4 * rw.log_slope_stderr
    assert rw.fit_range == (0, 8) and rw.total_from == "eigenvalues"
    part = mtj.ribbon_widths(lam, fit_range=(2, 6))
    assert part.fit_range == (2, 6) and np.isfinite(part.log_slope_stderr)
    # from an InPCA result: the stress uses the exact ||W||_F^2
    rng2 = np.random.default_rng(10)
    D = np.asarray(mtj.bhattacharyya_distances(random_probs(rng2, 9, 4, 3)))
    res = mtj.inpca(D, num_components=4)
    rw2 = mtj.ribbon_widths(res)
    assert rw2.stress_2 == pytest.approx(res.explained_stress[1], abs=1e-14)
    assert rw2.stress_3 == pytest.approx(res.explained_stress[2], abs=1e-14)
    assert rw2.total_from == "W" and rw2.to_dict()["fit_range"] == [0, 4]


def test_rank_deficient_w_noise_is_neither_signed_nor_fitted():
    # Euclidean D of 12 points in R^3: W has rank 3, the other eigenvalues are rounding noise
    rng = np.random.default_rng(11)
    D = mtj.bhattacharyya_distances(rng.normal(size=(12, 3)), kind="gaussian", sigma=1.0)
    res = mtj.inpca(D, num_components=6)
    assert res.signature == (3, 0)
    assert np.all(np.abs(res.eigenvalues[3:]) <= res.residuals[3:] + res.atol)
    rw = mtj.ribbon_widths(res)
    assert rw.fit_range == (0, 3) and rw.stress_3 == pytest.approx(1.0, abs=1e-12)
    assert mtj.ribbon_widths([1.0, 0.25, 1e-17]).fit_range == (0, 2)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_bad_distance_inputs():
    p = np.full((3, 2, 4), 0.25)
    with pytest.raises(ValueError, match=r"\(m, N, C\)"):
        mtj.bhattacharyya_distances(p[0])
    with pytest.raises(ValueError, match="sum to 1"):
        mtj.bhattacharyya_distances(p * 1.1)
    with pytest.raises(ValueError, match=">= 0"):
        mtj.bhattacharyya_distances(np.array([[[1.5, -0.5]]]))
    with pytest.raises(ValueError, match="NaN"):
        mtj.bhattacharyya_distances(np.where(p == 0.25, np.nan, p))
    with pytest.raises(TypeError, match="floating"):
        mtj.bhattacharyya_distances(np.ones((2, 2, 1), dtype=np.int32))
    with pytest.raises(ValueError, match="<= 0"):
        mtj.bhattacharyya_distances(np.log(p) + 2.0, log=True)
    with pytest.raises(ValueError, match="same inputs"):
        mtj.bhattacharyya_distances(p, np.full((2, 3, 4), 0.25))
    with pytest.raises(TypeError, match="sigma="):
        mtj.bhattacharyya_distances(np.ones((3, 2)), kind="gaussian")
    with pytest.raises(ValueError, match="sigma must be"):
        mtj.bhattacharyya_distances(np.ones((3, 2)), kind="gaussian", sigma=-1.0)
    with pytest.raises(TypeError, match="option of kind='gaussian'"):
        mtj.bhattacharyya_distances(p, sigma=1.0)
    with pytest.raises(ValueError, match="kind must be"):
        mtj.bhattacharyya_distances(p, kind="poisson")
    with pytest.raises(ValueError, match="chunk_size"):
        mtj.bhattacharyya_distances(p, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size .* must be an integer"):
        mtj.bhattacharyya_distances(p, chunk_size=2.7)  # was truncated to 2 silently
    for bad in ("a", np.array([1.0, 2.0])):  # were float()'s own messages
        with pytest.raises(TypeError, match="sigma must be one number"):
            mtj.bhattacharyya_distances(np.ones((3, 2)), kind="gaussian", sigma=bad)


def test_bad_inpca_inputs():
    D = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.5], [2.0, 1.5, 0.0]])
    with pytest.raises(ValueError, match="square"):
        mtj.inpca(D[:2], num_components=1)
    with pytest.raises(ValueError, match=">= 0"):
        mtj.inpca(-D, num_components=1)
    with pytest.raises(ValueError, match="symmetric"):
        mtj.inpca(D + np.triu(D), num_components=1)
    with pytest.raises(ValueError, match="zero diagonal"):
        mtj.inpca(D + np.eye(3), num_components=1)
    with pytest.raises(ValueError, match="NaN"):
        mtj.inpca(np.where(D == 1.0, np.nan, D), num_components=1)
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        mtj.inpca(D, num_components=4)
    with pytest.raises(ValueError, match="1 <= k <= 2"):
        mtj.inpca(D, num_components=3, method="lanczos", key=jax.random.key(0))
    with pytest.raises(TypeError, match="key="):
        mtj.inpca(D, num_components=1, method="lanczos")
    with pytest.raises(ValueError, match="method must be"):
        mtj.inpca(D, num_components=1, method="arpack")
    res = mtj.inpca(D, num_components=2)
    with pytest.raises(ValueError, match=r"\(m_new, 3\)"):
        res.embed(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="only 1 of the 1"):
        mtj.ribbon_widths([1.0])
    with pytest.raises(ValueError, match="only 1 of the 3"):
        mtj.ribbon_widths([1.0, 1e-18, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        mtj.ribbon_widths([1.0, 0.5, 0.25], fit_range=(1, 2))
    with pytest.raises(ValueError, match="zero width"):
        mtj.ribbon_widths([1.0, 0.5, 0.0], fit_range=(0, 3))
