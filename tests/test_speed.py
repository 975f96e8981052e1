"""Issue 15: block Krylov top-k that stops when converged, residuals checked in blocks, the
block size and the backend chosen from measured costs (float64, tiny sizes)."""

import importlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import DenseOperator, matrix_with_spectrum, true_residuals

import matfree_tj as mtj
from matfree_tj import analysis
from matfree_tj.linalg._lanczos import _BLOCK_PRODUCT_RATIO, choose_block_size

EPS64 = np.finfo(np.float64).eps


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):
    yield


@pytest.fixture(scope="module")
def decaying():
    """A 160 x 160 matrix whose spectrum decays like the reference MLP's top end."""
    s = np.concatenate([np.linspace(16.0, 10.0, 20), np.geomspace(9.0, 1e-3, 140)])
    A = matrix_with_spectrum(s, seed=3)
    return DenseOperator(jnp.asarray(A)), A, s


def test_block_cycle_stops_when_converged(decaying):
    """A block cycle ends at the block step where the wanted triplets converged, not at the
    end of its basis: fewer products than one full cycle, same certified accuracy."""
    op, A, s = decaying
    k, b, m = 6, 4, 120
    res = mtj.top_singular(op, k, key=jax.random.key(1), block_size=b, num_basis=m, tol=1e-9)
    assert res.status == "converged" and bool(np.all(res.converged))
    np.testing.assert_allclose(np.asarray(res.s), s[:k], rtol=1e-8)
    # the Lanczos part stopped before one full cycle (2m products); the rest is the residual
    # check (2 b ceil(k / b) columns) and the missed-value search
    assert res.num_restarts == 0
    assert res.num_products < 2 * m
    # the certified residuals are the true ones (recomputed here in float64)
    np.testing.assert_allclose(
        np.asarray(res.residuals), true_residuals(op, res, A), rtol=1e-6, atol=1e3 * EPS64 * 16
    )


def test_block_default_basis_and_keep(decaying):
    """Without num_basis, a block run gets a basis of several blocks (not the single-vector
    default rounded down, which left one new block per restart: 3,746 products at b = 32 on
    the reference spectrum against 542 single-vector)."""
    op, _, s = decaying
    res1 = mtj.top_singular(op, 8, key=jax.random.key(2), tol=1e-8)
    res8 = mtj.top_singular(op, 8, key=jax.random.key(2), tol=1e-8, block_size=8)
    for r in (res1, res8):
        assert bool(np.all(r.converged))
        np.testing.assert_allclose(np.asarray(r.s), s[:8], rtol=1e-7)
    # a block space costs more columns, but within the measured ratio's reach
    assert res8.num_products <= 4 * res1.num_products


def test_choose_block_size_counts_its_probes(decaying):
    op, _, s = decaying
    b, spent, why = choose_block_size(op, 5, probe=16)
    assert b in _BLOCK_PRODUCT_RATIO and b <= 16
    assert spent == 2 + 2 * 16 and "ms" in why
    res = mtj.top_singular(op, 5, key=jax.random.key(4), tol=1e-8, block_size="auto")
    np.testing.assert_allclose(np.asarray(res.s), s[:5], rtol=1e-7)
    assert bool(np.all(res.converged))
    with pytest.raises(ValueError, match="block_size"):
        mtj.top_singular(op, 5, key=jax.random.key(4), block_size="big")


def test_choose_backend_dense_when_tiny_matrix_free_when_it_cannot_fit():
    J = mtj.MatrixOperator(jnp.eye(30))
    backend, why = analysis.choose_backend(J, seconds_per_product=1e-3)
    assert backend == "dense" and "cheaper" in why and "fits in memory" in why
    backend, why = analysis.choose_backend(J, seconds_per_product=1e-3, memory_limit=10_000)
    assert backend == "matrix-free" and "would not fit in memory" in why
    # measured product time (no override): still dense at P = 30
    assert analysis.choose_backend(J)[0] == "dense"


def test_spectrum_summary_auto_reports_its_choice():
    A = matrix_with_spectrum(np.linspace(2.0, 0.1, 24), seed=5)
    summ = analysis.spectrum_summary(
        mtj.MatrixOperator(jnp.asarray(A)), key=jax.random.key(0), backend="auto", num_top=3
    )
    assert summ.backend == "dense"
    assert summ.settings["backend_choice"].startswith("backend='auto' chose dense")
    assert summ.counts == analysis.counts_from_values(np.linspace(2.0, 0.1, 24))


def test_cli_backend_auto_says_which_and_why(tmp_path, monkeypatch, capsys):
    from test_cli import TINY_MODULE

    from matfree_tj.app import cli

    name = "tinymodel_speed_auto"
    (tmp_path / f"{name}.py").write_text(TINY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    importlib.invalidate_caches()
    js = tmp_path / "r.json"
    try:
        argv = ["spectrum", "--problem", f"{name}:as_object", "--quick", "--backend", "auto"]
        rc = cli.main([*argv, "--num-top", "3", "--no-plot", "--json", str(js), "--quiet"])
    finally:
        sys.modules.pop(name, None)
    assert rc == 0
    out = capsys.readouterr().out
    assert "backend chosen by --backend auto: dense, because dense is expected" in out
    assert json.loads(js.read_text())["backend"] == "dense"


def test_gpu_suite_skips_cleanly_without_a_gpu(tmp_path):
    pytest.importorskip("benchmarks.gpu_suite")
    from benchmarks import gpu_suite

    if gpu_suite.gpu_available()[0]:
        pytest.skip("a GPU is present: the suite would run, not skip")
    payload = gpu_suite.run(out_dir=tmp_path)
    assert payload["skipped"] and "no GPU visible to JAX" in payload["why"]
    assert json.loads((tmp_path / "gpu.json").read_text())["skipped"] is True
