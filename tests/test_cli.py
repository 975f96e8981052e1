"""The ``matfree-tj`` command line: spectrum and study in --quick mode, and bad options."""

import json
import os
import subprocess
import sys

import jax
import pytest

from matfree_tj.app import cli


@pytest.fixture(scope="module", autouse=True)
def _x64(x64):  # the CLI runs float32 unless --dtype float64; restore whatever it changes
    yield


def test_help_via_python_m():
    r = subprocess.run(
        [sys.executable, "-m", "matfree_tj", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "spectrum" in r.stdout and "study" in r.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["spectrum", "--backend", "gpu"], "invalid choice"),
        (["spectrum", "--optimizer", "lbfgs"], "invalid choice"),
        (["spectrum", "--hidden", "0"], "positive integer"),
        (["spectrum", "--num-deflate", "-1"], "integer >= 0"),
        (["spectrum", "--cache", "sometimes"], "invalid choice"),
        (["spectrum", "--quick", "--lo", "1.5"], "--lo"),
        (["study", "--quick", "--num-seeds", "1"], "--num-seeds"),
        (["spectrum", "--quick", "--num-steps", "1"], "integer >= 2"),
        (["spectrum", "--quick", "--seed", "-1"], "integer >= 0"),
        (["spectrum", "--quick", "--num-steps", "100000", "--num-top", "2"], "num_steps <= P"),
        ([], "required"),
    ],
)
def test_bad_options_exit_nonzero_with_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code != 0
    assert message in capsys.readouterr().err


def test_unusable_output_paths_fail_before_any_compute(tmp_path, capsys, monkeypatch):
    from matfree_tj.app import study as _analysis_study

    def no_compute(*args, **kwargs):
        raise AssertionError("the output path should be refused before any compute")

    monkeypatch.setattr(_analysis_study, "build_model", no_compute)
    monkeypatch.setattr(_analysis_study, "run_study", no_compute)
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv, message in [
        (["spectrum", "--quick", "--out", str(afile)], "--out: cannot create the folder"),
        (["spectrum", "--quick", "--no-plot", "--json", str(tmp_path)], "is a folder"),
        (["spectrum", "--quick", "--json", str(afile / "x.json")], "--json: cannot create"),
        (["study", "--quick", "--out", str(afile / "sub")], "--out: cannot create the folder"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, argv


def _check_spectrum_json(path, backend):
    with open(path) as f:
        d = json.load(f)
    for key in (
        "num_params",
        "backend",
        "counts",
        "stderr",
        "top_singular_values",
        "seconds",
        "environment",
    ):
        assert key in d
    assert d["backend"] == backend and d["num_params"] == 610
    assert set(d["counts"]) == set(d["stderr"]) == {"chaotic", "bulk", "stable"}
    assert sum(d["counts"].values()) == pytest.approx(610, rel=1e-4)
    assert d["top_singular_values"] == sorted(d["top_singular_values"], reverse=True)
    return d


def test_spectrum_dense_quick(tmp_path, capsys):
    out, js = tmp_path / "out", tmp_path / "r.json"
    x64 = jax.config.jax_enable_x64
    rc = cli.main(
        [
            "spectrum",
            "--quick",
            "--backend",
            "dense",
            "--json",
            str(js),
            "--out",
            str(out),
            "--num-top",
            "5",
        ]
    )
    assert jax.config.jax_enable_x64 == x64
    assert rc == 0
    text = capsys.readouterr()
    assert "region" in text.out and "count" in text.out and "stderr" in text.out
    assert "materialising" in text.err  # progress on stderr
    d = _check_spectrum_json(js, "dense")
    assert all(v == 0 for v in d["stderr"].values()) and len(d["top_singular_values"]) == 5
    assert os.path.exists(out / "spectrum_dense.png")


def test_spectrum_matrix_free_quick_subprocess(tmp_path):
    js = tmp_path / "r.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "matfree_tj",
            "spectrum",
            "--quick",
            "--json",
            str(js),
            "--out",
            str(tmp_path),
            "--num-top",
            "3",
            "--num-deflate",
            "5",
            "--cache",
            "off",
            "--checkpoint",
            "step",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    d = _check_spectrum_json(js, "matrix-free")
    assert d["stderr"]["bulk"] > 0 and d["num_products"] > 0
    assert "chaotic" in r.stdout and "SLQ" in r.stderr
    assert "quadrature bounds" in r.stdout
    assert "quadrature check" in r.stdout and "lanczos (largest) cycle 0" in r.stderr
    assert d["products"] == {"cached": {"forward": False, "reverse": False}, "checkpoint": "step"}
    assert d["settings"]["num_deflated"] <= 5 and set(d["settings"]["step_change"]) == set(
        d["counts"]
    )
    for r, (lower, upper) in d["settings"]["quadrature_bounds"].items():
        assert lower <= d["counts"][r] <= upper


def test_study_dense_quick(tmp_path):
    out = tmp_path / "study"
    rc = cli.main(
        [
            "study",
            "--quick",
            "--backend",
            "dense",
            "--out",
            str(out),
            "--num-seeds",
            "2",
            "--num-eps",
            "6",
            "--quiet",
        ]
    )
    assert rc == 0
    with open(out / "study.json") as f:
        d = json.load(f)
    r = d["backends"]["dense"]
    for key in (
        "spectrum",
        "alignment",
        "perturbation",
        "ood",
        "restricted",
        "data_labels",
        "nullspace",
        "seeds",
    ):
        assert key in r
    assert len(r["perturbation"]["bulk"]["rows"]) == 6
    assert set(r["triplets"]) == {"top", "bottom", "moved"}  # the accuracy of what they stand on
    assert len(d["claims"]) == 10
    assert (out / "summary.md").read_text().count("|") > 20
    assert len([p for p in os.listdir(out) if p.endswith(".png")]) == 7


# --------------------------------------------------------------------------------------
# --problem: any model, built-in examples by name, float64, and checks before any compute
# --------------------------------------------------------------------------------------

TINY_MODULE = '''
import types

import jax
import jax.numpy as jnp
import optax

import matfree_tj as mtj


def _run(seed, dtype):
    """A tanh regression 6 -> 4 -> 1 (P = 28), 10 steps of full-batch GD."""
    key = jax.random.key(seed)
    X = jax.random.normal(key, (8, 6), dtype)
    y = jnp.sin(jnp.arange(8, dtype=dtype))

    def loss_fn(w, batch):
        Xb, yb = batch
        return 0.5 * jnp.mean((jnp.tanh(Xb @ w["a"]) @ w["b"] - yb) ** 2)

    params0 = {
        "a": jax.random.normal(jax.random.fold_in(key, 1), (6, 4), dtype) / 3,
        "b": jnp.ones((4,), dtype),
    }
    train_fn = mtj.make_train_fn(loss_fn, optax.sgd(0.1), mtj.full_batch_schedule((X, y), 10))
    return train_fn, params0


def as_object(seed=0, dtype=None):
    train_fn, params0 = _run(seed, dtype)
    return types.SimpleNamespace(train_fn=train_fn, params0=params0, config={"width": 4})


def as_tuple(dtype=None):
    return _run(0, dtype)


def as_tuple_float32():  # takes no dtype: --dtype float64 cannot be honoured
    return _run(0, jnp.float32)


def wrong():
    return {"train_fn": None}


def needs_argument(width):
    return _run(0, None)
'''


@pytest.fixture
def tiny_module(tmp_path, monkeypatch, request):
    """A module written into tmp_path (the current folder), as a user's own model would be."""
    import importlib

    name = f"tinymodel_{request.node.name.split('[')[0]}"
    (tmp_path / f"{name}.py").write_text(TINY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts the current folder first
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


def _dense_counts(train_fn, params0, lo=0.9, hi=1.1):
    """The exact region counts from jax.jacfwd of the flattened training run."""
    import numpy as np
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params0)
    s = np.linalg.svd(
        np.asarray(jax.jacfwd(lambda x: ravel_pytree(train_fn(unravel(x)))[0])(flat)),
        compute_uv=False,
    )
    return {
        "chaotic": int(np.sum(s > hi)),
        "bulk": int(np.sum((s >= lo) & (s <= hi))),
        "stable": int(np.sum(s < lo)),
    }


def test_problem_module_function(tiny_module, tmp_path, capsys):
    import importlib

    js = tmp_path / "r.json"
    spec = f"{tiny_module}:as_object"
    argv = ["spectrum", "--problem", spec, "--quick", "--backend", "dense", "--num-top", "3"]
    rc = cli.main([*argv, "--no-plot", "--json", str(js), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"training Jacobian of {spec}: P = 28" in out
    d = json.loads(js.read_text())
    assert d["num_params"] == 28 and d["problem"] == spec and d["model"]["width"] == 4
    run = importlib.import_module(tiny_module).as_object()
    assert d["counts"] == _dense_counts(run.train_fn, run.params0)
    assert len(d["top_singular_values"]) == 3


def test_problem_float64_end_to_end_subprocess(tiny_module, tmp_path):
    """--dtype float64 switches JAX to x64 before the problem is built: params, training and
    products in float64, reported in the JSON (a fresh process: no test fixture's x64)."""
    js = tmp_path / "r64.json"
    cmd = [sys.executable, "-m", "matfree_tj", "spectrum", "--problem", f"{tiny_module}:as_tuple"]
    r = subprocess.run(
        [*cmd, "--dtype", "float64", "--backend", "dense", "--num-top", "2", "--no-plot"]
        + ["--json", str(js)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "P = 28" in r.stdout and "dtype = float64" in r.stdout
    d = json.loads(js.read_text())
    assert d["dtype"] == "float64" and d["model"]["dtype"] == "float64"
    assert sum(d["counts"].values()) == 28


@pytest.mark.parametrize(
    "problem, message",
    [
        ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz'"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:wrong", "without .train_fn and .params0"),
        ("{mod}:needs_argument", "cannot call"),
        ("{mod}", "not a built-in example"),
        ("{mod}:", "expected MODULE:FUNCTION"),
    ],
)
def test_problem_errors_are_usage_errors(tiny_module, problem, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["spectrum", "--problem", problem.format(mod=tiny_module), "--no-plot"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err
    assert len(err.strip().splitlines()[-1]) > 0 and "Traceback" not in err


def test_problem_dtype_mismatch_and_digits_options(tiny_module, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(
            ["spectrum", "--problem", f"{tiny_module}:as_tuple_float32", "--dtype", "float64"]
            + ["--backend", "dense", "--no-plot", "--quiet"]
        )
    assert e.value.code == 2 and "give" in capsys.readouterr().err
    for extra in (["--hidden", "8"], ["--optimizer", "adam"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["spectrum", "--problem", f"{tiny_module}:as_tuple", *extra, "--no-plot"])
        assert e.value.code == 2 and "only apply to the digits MLP" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # study needs the digits MLP's variants
        cli.main(["study", "--problem", f"{tiny_module}:as_tuple", "--quick"])
    assert e.value.code == 2 and "matfree-tj spectrum --problem" in capsys.readouterr().err


def test_builtin_problems_by_name():
    from matfree_tj.app import examples

    parser = cli.build_parser()
    for name in ("lenet5_digits", "transformer", "digits_mlp"):
        args = parser.parse_args(["spectrum", "--problem", name])
        assert cli._load_problem(cli._problem_name(args), parser) is getattr(examples, name)
        args = parser.parse_args(["spectrum", "--problem", f"matfree_tj.examples:{name}"])
        assert cli._problem_name(args) == name


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--problem", "lenet5_digits"], "lenet5_digits: P=61706, T=50 steps"),
        (["--problem", "matfree_tj.examples:lenet5_digits", "--quick"], "P=61706, T=4 steps"),
        (["--problem", "transformer", "--quick"], "transformer: P=4071, T=20 steps"),
    ],
)
def test_builtin_problems_build_from_the_cli(argv, line, capsys, monkeypatch):
    """The CLI builds the named examples with their P (stopped before training: the quick
    transformer's training run is tested in test_examples.py)."""
    import matfree_tj.core

    class Stop(Exception):
        pass

    def stop(train_fn, params0, **kwargs):
        raise Stop

    monkeypatch.setattr(matfree_tj.core, "training_jacobian", stop)
    with pytest.raises(Stop):
        cli.main(["spectrum", *argv, "--no-plot"])
    assert line in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["spectrum", "--hi", "inf"], "finite"),
        (["spectrum", "--lo", "nan"], "finite"),
        (["spectrum", "--lo", "1", "--hi", "1"], "--lo < --hi"),
        (["spectrum", "--lo", "-0.1"], "--lo"),
        (["study", "--tol", "inf"], "finite"),
        (["study", "--tol", "0"], "--tol"),
        (["study", "--num-seeds", "1"], "--num-seeds"),
        (["spectrum", "--problem", "transformer", "--hidden", "8"], "digits MLP"),
        (["spectrum", "--num-top", "700", "--quick"], "--num-top"),
        (["spectrum", "--quick", "--max-products", "10"], "--max-products"),
        (["spectrum", "--problem", "lenet5_digits", "--num-steps", "70000"], "num_steps <= P"),
    ],
)
def test_all_options_checked_before_any_compute(argv, message, capsys, monkeypatch):
    """Options needing no model fail before it is built; those needing P (--num-top,
    --num-steps, --max-products) fail after it is built (no training) and before training."""
    import matfree_tj.core
    from matfree_tj.app import study as _analysis_study

    def no_compute(*args, **kwargs):
        raise AssertionError("a bad option should be refused before any compute")

    monkeypatch.setattr(_analysis_study, "run_study", no_compute)
    monkeypatch.setattr(matfree_tj.core, "training_jacobian", no_compute)
    needs_p = any(o in argv for o in ("--num-top", "--max-products", "--num-steps"))
    if not needs_p:
        monkeypatch.setattr(_analysis_study, "build_model", no_compute)
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--no-plot"] if argv[0] == "spectrum" else argv)
    assert e.value.code == 2 and message in capsys.readouterr().err, argv
