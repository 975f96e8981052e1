"""The whole spectrum from the SLQ quadrature: sigma_i against i with its 95% band (issue 16 s5).

Checked against dense spectra: a matrix with prescribed chaotic / bulk / stable values and a
tiny training Jacobian; the band narrows with more probes and steps; the CLI draws it.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import matrix_with_spectrum

import matfree_tj as mtj
from matfree_tj.app import cli
from matfree_tj.linalg import SpectrumProfile, spectrum_profile
from matfree_tj.linalg._profile import _probe_grid

P = 300


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):  # float64 for the whole module (tests/conftest.py restores it)
    yield


@pytest.fixture(scope="module")
def known():
    """``(operator, sorted values, top-10 triplets)``: 20 chaotic values 12..1.2, 180 in the
    bulk within 0.05 of 1, 100 stable 0.85..1e-8 (log-spaced)."""
    rng = np.random.default_rng(0)
    s = np.concatenate(
        [
            np.geomspace(12.0, 1.2, 20),
            1.0 + 0.05 * np.tanh(rng.standard_normal(180)),
            np.geomspace(0.85, 1e-8, 100),
        ]
    )
    s = np.sort(s)[::-1]
    op = mtj.MatrixOperator(jnp.asarray(matrix_with_spectrum(s, seed=1)))
    top = mtj.top_singular(op, 10, key=jax.random.key(1))
    assert top.num_converged == 10
    return op, s, top


def _density(op, seed, probes, steps, deflate=None):
    return mtj.singular_value_density(
        op, key=jax.random.key(seed), num_probes=probes, num_steps=steps, deflate=deflate
    )


def _inside(prof, s, rtol=1e-12):
    v = s[prof.index - 1]
    return (v >= prof.lower * (1 - rtol)) & (v <= prof.upper * (1 + rtol))


@pytest.mark.parametrize("deflate", [False, True])
def test_band_holds_the_dense_spectrum(known, deflate):
    """At every index the dense sigma_i lies inside the pointwise 95% band (the band is the
    guaranteed quadrature bounds widened by t stderr: conservative), for several probe sets;
    the deflated values sit exactly at indices 1..10."""
    op, s, top = known
    every = np.arange(1, P + 1)
    shares = []
    for seed in (100, 101, 102):
        d = _density(op, seed, 10, 60, deflate=top if deflate else None)
        prof = spectrum_profile(d, index=every)
        assert np.array_equal(prof.index, every)
        assert np.all(prof.lower <= prof.estimate) and np.all(prof.estimate <= prof.upper)
        assert np.all(np.diff(prof.estimate) <= 1e-12) and np.all(np.diff(prof.lower) <= 0)
        shares.append(np.mean(_inside(prof, s)))
        if deflate:
            np.testing.assert_allclose(prof.top_values, s[:10], rtol=1e-10)
            np.testing.assert_array_equal(prof.estimate[:10], prof.top_values)
            np.testing.assert_array_equal(prof.lower[:10], prof.upper[:10])
        # the band says something: the bulk (indices 21..200, within 0.05 of 1) mostly inside
        # [0.9, 1.1], and a lower end above 0 for most indices
        bulk = slice(20, 200)
        assert np.mean((prof.lower[bulk] >= 0.9) & (prof.upper[bulk] <= 1.1)) > 0.8
        assert np.mean(prof.lower > 0) > 0.65
    assert min(shares) >= 0.95, shares


def test_band_narrows_with_probes_and_steps(known):
    op, s, _ = known

    def spread(probes, steps):
        prof = spectrum_profile(_density(op, 7, probes, steps), index=np.arange(1, P + 1))
        ok = prof.lower > 0
        width = np.median(np.log(prof.upper[ok] / prof.lower[ok]))
        return width, np.mean(ok), np.median(np.abs(prof.estimate - s) / s)

    w_small, ok_small, err_small = spread(4, 30)
    w_big, ok_big, err_big = spread(16, 120)
    assert w_big < 0.5 * w_small and ok_big > ok_small, (w_small, w_big, ok_small, ok_big)
    assert err_big < err_small


def test_grid_bounds_match_per_probe_cdf_bounds(known):
    """The vectorised bounds are SpectralDensity.per_probe_cdf_bounds at every point."""
    op, _, _ = known
    d = _density(op, 3, 3, 20)
    x = np.sort(np.concatenate([d.nodes[0, ::3], np.geomspace(1e-9, 20.0, 15)]))
    g_lo, g_hi, g_mid = _probe_grid(d.nodes, d.weights, x)
    for j, xj in enumerate(x):
        lower_cdf, upper_cdf = d.per_probe_cdf_bounds(float(xj))
        np.testing.assert_allclose(g_lo[:, j], 1 - upper_cdf, atol=1e-14)
        np.testing.assert_allclose(g_hi[:, j], 1 - lower_cdf, atol=1e-14)
    assert np.all(g_lo <= g_mid + 1e-14) and np.all(g_mid <= g_hi + 1e-14)


def test_default_grid_distance_rounding_and_record(known):
    op, s, top = known
    d = _density(op, 5, 6, 40, deflate=top)
    prof = spectrum_profile(d, boundaries=(0.9, 1.1), num_points=60, bottom=s[-3:])
    assert prof.index[0] == 1 and prof.index[-1] == P and prof.index.size < P
    assert {10, 11} <= set(prof.index.tolist())  # the deflated end and the next index
    np.testing.assert_array_equal(prof.bottom_index, [P, P - 1, P - 2])
    np.testing.assert_array_equal(prof.bottom_values, np.sort(s[-3:]))
    est, low, high = prof.distance_from_one()
    dist = np.abs(s[prof.index - 1] - 1)
    inside = _inside(prof, s)
    assert np.all((low[inside] <= dist[inside] + 1e-12) & (dist[inside] <= high[inside] + 1e-12))
    assert np.all(low[(prof.lower <= 1) & (prof.upper >= 1)] == 0)
    wide = spectrum_profile(d, num_points=60, rounding=1e-3)
    plain = spectrum_profile(d, num_points=60)
    np.testing.assert_allclose(wide.upper, plain.upper + 1e-3)
    np.testing.assert_allclose(wide.lower, np.maximum(plain.lower - 1e-3, 0))
    back = SpectrumProfile.from_dict(json.loads(json.dumps(prof.to_dict())))
    np.testing.assert_array_equal(back.upper, prof.upper)
    assert back.dim == P and back.level == 0.95


def test_bottom_values_enter_the_band(known):
    """Exact smallest values (1e-8 ...) are where the quadrature says nothing (band [0, x],
    estimate at the smallest node): given as bottom, the estimate and band hold them at
    P, P - 1, P - 2, every other lower end is at least the largest of them, and the dense
    spectrum still lies inside."""
    op, s, top = known
    d = _density(op, 5, 6, 40, deflate=top)
    every = np.arange(1, P + 1)
    plain = spectrum_profile(d, index=every)
    assert np.all(plain.lower[-3:] == 0) and np.all(plain.estimate[-3:] > 1e3 * s[-3:])
    prof = spectrum_profile(d, index=every, bottom=s[-3:])
    np.testing.assert_array_equal(prof.estimate[-3:], s[-3:])
    np.testing.assert_array_equal(prof.lower[-3:], s[-3:])
    np.testing.assert_array_equal(prof.upper[-3:], s[-3:])
    assert np.all(prof.lower[:-3] >= s[-3]) and np.all(prof.lower <= prof.upper)
    assert np.mean(_inside(prof, s)) >= np.mean(_inside(plain, s))
    with pytest.raises(ValueError, match="finite singular values >= 0"):
        spectrum_profile(d, bottom=[np.nan])
    with pytest.raises(TypeError, match="index must hold integers"):
        spectrum_profile(d, index=[2.5, 3])
    with pytest.raises(ValueError, match="boundaries must be finite"):
        spectrum_profile(d, boundaries=[np.nan])


def test_one_probe_band_makes_no_claim_and_bad_input(known):
    op, _, _ = known
    d = _density(op, 0, 1, 20)
    prof = spectrum_profile(d, num_points=20)
    assert np.all(prof.lower == 0) and np.all(prof.upper == pytest.approx(d.sigma_max))
    with pytest.raises(ValueError, match="0 < level < 1"):
        spectrum_profile(d, level=95)
    with pytest.raises(ValueError, match="indices in 1..300"):
        spectrum_profile(d, index=[0, 5])
    with pytest.raises(TypeError, match="SpectralDensity"):
        spectrum_profile(np.zeros(3))
    with pytest.raises(ValueError, match="rounding"):
        spectrum_profile(d, rounding=-1.0)


def test_training_jacobian_summary_profile_vs_dense():
    """spectrum_summary of a tiny training Jacobian (digits MLP 64 -> 3 -> 10, P = 235, 8 SGD
    steps: 11 chaotic, 207 bulk, 17 stable values) carries the profile; the dense sigma_i lie
    inside its band at the plotted indices, and its deflated values are the dense top ones."""
    m = mtj.examples.digits_mlp(hidden=3, num_train=128, num_epochs=4, dtype=jnp.float64)
    J = mtj.training_jacobian(m.train_fn, m.params0, check_deterministic=False)
    s = np.asarray(mtj.dense_svd(J).s)
    summ = mtj.analysis.spectrum_summary(
        J, key=jax.random.key(0), num_top=4, num_probes=6, num_steps=40, num_deflate=4
    )
    prof = summ.profile
    assert prof.dim == J.shape[0] == 235 and prof.num_probes == 6 and prof.num_steps == 40
    assert prof.top_values.size == summ.settings["num_deflated"] == 4
    assert prof.coverage(s) >= 0.95
    np.testing.assert_allclose(prof.top_values, s[:4], rtol=1e-8)
    assert summ.to_dict()["profile"]["index"] == prof.index.tolist()


TINY = """
import jax, jax.numpy as jnp, optax
import matfree_tj as mtj


def build(dtype=None):
    key = jax.random.key(0)
    X = jax.random.normal(key, (12, 6), dtype)
    y = jnp.sin(jnp.arange(12, dtype=dtype))

    def loss_fn(w, batch):
        Xb, yb = batch
        return 0.5 * jnp.mean((jnp.tanh(Xb @ w["a"]) @ w["b"] - yb) ** 2)

    params0 = {"a": jax.random.normal(key, (6, 6), dtype) / 3, "b": jnp.ones((6,), dtype)}
    train_fn = mtj.make_train_fn(loss_fn, optax.sgd(0.5), mtj.full_batch_schedule((X, y), 20))
    return train_fn, params0
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    (tmp_path / "tinyprofile.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield "tinyprofile:build"
    sys.modules.pop("tinyprofile", None)


def test_cli_draws_the_picture_with_dense_overlay(tiny, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    argv = ["spectrum", "--problem", tiny, "--num-top", "3", "--num-deflate", "3"]
    argv += ["--num-probes", "4", "--num-steps", "20", "--compare-dense", "--quiet"]
    rc = cli.main([*argv, "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dense check:" in out and "inside the 95% band" in out
    png = tmp_path / "o" / "spectrum_matrixfree.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["figure"] == str(png)
    prof = SpectrumProfile.from_dict(d["profile"])
    assert prof.dim == d["num_params"] == 42
    assert d["dense_check"]["inside_band"] == prof.coverage(d["dense_check"]["singular_values"])
    assert d["dense_check"]["inside_band"] >= 0.9
    # the study's way: redrawn from the JSON record, with bottom values (one not converged)
    from matfree_tj.app._figures import spectrum_figure, summary_from_dict

    summ = summary_from_dict(d)
    np.testing.assert_array_equal(summ.profile.upper, prof.upper)
    low, high = summ.interval("bulk")
    assert low <= d["counts"]["bulk"] <= high
    bottom = sorted(d["dense_check"]["singular_values"])[:2]
    path = spectrum_figure(
        summ, str(tmp_path / "again.png"), bottom=bottom, bottom_converged=[1, 0]
    )
    assert (tmp_path / "again.png").exists() and path.endswith("again.png")


def test_cli_without_matplotlib_skips_the_picture(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    argv = ["spectrum", "--problem", tiny, "--backend", "dense", "--num-top", "2", "--quiet"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    assert "no figure: matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "spectrum_dense.png").exists()


def test_cli_compare_dense_needs_matrix_free(capsys):
    with pytest.raises(SystemExit):
        cli.main(["spectrum", "--quick", "--backend", "dense", "--compare-dense"])
    assert "--compare-dense" in capsys.readouterr().err
