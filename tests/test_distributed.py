"""Runs across processes (jax.distributed) and across the devices of one mesh.

* ``matfree-tj spectrum --coordinator ...``: two processes on localhost (CPU, gloo collectives,
  one device each) give the counts, standard errors, top values and products of one process
  with the same key; process 0 alone prints and writes.
* The SLQ probes split across a mesh (the four host devices of the test process) give the
  nodes and weights of the unsplit run.
* The command line checks its distributed options before any compute.

Tolerances. The runs differ only in how products are grouped: a block's columns and the
probes are split over devices, so each product can round differently in its last bits
(relative ~1e-16 in float64). Lanczos with full reorthogonalisation is backward stable, so
Ritz values move by O(eps ||A||) ~ 1e-15 here (||A|| = 7.6) and the quadrature weights, smooth
functions of the projected matrix, by O(eps ||A|| / gap) with gaps >= 0.3 between the problem's
singular values: ~1e-14. The tests allow 1e-9 (relative for values, absolute for counts out of
P = 16), far above rounding and far below any algorithmic difference (a different probe or
start vector changes the counts by about their stderr, 0.2).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import matfree_tj as mtj
from matfree_tj.app import cli

# P = 16 with distinct, well separated singular values |1 - eta lambda|^T (no repeated value,
# whose singular vectors would be defined only up to rounding).
PROBLEM = textwrap.dedent(
    """
    import jax, numpy as np
    import matfree_tj as mtj

    def problem(dtype=None):
        return mtj.examples.linear_regression(
            jax.random.key(0), 16, 16, eta=0.5, num_steps=5,
            eigenvalues=np.linspace(0.1, 5.0, 16), dtype=dtype,
        )
    """
)
ARGS = [
    "spectrum", "--problem", "distprob:problem", "--dtype", "float64", "--num-top", "3",
    "--num-probes", "4", "--num-steps", "16", "--num-deflate", "3", "--block-size", "2",
    "--no-plot",
]  # fmt: skip
ROOT = str(pathlib.Path(__file__).resolve().parents[1])  # this checkout, not an installed copy
TIMEOUT = 300  # seconds per run; a hung collective fails the test instead of hanging CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _collectives_off() -> str | None:
    impl = getattr(jax.config, "jax_cpu_collectives_implementation", None)
    if impl in (None, "", "none"):
        return (
            f"CPU collectives are unavailable in this JAX (jax_cpu_collectives_implementation="
            f"{impl!r}): a CPU run across processes needs gloo or MPI"
        )
    return None


def _start(extra, json_path, cwd):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",  # one device per process
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, "-m", "matfree_tj", *ARGS, "--json", str(json_path), *extra]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(procs):
    """Wait for every process (killing all on the first timeout); ``[(rc, out, err)]``."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.communicate()
        pytest.fail(f"a run did not finish within {TIMEOUT}s (a hung collective?)")
    return results


def test_two_processes_match_one(tmp_path):
    reason = _collectives_off()
    if reason:
        pytest.skip(reason)
    (tmp_path / "distprob.py").write_text(PROBLEM)
    port = _free_port()
    paths = [tmp_path / f"p{i}.json" for i in range(2)]
    coord = ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
    procs = [_start([*coord, "--process-id", str(i)], paths[i], tmp_path) for i in range(2)]
    procs.append(_start([], tmp_path / "single.json", tmp_path))  # the reference, one process
    results = _finish(procs)
    for i, (rc, out, err) in enumerate(results):
        assert rc == 0, f"process {i} failed:\n{out}\n{err}"

    # process 0 prints and writes; process 1 computes the same but writes and prints nothing
    assert "top singular values" in results[0][1]
    assert "top singular values" not in results[1][1] and "region" not in results[1][1]
    assert paths[0].exists() and not paths[1].exists()

    two = json.loads(paths[0].read_text())
    one = json.loads((tmp_path / "single.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert len(two["environment"]["devices"]) == 2  # one global mesh over both processes
    assert two["num_products"] == one["num_products"]
    np.testing.assert_allclose(two["top_singular_values"], one["top_singular_values"], rtol=1e-9)
    for what in ("counts", "stderr"):
        for region in ("chaotic", "bulk", "stable"):
            assert abs(two[what][region] - one[what][region]) <= 1e-9, (what, region)
    assert sum(two["counts"].values()) == pytest.approx(16, abs=1e-9)
    # the exact top values of the problem: |1 - eta lambda|^T for the largest lambdas
    lam = np.linspace(0.1, 5.0, 16)
    exact = np.sort(np.abs(1 - 0.5 * lam) ** 5)[::-1][:3]
    np.testing.assert_allclose(two["top_singular_values"], exact, rtol=1e-6)


def test_slq_probes_split_over_a_mesh(x64):
    """Five probes over the four host devices (padded to eight): the same nodes and weights
    as one device running them all."""
    lr = mtj.examples.linear_regression(
        jax.random.key(0), 12, 12, eta=0.5, num_steps=5, eigenvalues=np.linspace(0.1, 5.0, 12)
    )
    mesh = mtj.global_mesh()
    assert mesh.devices.size == jax.device_count() == 4
    J = mtj.training_jacobian(lr.train_fn, lr.params0)
    Jm = mtj.training_jacobian(lr.train_fn, lr.params0, mesh=mesh)
    kw = dict(key=jax.random.key(1), num_probes=5, num_steps=12, probe_batch=2)
    d = mtj.singular_value_density(J, **kw)
    dm = mtj.singular_value_density(Jm, **kw)
    assert dm.num_products == d.num_products == 2 * 12 * 5
    np.testing.assert_allclose(dm.nodes, d.nodes, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dm.weights, d.weights, rtol=1e-9, atol=1e-12)


def test_block_solvers_on_an_explicit_mesh(x64):
    """jax.make_mesh gives Explicit axes, whose arrays carry the mesh in their type; block
    products return plain arrays, so the randomized SVD (eager updates of its basis) and block
    Lanczos give the values they give without a mesh (the randomized SVD used to raise a
    ShardingTypeError here)."""
    A = np.diag(np.concatenate([[10.0, 6.0], np.linspace(0.1, 1.0, 18)]))
    plain = mtj.MatrixOperator(A)
    meshed = mtj.LinearOperator(
        lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype, mesh=jax.make_mesh((4,), ("d",))
    )
    key = jax.random.key(0)
    for kw in (dict(method="randomized"), dict(block_size=2)):
        s = mtj.top_singular(meshed, 2, key=key, tol=1e-8, **kw).s
        np.testing.assert_allclose(s, mtj.top_singular(plain, 2, key=key, tol=1e-8, **kw).s)
        np.testing.assert_allclose(s, [10.0, 6.0], rtol=1e-8)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--coordinator", "localhost"], "HOST:PORT"),
        (["--coordinator", "localhost:99999"], "HOST:PORT"),
        (["--coordinator", "localhost:1234"], "needs --num-processes N and --process-id I"),
        (["--num-processes", "2", "--process-id", "0"], "need --coordinator"),
        (
            ["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"],
            "0 <= I < --num-processes = 2",
        ),
        (["--coordinator", "auto", "--process-id", "1"], "detects"),
        (
            ["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "0"]
            + ["--backend", "dense"],
            "does not split across processes",
        ),
        (["--block-size", "0"], "--block-size"),
    ],
)
def test_distributed_options_checked_first(extra, message, capsys):
    """Bad options are usage errors before JAX is started or anything is built."""
    with pytest.raises(SystemExit) as e:
        cli.main(["spectrum", "--quick", "--no-plot", *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
