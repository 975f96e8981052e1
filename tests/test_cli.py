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
