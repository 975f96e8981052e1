"""Stochastic Lanczos quadrature: densities, counts with standard errors, region counts."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import (
    DenseOperator,
    dense_operator,
    lr_operator,
    matrix_with_spectrum,
    small_mlp,
)

import matfree_tj as mtj
from matfree_tj.linalg._slq import _probes as _slq_probes


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):  # float64 for the whole module (tests/conftest.py restores it)
    yield


def exact_regions(s, lo=0.9, hi=1.1):
    s = np.asarray(s)
    return {
        "chaotic": np.sum(s > hi),
        "bulk": np.sum((s >= lo) & (s <= hi)),
        "stable": np.sum(s < lo),
    }


def check_regions(rc, exact, P):
    assert rc.chaotic + rc.bulk + rc.stable == pytest.approx(P, rel=1e-12)
    for name, true in exact.items():
        err = abs(rc[name] - true)
        assert err <= 3 * rc.stderr[name] + 1e-9 * P, (name, rc[name], true, rc.stderr[name])
        assert err <= 0.01 * P


def test_region_counts_linear_regression_20k(x64):
    lr, op = lr_operator(20_000, 60)
    P = op.shape[0]
    exact = exact_regions(lr.singular_values)
    rc = mtj.region_counts(op, key=jax.random.key(0), num_probes=10, num_steps=70)
    assert rc.method == "slq" and rc.num_products == 2 * 10 * 70
    check_regions(rc, exact, P)
    assert all(rc.stderr[name] > 0 for name in exact)
    json.dumps(rc.to_dict())
    # deflating the converged top-20 counts them exactly: the chaotic error bar shrinks
    top = mtj.top_singular(op, 20, key=jax.random.key(1))
    assert top.num_converged == 20
    rd = mtj.region_counts(op, key=jax.random.key(0), num_probes=10, num_steps=70, deflate=top)
    check_regions(rd, exact, P)
    assert rd.chaotic >= 20 and rd.stderr.chaotic < 0.7 * rc.stderr.chaotic


def test_region_counts_mlp_vs_dense(x64):
    J, Jd, s = small_mlp()
    P = J.shape[0]
    dense = mtj.region_counts(DenseOperator(Jd), method="dense")
    exact = exact_regions(s)
    for name, true in exact.items():
        assert dense[name] == true
        assert dense.stderr[name] == 0.0
    rc = mtj.region_counts(J, key=jax.random.key(1), num_probes=40, num_steps=40)
    for name in exact:
        assert abs(rc[name] - dense[name]) <= 0.01 * P, (name, rc[name], dense[name])
        assert abs(rc[name] - dense[name]) <= 3 * rc.stderr[name] + 1e-9 * P
    assert rc.to_dict()["stderr"]["bulk"] == rc.stderr.bulk


@pytest.fixture(scope="module")
def diag400(x64):
    # a spectrum with all three regions and gaps at the region edges
    s = np.concatenate(
        [np.linspace(0.0, 0.7, 100), np.linspace(0.95, 1.05, 250), np.linspace(1.3, 4.0, 50)]
    )
    rng = np.random.default_rng(0)
    Q1, _ = np.linalg.qr(rng.standard_normal((400, 400)))
    Q2, _ = np.linalg.qr(rng.standard_normal((400, 400)))
    return s, DenseOperator((Q1 * s) @ Q2.T)


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_counts_judged_by_their_standard_errors(diag400, probes):
    s, op = diag400
    exact = exact_regions(s)
    z = []
    for seed in range(6):
        d = mtj.singular_value_density(
            op, key=jax.random.key(seed), num_probes=8, num_steps=40, probes=probes
        )
        assert d.nodes.shape == (8, 40) and d.weights.shape == (8, 40)
        np.testing.assert_allclose(d.weights.sum(axis=1), 1.0, atol=1e-12)
        for (lo, hi), name in [((0.9, 1.1), "bulk"), ((1.1, np.inf), "chaotic")]:
            est, se = d.count(lo, hi)
            z.append((est - exact[name]) / se)
    z = np.asarray(z)
    assert np.all(np.abs(z) <= 4.0), z  # 24 t-statistics with 7 degrees of freedom
    assert abs(np.mean(z)) <= 3.0 / np.sqrt(z.size) * 1.5  # no bias beyond the noise


def test_density_integrates_to_P(diag400):
    s, op = diag400
    d = mtj.singular_value_density(op, key=jax.random.key(9), num_probes=4, num_steps=40)
    grid = np.linspace(-1.0, 6.0, 4001)
    rho = d.density(grid)
    assert np.all(rho >= 0)
    assert np.trapezoid(rho, grid) == pytest.approx(400, rel=1e-3)
    # nodes are singular values of the projected matrix: inside [0, sigma_max]
    assert d.nodes.min() >= -1e-12 and d.nodes.max() <= s.max() * (1 + 1e-10)
    assert d.num_products == 2 * 4 * 40


def test_half_step_quadrature_is_the_nested_truncation(diag400):
    # Lanczos is nested: the first m/2 steps of a run are a run of m/2 steps with the same
    # probes, so the free convergence check compares two genuine quadratures.
    _, op = diag400
    full = mtj.singular_value_density(op, key=jax.random.key(5), num_probes=3, num_steps=64)
    short = mtj.singular_value_density(op, key=jax.random.key(5), num_probes=3, num_steps=32)
    np.testing.assert_allclose(full.half.nodes, short.nodes, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(full.half.weights, short.weights, rtol=1e-6, atol=1e-10)
    rc = mtj.region_counts(op, key=jax.random.key(5), num_probes=3, num_steps=64)
    rc_short = mtj.region_counts(op, key=jax.random.key(5), num_probes=3, num_steps=32)
    for name in ("chaotic", "bulk", "stable"):
        assert rc.step_change[name] == pytest.approx(rc[name] - rc_short[name], abs=1e-6)
    assert rc.to_dict()["step_change"] == rc.step_change


def test_quadrature_bounds_hold_per_probe(x64):
    # Chebyshev-Markov-Stieltjes: each probe's exact spectral mass in a region lies within the
    # bounds built from its Gauss rule, for any number of steps (a theorem: only rounding may
    # violate it). A spectrum with values right at the region edges, so the bounds are tested
    # where they are tight and where they are loose.
    from matfree_tj.linalg._slq import _probes

    rng = np.random.default_rng(11)
    P = 400
    s = np.concatenate(
        [rng.uniform(0.0, 0.9, 100), rng.uniform(0.9, 1.1, 200), rng.uniform(1.1, 8.0, 100)]
    )
    Q1, _ = np.linalg.qr(rng.standard_normal((P, P)))
    Q2, _ = np.linalg.qr(rng.standard_normal((P, P)))
    op = DenseOperator((Q1 * s) @ Q2.T)
    key = jax.random.key(4)
    Z = np.asarray(_probes(key, 5, P, jnp.float64, "gaussian"))
    mass = (Z @ Q2) ** 2  # probe p's weight on right singular vector j (rows sum to 1)
    widths = []
    for m in (6, 40, 160):
        d = mtj.singular_value_density(op, key=key, num_probes=5, num_steps=m, probes="gaussian")
        for lo, hi, closed in (
            (1.1, np.inf, "neither"),
            (0.9, 1.1, "both"),
            (-np.inf, 0.9, "neither"),
            (0.5, 2.0, "left"),
        ):
            inside = (s >= lo) & (s <= hi) if closed == "both" else (s > lo) & (s < hi)
            if closed == "left":
                inside = (s >= lo) & (s < hi)
            true = P * mass @ inside
            lower, upper = d.per_probe_bounds(lo, hi, closed=closed)
            assert np.all(lower <= true + 1e-8 * P) and np.all(true <= upper + 1e-8 * P), (
                m,
                lo,
                hi,
                lower,
                true,
                upper,
            )
            est = d.per_probe_counts(lo, hi, closed=closed)
            assert np.all((lower <= est + 1e-9 * P) & (est <= upper + 1e-9 * P))
            if (lo, hi) == (0.9, 1.1):
                widths.append(np.mean(upper - lower))
    # the guarantee tightens once several nodes fall inside [0.9, 1.1] (node spacing
    # ~ pi sigma_max / (2 m) = 0.08 at m = 160): measured 347 -> 17 of the 200 values
    assert widths[2] < 0.2 * widths[0], widths
    rc = mtj.region_counts(op, key=key, num_probes=5, num_steps=160, probes="gaussian")
    for name in ("chaotic", "bulk", "stable"):
        lower, upper = rc.bounds[name]
        assert lower <= rc[name] <= upper
        lo2, hi2 = rc.interval(name)
        z = 2.7764451051977987  # Student-t 97.5% quantile, 4 degrees of freedom (5 probes)
        # each end: the larger of the estimate's stderr and that of its per-probe bound
        pl, pu = d_bounds = rc.bounds_stderr[name]
        assert all(x >= 0 for x in d_bounds)
        se_lo, se_hi = max(rc.stderr[name], pl), max(rc.stderr[name], pu)
        assert lo2 == pytest.approx(max(lower - z * se_lo, 0.0))
        assert hi2 == pytest.approx(min(upper + z * se_hi, P))
        assert rc.interval(name, z=2.0)[1] == pytest.approx(min(upper + 2 * se_hi, P))
    assert rc.to_dict()["bounds"]["bulk"] == list(rc.bounds["bulk"])


@pytest.mark.filterwarnings("ignore::matfree_tj.ResolutionWarning")  # m = 10 is unresolved
def test_quadrature_bounds_with_deflation_contain_exact_count(x64):
    # Diagonal operator, Rademacher probes: every probe's exact mass in a region is the
    # region's count / P, so the averaged bounds must contain the exact count itself; the
    # deflated values (counted exactly) shift both bounds by the same amount.
    s = np.concatenate(
        [
            np.linspace(0.01, 0.89, 90),
            np.linspace(0.9, 1.1, 200),
            np.linspace(1.11, 3.0, 100),
            np.linspace(6.0, 15.0, 10),
        ]
    )
    op = DenseOperator(np.diag(s))
    top = mtj.top_singular(op, 10, key=jax.random.key(2))
    assert top.num_converged == 10
    exact = exact_regions(s)
    for m in (10, 30):
        rc = mtj.region_counts(op, key=jax.random.key(3), num_probes=3, num_steps=m, deflate=top)
        for name, true in exact.items():
            lower, upper = rc.bounds[name]
            assert lower - 1e-8 <= true <= upper + 1e-8, (m, name, lower, true, upper)
    dense = mtj.region_counts(op, method="dense")
    assert dense.bounds is None and dense.interval("bulk") == (200.0, 200.0)


def test_too_few_steps_warns(diag400):
    _, op = diag400
    with pytest.warns(mtj.ResolutionWarning, match="num_steps >= "):
        mtj.region_counts(op, key=jax.random.key(0), num_probes=2, num_steps=5)
    d = mtj.singular_value_density(op, key=jax.random.key(0), num_probes=2, num_steps=5)
    with pytest.warns(mtj.ResolutionWarning):
        d.count(1.0, 1.01)


def test_zero_width_interval_warns_instead_of_dividing_by_zero(diag400):
    _, op = diag400
    d = mtj.singular_value_density(op, key=jax.random.key(0), num_probes=2, num_steps=20)
    with pytest.warns(mtj.ResolutionWarning, match="num_steps >= 400 .a complete Krylov"):
        count, _ = d.count(1.0, 1.0)
    assert 0.0 <= count <= 400.0


def test_interval_uses_the_spread_of_the_bounds_when_the_quadrature_cannot_resolve():
    # 200 of 400 values exactly 1, counted in [1 - 1e-6, 1 + 1e-6] with 80 steps: every probe's
    # estimate is 0 (stderr 0) while its guaranteed bounds spread; with these keys the mean
    # upper bound falls below the exact 200, so bounds +- the estimate's stderr missed it
    rng = np.random.default_rng(41)
    s = rng.uniform(0, 3, 400)
    s[:200] = 1.0
    op = dense_operator(matrix_with_spectrum(s, seed=43))
    t = 2.262157162  # two-sided 95% Student-t quantile, 9 degrees of freedom
    for k in (511, 514):
        with pytest.warns(mtj.ResolutionWarning):
            rc = mtj.region_counts(
                op, key=jax.random.key(k), lo=1 - 1e-6, hi=1 + 1e-6, num_probes=10, num_steps=80
            )
        assert rc.stderr.bulk == 0.0 and rc.bounds["bulk"][1] < 200 < rc.interval("bulk")[1]
        se_upper = rc.bounds_stderr["bulk"][1]
        assert rc.interval("bulk")[1] == pytest.approx(rc.bounds["bulk"][1] + t * se_upper)
        d = rc.to_dict()["bounds_stderr"]["bulk"]
        assert d[1] == pytest.approx(se_upper)


def test_small_svd_falls_back_to_qr_iteration(monkeypatch):
    from matfree_tj.linalg import _slq

    R = np.triu(np.random.default_rng(0).standard_normal((30, 30)))
    expected = np.linalg.svd(R, compute_uv=False)

    def failing(*args, **kwargs):  # what gesdd does on some graded matrices past breakdown
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(np.linalg, "svd", failing)
    X, S, Yt = _slq._small_svd(R)
    np.testing.assert_allclose(S, expected, rtol=1e-12)
    np.testing.assert_allclose((X * S) @ Yt, R, atol=1e-12)


def test_one_probe_interval_makes_no_claim(diag400):
    # one probe cannot estimate its own sampling error (stderr NaN): the 95% range must not
    # shrink to the quadrature bounds of that one probe, which miss the truth most of the time
    _, op = diag400
    rc = mtj.region_counts(op, key=jax.random.key(3), num_probes=1, num_steps=40)
    for name in ("chaotic", "bulk", "stable"):
        assert np.isnan(rc.stderr[name])
        assert rc.interval(name) == (0.0, 400.0)
    rc2 = mtj.region_counts(op, key=jax.random.key(3), num_probes=2, num_steps=40)
    t = 12.706204736  # two-sided 95% Student-t quantile, 1 degree of freedom
    for name in ("chaotic", "bulk", "stable"):
        lower, upper = rc2.bounds[name]
        se = rc2.stderr[name]
        se_lo, se_hi = (max(se, x) for x in rc2.bounds_stderr[name])
        expected = (max(lower - t * se_lo, 0.0), min(upper + t * se_hi, 400))
        np.testing.assert_allclose(rc2.interval(name), expected, rtol=1e-9)


def test_bad_input(diag400):
    _, op = diag400
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="2 <= num_steps <= P = 400, got num_steps=401"):
        mtj.singular_value_density(op, key=key, num_probes=2, num_steps=401)
    with pytest.raises(ValueError, match="num_steps"):
        mtj.singular_value_density(op, key=key, num_probes=2, num_steps=1)
    with pytest.raises(TypeError, match="key"):
        mtj.singular_value_density(op, num_probes=2, num_steps=10)
    with pytest.raises(ValueError, match="square"):
        mtj.region_counts(dense_operator(np.ones((5, 4))), key=key)
    with pytest.raises(ValueError, match="probes"):
        mtj.singular_value_density(op, key=key, num_probes=2, num_steps=10, probes="sobol")
    with pytest.raises(ValueError, match="lo <= hi"):
        mtj.region_counts(op, key=key, lo=1.2, hi=1.1)
    with pytest.raises(ValueError, match="method"):
        mtj.region_counts(op, key=key, method="kpm")
    A = jnp.eye(6)
    bad = mtj.LinearOperator(
        lambda v: A @ v * jnp.nan, lambda u: A @ u, (6, 6), A.dtype, check_finite=False
    )
    with pytest.raises(FloatingPointError):
        mtj.singular_value_density(bad, key=key, num_probes=2, num_steps=3)


def test_dense_region_counts_sum_to_P(diag400):
    s, op = diag400
    rc = mtj.region_counts(op, method="dense", lo=0.5, hi=2.0)
    assert rc.chaotic + rc.bulk + rc.stable == 400
    assert rc.bulk == np.sum((s >= 0.5) & (s <= 2.0))
    assert rc.stderr.to_dict() == {"chaotic": 0.0, "bulk": 0.0, "stable": 0.0}
    json.dumps(rc.to_dict())


def _aligned_matrix(P=60, seed=0):
    """A matrix whose values in [0.95, 1.05] have u_i = v_i exactly and whose other singular
    vectors are unrelated: returns (A, s, cos(u_i, v_i))."""
    rng = np.random.default_rng(seed)
    s = np.concatenate(
        [np.linspace(2.0, 5.0, 10), rng.uniform(0.95, 1.05, 30), np.linspace(0.01, 0.8, P - 40)]
    )
    U, _ = np.linalg.qr(rng.standard_normal((P, P)))
    B = U[:, 10:40]
    G = rng.standard_normal((P, P - 30))
    C, _ = np.linalg.qr(G - B @ (B.T @ G))  # orthonormal complement of the aligned block
    V = np.concatenate([C[:, :10], B, C[:, 10:]], axis=1)
    return (U * s) @ V.T, s, np.sum(U * V, axis=0)


def test_alignment_quadrature_exact_with_a_complete_krylov_space(x64):
    # With m = P steps the Krylov space is complete: each probe's alignment sum equals
    # P q^T (U_g V_g^T) q exactly, g the indicator of the interval.
    A, s, _ = _aligned_matrix()
    P = A.shape[0]
    d = mtj.singular_value_density(
        DenseOperator(A), key=jax.random.key(3), num_probes=5, num_steps=P
    )
    Z = np.asarray(_slq_probes(jax.random.key(3), 5, P, jnp.float64, "rademacher"))
    U, sv, Vt = np.linalg.svd(A)
    for lo, hi in [(0.9, 1.1), (1.1, np.inf), (-np.inf, 0.9), (0.5, 2.5)]:
        g = (sv >= lo) & (sv <= hi)
        exact = P * np.einsum("pi,ij,pj->p", Z, (U[:, g] @ Vt[g]), Z)
        np.testing.assert_allclose(d.per_probe_alignment_sums(lo, hi), exact, atol=1e-10)


def test_alignment_judged_by_its_standard_errors(x64):
    A, s, cos = _aligned_matrix(seed=1)
    op = DenseOperator(A)
    z = []
    for seed in range(5):
        rc = mtj.region_counts(op, key=jax.random.key(seed), num_probes=12, num_steps=48)
        for name, (a, b) in {"chaotic": (1.1, np.inf), "stable": (-np.inf, 0.9)}.items():
            g = (s > a) & (s < b)
            est, se = rc.alignment[name]
            z.append((est - cos[g].mean()) / se)
        # exactly aligned vectors: every probe's ratio is 1, up to the quadrature's leakage
        assert rc.alignment["bulk"][0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.abs(z) <= 4.5), z  # jackknife t-statistics, 11 degrees of freedom
    assert rc.to_dict()["alignment"]["bulk"][0] == rc.alignment["bulk"][0]


def test_alignment_with_deflation_counts_deflated_cosines_exactly(x64):
    A, s, cos = _aligned_matrix(seed=2)
    op = DenseOperator(A)
    top = mtj.top_singular(op, 10, key=jax.random.key(0), tol=1e-10)
    assert top.num_converged == 10
    d = mtj.singular_value_density(
        op, key=jax.random.key(1), num_probes=6, num_steps=30, deflate=top
    )
    U, V = np.asarray(top.U), np.asarray(top.V)
    np.testing.assert_allclose(np.sort(d.deflated_cos), np.sort(np.sum(U * V, axis=0)), atol=1e-12)
    # the chaotic region holds only the deflated values: its mean cosine is exact
    est, se = d.alignment(1.1, np.inf, closed="neither")
    assert est == pytest.approx(cos[:10].mean(), abs=1e-8)
