"""matfree_tj.analysis: each analysis on a tiny model, against identities and the dense oracle.

Two fixtures keep compiles few: a linear-regression run whose training Jacobian is known in
closed form (exact region counts, symmetric J, linear training), and a tiny digits MLP.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import matfree_tj as mtj
from matfree_tj import analysis as an


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):
    yield


# Eigenvalues of Sigma giving, with eta=0.5 and T=10: 2 chaotic, 5 stable, 5 + 48 bulk values.
_LAM = np.array([4.3, 4.2, 0.5, 0.3, 0.1, 0.05, 0.03, 0.01, 0.005, 0.002, 0.001, 0.0005])


@pytest.fixture(scope="module")
def linreg():
    lr = mtj.examples.linear_regression(
        jax.random.key(0), 12, 60, eta=0.5, num_steps=10, eigenvalues=_LAM
    )
    J = mtj.training_jacobian(lr.train_fn, lr.params0)
    return lr, J


@pytest.fixture(scope="module")
def mlp():
    m = mtj.examples.digits_mlp(
        hidden=4, num_train=128, batch_size=32, num_epochs=2, dtype=jnp.float64
    )
    J = mtj.training_jacobian(m.train_fn, m.params0, check_deterministic=False)
    Jd = np.asarray(J.to_dense())
    return m, J, Jd, mtj.dense_svd(Jd, compute_vectors=True)


# ------------------------------------------------------------------------------ spectrum ---
def test_counts_from_values():
    s = np.array([3.0, 1.1, 1.05, 1.0, 0.95, 0.9, 0.5])
    assert an.counts_from_values(s) == {"chaotic": 1, "bulk": 5, "stable": 1}


def test_spectrum_summary_dense_is_exact(linreg):
    lr, J = linreg
    summ = an.spectrum_summary(J, key=jax.random.key(0), backend="dense", num_top=3)
    assert summ.counts == an.counts_from_values(lr.singular_values)
    assert summ.counts == {"chaotic": 2, "bulk": 53, "stable": 5}
    assert all(v == 0.0 for v in summ.stderr.values())
    assert summ.interval("bulk") == (53, 53)
    np.testing.assert_allclose(summ.top_singular_values, lr.singular_values[:3], rtol=1e-10)
    d = summ.to_dict()
    assert set(d) >= {"num_params", "backend", "counts", "stderr", "top_singular_values"}
    with pytest.raises(ValueError, match="lo <= 1 <= hi"):
        an.spectrum_summary(J, key=jax.random.key(0), backend="dense", lo=1.2)
    with pytest.raises(ValueError, match="backend"):
        an.spectrum_summary(J, key=jax.random.key(0), backend="gpu")


def test_spectrum_summary_matrix_free_agrees_with_oracle(linreg):
    lr, J = linreg
    lines = []
    summ = an.spectrum_summary(
        J, key=jax.random.key(1), num_top=2, num_probes=16, num_steps=40, progress=lines.append
    )
    assert any("SLQ counts: 16 probes x 40 steps" in x for x in lines), lines
    exact = an.counts_from_values(lr.singular_values)
    for r in an.REGIONS:  # a stochastic estimate, judged by its own standard error
        assert abs(summ.counts[r] - exact[r]) <= 4 * summ.stderr[r] + 1.0, (r, summ)
    assert sum(summ.counts.values()) == pytest.approx(60, rel=1e-6)
    np.testing.assert_allclose(summ.top_singular_values, lr.singular_values[:2], rtol=1e-8)
    assert summ.num_products > 0 and summ.singular_values is None
    # every top value carries its certificate, in the order of the values
    assert summ.settings["top_converged"] == [True, True]
    res = np.asarray(summ.settings["top_residuals"])
    assert np.all(res <= 1e-6 * summ.top_singular_values + 1e-9), res
    # the study's claim rows judge a count by the same 95% range, read back from the JSON dict
    from matfree_tj.app import _claims as st

    d = json.loads(json.dumps(summ.to_dict()))
    for r in an.REGIONS:
        x, se, rng = st._count(d, r)
        assert (x, se) == (summ.counts[r], summ.stderr[r])
        np.testing.assert_allclose(rng, summ.interval(r), rtol=1e-12)
        assert st._agree("count", (exact[r], 0.0, None), (x, se, rng)) == (
            rng[0] <= exact[r] <= rng[1]
        )
        outside = (rng[1] + 1.0, 0.0, None)  # just above the range: disagrees
        assert not st._agree("count", outside, (x, se, rng))


def test_spectrum_summary_marks_uncertified_top_values(linreg, capsys):
    """A top value whose residual misses the tolerance is reported as such (settings, JSON and
    the CLI line), never as a measured singular value."""
    from matfree_tj.app.cli import _print_top

    lr, J = linreg
    summ = an.spectrum_summary(
        J, key=jax.random.key(3), num_top=3, num_deflate=3, num_probes=2, num_steps=40,
        top_opts={"tol": 1e-16, "atol": 0.0, "max_products": 86, "verify": False},
    )  # fmt: skip
    conv, res = summ.settings["top_converged"], summ.settings["top_residuals"]
    assert len(conv) == len(res) == 3 and not all(conv)
    for s_i, c, r in zip(summ.top_singular_values, conv, res, strict=True):
        assert c == (r <= 1e-16 * s_i), (s_i, c, r)  # the flag is the residual test
    assert summ.settings["num_deflated"] == sum(conv)  # only certified values are deflated
    assert json.loads(json.dumps(summ.to_dict()))["settings"]["top_converged"] == conv
    _print_top(summ)
    out = capsys.readouterr().out
    assert f"({sum(conv)}/3 certified" in out and out.count("NOT certified") == 3 - sum(conv)


def test_spectrum_summary_product_budget(linreg):
    lr, J = linreg
    exact = an.counts_from_values(lr.singular_values)
    with pytest.warns(UserWarning, match="max_products=200 leaves"):
        summ = an.spectrum_summary(
            J,
            key=jax.random.key(2),
            num_top=2,
            num_deflate=2,
            num_probes=16,
            num_steps=40,
            max_products=200,
        )
    st = summ.settings
    assert st["budget_limited"] and summ.num_products <= 200
    assert st["top_products"] <= 100 and st["num_probes"] * st["num_steps"] * 2 <= 200
    for r in an.REGIONS:  # the guaranteed bounds hold for the budget-limited quadrature too
        lower, upper = st["quadrature_bounds"][r]
        assert lower <= summ.counts[r] <= upper
        assert lower - 4 * summ.stderr[r] - 1.0 <= exact[r] <= upper + 4 * summ.stderr[r] + 1.0
        z = stats.t.ppf(0.975, st["num_probes"] - 1)  # the stderr is itself estimated
        assert summ.interval(r) == pytest.approx(
            (max(lower - z * summ.stderr[r], 0.0), min(upper + z * summ.stderr[r], 60))
        )
    roomy = an.spectrum_summary(
        J,
        key=jax.random.key(2),
        num_top=2,
        num_deflate=2,
        num_probes=4,
        num_steps=20,
        max_products=10_000,
    )
    assert not roomy.settings["budget_limited"] and roomy.settings["num_steps"] == 20
    with pytest.raises(ValueError, match="max_products=20 is too small"):
        an.spectrum_summary(J, key=jax.random.key(2), num_top=2, num_deflate=2, max_products=20)


def test_auto_num_steps_resolves_the_bulk_interval():
    # node spacing pi sigma_max / (2 m) must fall below hi - lo
    m = an.auto_num_steps(15.0, 0.9, 1.1, 4810)
    assert np.pi * 15.0 / (2 * m) < 0.2 / 3 and m < 500
    assert an.auto_num_steps(1.2, 0.9, 1.1, 4810) == 80  # the floor
    assert an.auto_num_steps(1e3, 0.9, 1.1, 500) == 500  # at most the dimension


def test_compare_spectra_dense(linreg):
    _, J = linreg
    out = an.compare_spectra({"a": J, "b": J}, key=jax.random.key(0), backend="dense", num_top=2)
    assert set(out.summaries) == {"a", "b"}
    assert out.summaries["a"].counts == out.summaries["b"].counts
    # dense: one materialisation (P products) per run
    assert out.counts("bulk") == {"a": 53, "b": 53} and out.num_products == 2 * J.shape[0]


# ------------------------------------------------------------------------------ triplets ---
def test_triplets_dense_identities(mlp):
    _, J, Jd, svd = mlp
    top = an.singular_triplets(J, 5, which="top", backend="dense", dense=svd)
    bot = an.singular_triplets(J, 5, which="bottom", backend="dense", dense=Jd)
    assert top.U.shape == (J.shape[0], 5) and np.all(np.diff(top.s) <= 0)
    assert np.all(np.diff(bot.s) >= 0)
    for t in (top, bot):  # J v_i = s_i u_i
        np.testing.assert_allclose(Jd @ t.V, t.U * t.s, atol=1e-10)
    with pytest.raises(ValueError, match="needs backend='dense'"):
        an.singular_triplets(J, None, which="all")
    with pytest.raises(ValueError, match="explicit key"):
        an.singular_triplets(J, 3)


def test_triplets_and_moved_matrix_free_agree_with_dense(linreg):
    lr, J = linreg
    Jd = lr.dense()
    for which in ("top", "bottom"):
        mf = an.singular_triplets(J, 2, key=jax.random.key(2), which=which)
        de = an.singular_triplets(J, 2, which=which, backend="dense", dense=Jd)
        np.testing.assert_allclose(mf.s, de.s, rtol=1e-6)
        np.testing.assert_allclose(mf.V, de.V, atol=1e-6)  # same canonical signs
        np.testing.assert_allclose(mf.U, de.U, atol=1e-6)
        acc = json.loads(json.dumps(mf.accuracy()))  # the study's record of the triplets
        assert acc["status"] == "converged" and acc["converged"] == [True, True]
        assert acc["num_products"] == mf.num_products > 0
        # the residuals are the true ones: ||J v - s u|| and ||J^T u - s v|| together
        Ju = np.asarray(J.matmat(jnp.asarray(mf.V))) - mf.U * mf.s
        JTu = np.asarray(J.rmatmat(jnp.asarray(mf.U))) - mf.V * mf.s
        true = np.sqrt(np.sum(Ju**2, axis=0) + np.sum(JTu**2, axis=0))
        np.testing.assert_allclose(acc["residuals"], true, rtol=1e-3, atol=1e-12)
        # dense triplets are the same type; their residuals are the SVD's a-priori bound, which
        # the true residuals of the materialised matrix must respect
        dacc = de.accuracy()
        assert dacc["status"] == "converged" and dacc["converged"] == [True, True]
        assert de.method == "dense" and dacc["num_products"] == 0  # dense= was passed
        dtrue = np.sqrt(
            np.sum((Jd @ de.V - de.U * de.s) ** 2, axis=0)
            + np.sum((Jd.T @ de.U - de.V * de.s) ** 2, axis=0)
        )
        assert np.all(dtrue <= np.asarray(dacc["residuals"]))
    mf = an.moved_directions(J, 3, key=jax.random.key(3))
    de = an.moved_directions(J, 3, backend="dense", dense=Jd)
    np.testing.assert_allclose(mf.s, de.s, rtol=1e-6)
    # J - I has singular values |f_k - 1|: the moved directions are the eigenvectors of Sigma
    np.testing.assert_allclose(de.s, np.sort(np.abs(lr.factors - 1.0))[::-1][:3], rtol=1e-10)
    JmI_v = np.asarray(J.matmat(jnp.asarray(mf.V))) - mf.V
    np.testing.assert_allclose(JmI_v, mf.U * mf.s, atol=1e-7)


# ----------------------------------------------------------------------------- alignment ---
def test_alignment_symmetric_jacobian_is_one(linreg):
    lr, J = linreg  # plain GD: J = (I - eta Sigma)^T is symmetric positive here, so u_i = v_i
    tr = an.singular_triplets(J, None, which="all", backend="dense", dense=lr.dense())
    cos = an.alignment(tr)
    np.testing.assert_allclose(cos[:12], 1.0, atol=1e-8)  # the non-degenerate values
    summ = an.alignment_summary(tr.s, cos, windows=(10, 100), edge=2)
    assert set(summ.to_dict()) == {"closest_10", "top_2", "bottom_2"}
    assert summ.top == summ.to_dict()["top_2"] == pytest.approx(1)


def test_alignment_mlp_bounded(mlp):
    _, J, _, svd = mlp
    cos = an.alignment(an.singular_triplets(J, None, which="all", backend="dense", dense=svd))
    assert cos.shape == (J.shape[0],) and np.all(np.abs(cos) <= 1 + 1e-12)
    order = np.argsort(np.abs(svd.s - 1))
    assert np.mean(cos[order[:50]]) > 0.99  # the bulk: left and right vectors coincide


def test_random_bulk_basis_and_probe(linreg):
    lr, J = linreg  # J = I off the 12 eigenvectors of Sigma: the bulk is carried exactly
    moved = an.moved_directions(J, 12, backend="dense", dense=lr.dense())
    Q = an.random_bulk_basis(moved, 6, key=jax.random.key(0))
    np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(moved.V.T @ Q, 0.0, atol=1e-12)
    probe = an.bulk_alignment_probe(J, moved, key=jax.random.key(1), num_probes=3)
    np.testing.assert_allclose(probe.bulk.cos, 1.0, atol=1e-10)
    np.testing.assert_allclose(probe.bulk.gain, 1.0, atol=1e-10)
    assert probe.random.mean_cos < 1.0 - 1e-6 and probe.num_products == 6
    assert json.loads(json.dumps(probe.to_dict()))["random"]["mean_cos"] == probe.random.mean_cos
    with pytest.raises(ValueError, match="k <= P - m"):
        an.random_bulk_basis(moved, J.shape[0], key=jax.random.key(0))


# -------------------------------------------------------------------------- perturbation ---
def test_perturbation_linear_training_is_exactly_linear(linreg):
    lr, J = linreg  # GD on least squares: theta_T is affine in theta_0, for every eps
    tr = an.singular_triplets(J, 1, which="top", backend="dense", dense=lr.dense())
    out = an.perturbation_response(J, tr.V[:, 0], eps=np.logspace(-3, 3, 7))
    assert len(out.eps) == 7 and out.num_training_runs == 7
    assert out.sigma == pytest.approx(tr.s[0], rel=1e-10)
    for err, proj, expected in zip(
        out.linearisation_error, out.projection, out.expected, strict=True
    ):
        assert err < 1e-8
        assert proj == pytest.approx(expected, rel=1e-8)
    assert out.linear_up_to == pytest.approx(1e3)
    assert len(json.loads(json.dumps(out.to_dict()))["rows"]) == 7  # the study's JSON rows


def test_perturbation_mlp(mlp):
    m, J, _, svd = mlp
    v, u, s = svd.V[:, 0], svd.U[:, 0], float(svd.s[0])
    out = an.perturbation_response(J, v, u=u, sigma=s, eps=[1e-4, 1e-2, 1e2], test_loss=m.test_loss)
    assert out.linearisation_error[0] < 1e-3
    assert out.projection[0] == pytest.approx(1e-4 * s, rel=1e-3)
    assert out.remainder[0] < 1e-3 * 1e-4 * s
    assert np.isfinite(out.test_loss).all()
    assert [r["test_loss"] for r in out.to_dict()["rows"]] == list(out.test_loss)
    again = an.perturbation_response(J, -2 * v, eps=[1e-4])  # u, sigma computed from J v
    assert again.sigma == pytest.approx(s, rel=1e-10)
    assert again.projection[0] == pytest.approx(1e-4 * s, rel=1e-3)
    assert again.test_loss is None and "test_loss" not in again.to_dict()["rows"][0]
    with pytest.raises(ValueError, match="positive"):
        an.perturbation_response(J, v, eps=[-1.0])


# ------------------------------------------------------------------------ output effect ---
def test_output_sensitivity(mlp):
    m, J, _, svd = mlp
    inputs = an.ood_inputs(m.X_train, m.X_test, key=jax.random.key(0))
    np.testing.assert_allclose(inputs["inverted"], 1.0 - m.X_test)
    assert inputs["noise"].shape == m.X_test.shape
    D = svd.V[:, [0, 100, -1]]
    kl = an.output_sensitivity(m.apply, J, D, inputs)
    assert set(kl.max_kl) == {"train", "noise", "inverted"} and kl.divergence == "softmax"
    assert all(v.shape == (3,) and np.all(v >= -1e-12) for v in kl.max_kl.values())
    zero = an.output_sensitivity(m.apply, J, D, inputs, scale=0.0)
    assert all(np.all(np.abs(v) < 1e-14) for v in zero.max_kl.values())
    flat = an.output_sensitivity(m.apply, J.params_T_flat, 2 * D, inputs, unravel=J.unravel)
    # directions normalised
    np.testing.assert_allclose(flat.max_kl["train"], kl.max_kl["train"], rtol=1e-10)


def test_output_sensitivity_regression_outputs():
    # a linear regression model: outputs (N,) -> the Gaussian KL, max_x |x^T d|^2 / 2 exactly
    X = np.asarray(jax.random.normal(jax.random.key(0), (12, 4)))
    apply = lambda w, X: X @ w  # noqa: E731
    theta = jnp.asarray(np.arange(4.0))
    D = np.eye(4)[:, :2]
    kl = an.output_sensitivity(apply, theta, D, {"x": X}, scale=3.0, unravel=lambda t: t)
    assert kl.divergence == "gaussian" and kl.scale == 3.0
    np.testing.assert_allclose(
        kl.max_kl["x"], [np.max((3 * X[:, 0]) ** 2) / 2, np.max((3 * X[:, 1]) ** 2) / 2], rtol=1e-6
    )
    col = an.output_sensitivity(
        lambda w, X: (X @ w)[:, None], theta, D, {"x": X}, scale=3.0, unravel=lambda t: t
    )
    np.testing.assert_allclose(col.max_kl["x"], kl.max_kl["x"], rtol=1e-6)
    with pytest.raises(ValueError, match="divergence"):
        an.output_sensitivity(
            lambda w, X: jnp.ones((2, 3, 4)), theta, D, {"x": X}, unravel=lambda t: t
        )


# --------------------------------------------------------------------- restricted training ---
def test_restricted_training_full_rotation_is_unconstrained(mlp):
    m, J, _, _ = mlp
    P = J.shape[0]
    Q, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(0), (P, P))))
    out = an.restricted_training(J, {"rot": Q, "few": Q[:, :5]}, [5, P], eval_fn=m.test_loss)
    # SGD with momentum is rotation-equivariant: training c in theta_0 + Q c is plain training
    assert out.evals["rot"][1] == pytest.approx(out.unconstrained, rel=1e-9)
    assert np.isnan(out.evals["few"][1]) and np.isfinite(out.evals["few"][0])
    # k=5 runs zero-padded to width 8 in "rot" and unpadded in "few": the same training
    assert out.evals["rot"][0] == pytest.approx(out.evals["few"][0], rel=1e-12)
    assert list(out.ks) == [5, P] and np.isfinite(out.initial)
    assert out.progress_at(P)["rot"] == pytest.approx(1.0, rel=1e-6)  # all of the decrease
    assert out.to_dict()["rot"] == list(out.evals["rot"])


# ----------------------------------------------------------------------------- overlaps ---
def test_subspace_overlap_identities():
    P = 30
    Q, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(0), (P, P))))
    same = an.subspace_overlap(Q[:, :5], Q[:, :5] @ np.diag([2.0, 1, 1, 1, 1]))
    assert same.fraction == pytest.approx(1.0) and same.baseline == pytest.approx(5 / P)
    orth = an.subspace_overlap(Q[:, :5], Q[:, 5:12])
    assert orth.fraction == pytest.approx(0.0, abs=1e-12)
    # complement formula against explicit complements
    A, B = Q[:, :4], Q[:, 2:9] + 0.3 * Q[:, 10:17]
    Bo, _ = np.linalg.qr(B)
    Ac, Bc = Q[:, 4:], np.linalg.svd(np.eye(P) - Bo @ Bo.T)[0][:, : P - 7]
    implicit = an.subspace_overlap(A, B, complement=True)
    explicit = an.subspace_overlap(Ac, Bc)
    assert implicit.fraction == pytest.approx(explicit.fraction, rel=1e-10)
    assert (implicit.dim1, implicit.dim2) == (P - 4, P - 7)
    assert implicit.baseline == pytest.approx(explicit.baseline)


def test_function_jacobian_and_rowspace(mlp):
    m, J, _, _ = mlp
    X = m.X_test[:6]
    F = an.function_jacobian(m.apply, J, X)
    assert F.shape == (60, J.shape[0])
    v = np.asarray(jax.random.normal(jax.random.key(0), (J.shape[0],)))
    jvp = jax.jvp(
        lambda th: m.apply(J.unravel(th), X).reshape(-1), (J.params_T_flat,), (jnp.asarray(v),)
    )[1]
    np.testing.assert_allclose(F @ v, np.asarray(jvp), rtol=1e-10, atol=1e-12)
    s, R = an.function_rowspace(F)
    assert R.shape[1] <= 60 and np.allclose(R.T @ R, np.eye(R.shape[1]), atol=1e-10)
    null_part = v - R @ (R.T @ v)
    assert np.linalg.norm(F @ null_part) <= 1e-5 * np.linalg.norm(F @ v)


def test_bulk_nullspace_and_seed_overlap(mlp):
    m, J, Jd, _ = mlp
    moved = an.moved_directions(J, 12, backend="dense", dense=Jd)
    _, R = an.function_rowspace(an.function_jacobian(m.apply, J, m.X_test[:4]))
    out = an.bulk_nullspace_overlap(moved, R, [4, 12, 999])
    assert out.ks == (4, 12)  # sizes beyond the basis are skipped
    assert out.rowspace_dim == R.shape[1] and out.to_dict()["ks"] == [4, 12]
    for f, b in zip(out.fraction, out.baseline, strict=True):
        assert 0 <= f <= 1 + 1e-12 and 0 < b <= 1
    inside = an.bulk_nullspace_overlap(R[:, :5], R, [5])  # moved directions in the row space
    assert inside.moved_in_rowspace[0] == pytest.approx(1.0)
    assert inside.fraction[0] == pytest.approx(1.0)  # null(F) lies in the bulk
    seeds = an.seed_overlap([moved, moved.V, R[:, :12]])
    assert seeds.pairs == ((0, 1), (0, 2), (1, 2))
    assert seeds.to_dict()["pairs"] == [[0, 1], [0, 2], [1, 2]]  # the study's JSON
    assert seeds.fraction[0] == pytest.approx(1.0)
    assert seeds.basis_fraction[0] == pytest.approx(1.0)
    assert seeds.basis_baseline[0] == pytest.approx(12 / J.shape[0])
    assert seeds.mean("fraction") == pytest.approx(np.mean(seeds.fraction))
    assert seeds.to_dict()["mean_basis_baseline"] == seeds.mean("basis_baseline")
    with pytest.raises(ValueError, match="at least two"):
        an.seed_overlap([moved])
