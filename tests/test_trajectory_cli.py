"""``matfree-tj trajectory``: a tiny digits run end to end, the Gaussian closed form through a
MODULE:FUNCTION problem, and bad options rejected before any training."""

import json
import os
import textwrap

import numpy as np
import pytest

from matfree_tj.app import cli


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):  # --dtype float64 turns x64 on; the fixture restores the previous setting
    yield


_PROBLEM = """
import jax, jax.numpy as jnp
import matfree_tj as mtj

def linear(seed=0, dtype=None):
    return mtj.examples.linear_regression(
        jax.random.key(seed), 6, 9, eta=0.5, num_steps=12, dtype=dtype
    )

def no_apply(seed=0):
    lin = linear(seed)
    return lin.train_fn, lin.params0

def stateful(seed=0, dtype=None):
    import types, optax
    lin = linear(seed, dtype)

    def loss(w, b, s):
        pred = b[0] @ w
        return 0.5 * jnp.mean((pred - s - b[1]) ** 2), 0.8 * s + 0.2 * jnp.mean(pred)

    batches = mtj.full_batch_schedule((lin.X, lin.y), 12)
    train = mtj.make_train_fn(loss, optax.sgd(0.5), batches, model_state=jnp.ones((), lin.X.dtype))
    return types.SimpleNamespace(
        train_fn=train, params0=lin.params0, apply=lambda w, x, s: x @ w - s,
        probe_inputs=lin.X, prediction_kind="gaussian", sigma=1.0,
    )
"""


@pytest.fixture
def problem_dir(tmp_path, monkeypatch):
    (tmp_path / "trajprob.py").write_text(textwrap.dedent(_PROBLEM))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_digits_quick(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["trajectory", "--quick", "--every", "2", "--num-components", "3", "--out", str(out)]
    assert cli.main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "explained stress" in printed.out and printed.err == ""
    doc = json.loads((out / "trajectory.json").read_text())
    assert doc["settings"]["steps"] == [0, 2, 4] and doc["settings"]["kind"] == "categorical"
    assert doc["settings"]["num_inputs"] == 197 and doc["settings"]["num_params"] == 610
    lam = np.array(doc["inpca"]["eigenvalues"])
    assert lam.shape == (3,) and np.all(np.diff(np.abs(lam)) <= 0)
    assert np.all(np.diff(doc["inpca"]["explained_stress"]) >= -1e-12)
    assert len(doc["ribbon"]["widths"]) == 3 and "decay_ratio" in doc["ribbon"]
    for name in ("embedding", "stress", "widths"):
        assert os.path.getsize(out / f"trajectory_{name}.png") > 0


def test_gaussian_closed_form(problem_dir, capsys):
    """InPCA eigenvalues of a GD trajectory of a linear model = eigenvalues of the centred
    Gram matrix of its predictions / (8 sigma^2 N), from the JSON the command writes."""
    import jax

    import matfree_tj as mtj

    argv = ["trajectory", "--problem", "trajprob:linear", "--dtype", "float64", "--every", "3"]
    assert cli.main([*argv, "--num-components", "5", "--out", "o", "--no-plot"]) == 0
    doc = json.loads((problem_dir / "o" / "trajectory.json").read_text())
    assert doc["settings"]["kind"] == "gaussian" and doc["settings"]["sigma"] == 1.0
    lin = mtj.examples.linear_regression(
        jax.random.key(0), 6, 9, eta=0.5, num_steps=12, dtype="float64"
    )
    X = np.asarray(lin.X)
    w = [np.asarray(lin.params0)]
    A = np.eye(9) - 0.5 * X.T @ X / 6
    w_star = np.linalg.lstsq(X, np.asarray(lin.y), rcond=None)[0]
    for t in (3, 6, 9, 12):
        w.append(w_star + np.linalg.matrix_power(A, t) @ (w[0] - w_star))
    F = np.stack(w) @ X.T  # (m, N) predictions
    Fc = F - F.mean(0)
    G = Fc @ Fc.T / (8 * 1.0**2 * X.shape[0])
    ev = np.linalg.eigvalsh(G)
    ev = ev[np.argsort(-np.abs(ev))]
    np.testing.assert_allclose(doc["inpca"]["eigenvalues"], ev, rtol=0, atol=1e-10)
    assert not os.path.exists(problem_dir / "o" / "trajectory_widths.png")  # --no-plot


def test_model_state_reaches_apply(problem_dir, capsys):
    """A run with model_state= and apply(params, x, state): each checkpoint's state is
    passed (it failed inside JAX with a missing argument)."""
    from trajprob import stateful

    import matfree_tj as mtj

    argv = ["trajectory", "--problem", "trajprob:stateful", "--dtype", "float64", "--every", "3"]
    assert cli.main([*argv, "--num-components", "4", "--out", "s", "--no-plot", "--quiet"]) == 0
    doc = json.loads((problem_dir / "s" / "trajectory.json").read_text())
    run = stateful(dtype="float64")
    traj = mtj.record_trajectory(run.train_fn, run.params0, every=3)
    F = np.asarray(
        mtj.trajectory_predictions(
            run.apply, traj, run.probe_inputs, output="raw", with_model_state=True
        )
    )
    assert np.ptp(np.asarray(traj.model_state)) > 0.1  # the state moves
    Fc = F - F.mean(0)
    ev = np.linalg.eigvalsh(Fc @ Fc.T / (8 * F.shape[1]))
    ev = ev[np.argsort(-np.abs(ev))][:4]
    np.testing.assert_allclose(doc["inpca"]["eigenvalues"], ev, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--every", "0"], "positive integer"),
        (["--quick", "--every", "5"], "--every must be <= T = 4"),
        (["--quick", "--every", "2", "--num-components", "4"], "--num-components must be <= 3"),
        (["--quick", "--num-inputs", "198"], "--num-inputs must be <= 197"),
        (["--quick", "--method", "svd"], "invalid choice"),
        (["--problem", "trajprob:no_apply"], ".apply"),
        (["--problem", "trajprob:linear", "--hidden", "4"], "only apply to the digits MLP"),
    ],
)
def test_bad_options(problem_dir, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["trajectory", *argv, "--out", "bad"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_resume_loads_predictions_and_distances(problem_dir, capsys):
    """--resume DIR: a second run with the same folder loads the checkpoints' predictions and
    the distances instead of training again, and writes the same results; another run's
    folder is refused."""
    argv = ["trajectory", "--problem", "trajprob:linear", "--dtype", "float64", "--every", "3"]
    argv += ["--num-components", "4", "--no-plot", "--resume", "state"]
    assert cli.main([*argv, "--out", "r1"]) == 0
    first = capsys.readouterr().err
    assert "one training run" in first and "loaded" not in first
    assert cli.main([*argv, "--out", "r2"]) == 0
    second = capsys.readouterr().err
    assert "predictions loaded" in second and "distances (5 x 5) loaded" in second
    assert "one training run" not in second
    a, b = (json.loads((problem_dir / d / "trajectory.json").read_text()) for d in ("r1", "r2"))
    assert a["inpca"] == b["inpca"] and a["ribbon"] == b["ribbon"]
    assert a["settings"] == b["settings"]
    other = ["trajectory", "--problem", "trajprob:linear", "--dtype", "float64", "--every", "4"]
    other += ["--num-components", "3", "--no-plot", "--resume", "state", "--out", "r3"]
    assert cli.main(other) == 1
    assert "another run" in capsys.readouterr().err
