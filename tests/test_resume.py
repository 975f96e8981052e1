"""Resume after a kill or Ctrl-C (issue 16, section 1) and progress (section 4).

A small float64 operator whose products go through a host callback (so they can be counted,
and slowed down in a subprocess that is killed), a reference run without interruption, and
runs stopped at a restart cycle / SLQ probe and resumed: identical numbers, at most one cycle
or probe of repeated work. Corrupt and foreign state folders raise clear errors; the command
line stops on SIGINT with exit 130 and one line, and continues with ``--resume``.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import matfree_tj as mtj
from matfree_tj import analysis
from matfree_tj.linalg import ResumeError, RunStore

P = 120
OPTS = dict(num_top=4, num_deflate=4, num_probes=4, num_steps=40)
TOP = {"tol": 1e-10, "num_basis": 14}  # keep = 9: restart cycles of 10 products
CYCLE = 2 * (14 - 9)

# The operator, also written into the subprocess's script (plus a sleep per product there).
OPERATOR = """
import numpy as np

def matrix(P):
    rng = np.random.default_rng(7)
    Q1, _ = np.linalg.qr(rng.normal(size=(P, P)))
    Q2, _ = np.linalg.qr(rng.normal(size=(P, P)))
    s = np.concatenate([np.linspace(2.0, 1.7, 12), np.linspace(0.92, 1.08, P - 40),
                        np.geomspace(0.8, 1e-3, 28)])
    return (Q1 * s) @ Q2.T

def make_operator(A, counter, delay=0.0, record=None):
    import time, jax, jax.numpy as jnp, matfree_tj as mtj

    def host(M):
        def f(v):
            counter[0] += 1
            if record:  # products begun, for a process that is killed
                with open(record, "w") as fh:
                    fh.write(str(counter[0]))
            if delay:
                time.sleep(delay)
            return M @ np.asarray(v)
        return f

    out = jax.ShapeDtypeStruct((A.shape[0],), jnp.float64)
    mv = lambda v: jax.pure_callback(host(A), out, v, vmap_method="sequential")
    rmv = lambda u: jax.pure_callback(host(A.T), out, u, vmap_method="sequential")
    return mtj.LinearOperator(mv, rmv, A.shape, jnp.float64)
"""
_ns: dict = {}
exec(OPERATOR, _ns)


@pytest.fixture(scope="module")
def problem(x64):
    counter = [0]
    op = _ns["make_operator"](_ns["matrix"](P), counter)
    return op, counter


def _summary(op, d, **kw):
    return analysis.spectrum_summary(
        op, key=jax.random.key(3), top_opts=TOP, resume_dir=d, **OPTS, **kw
    )


def _numbers(summ):
    d = summ.to_dict()
    d.pop("seconds")
    d["settings"].pop("top_seconds")
    return d


@pytest.fixture(scope="module")
def reference(problem, tmp_path_factory):
    """An uninterrupted run with a resume folder, and its products."""
    op, counter = problem
    d = tmp_path_factory.mktemp("ref")
    c0 = counter[0]
    summ = _summary(op, str(d))
    return summ, counter[0] - c0, d


def _stop_at(text):
    def progress(msg):
        if text in msg:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("where", ["cycle 2:", "SLQ: 2/4"])
def test_interrupted_and_resumed_is_identical(problem, reference, tmp_path, where):
    """Stopped (KeyboardInterrupt from the progress callback) after restart cycle 2's products
    (its restart not yet saved) or after probe 2's state was saved; the resumed run gives the
    same numbers bit for bit and repeats at most that cycle (plus the fingerprint product)."""
    op, counter = problem
    ref, n_ref, _ = reference
    c0 = counter[0]
    with pytest.raises(KeyboardInterrupt):
        _summary(op, str(tmp_path), progress=_stop_at(where))
    n_first = counter[0] - c0
    assert any(f.endswith(".state") for f in os.listdir(tmp_path))
    c0 = counter[0]
    lines = []
    again = _summary(op, str(tmp_path), progress=lines.append)
    n_again = counter[0] - c0
    assert _numbers(again) == _numbers(ref)
    assert np.array_equal(again.top_singular_values, ref.top_singular_values)
    repeated = n_first + n_again - n_ref
    assert 1 <= repeated <= (1 + CYCLE if where.startswith("cycle") else 1), repeated
    if where.startswith("SLQ"):
        assert any("finished before" in m for m in lines)  # the top stage is not rerun
        assert sum(m.startswith("SLQ: ") for m in lines) == 2  # probes 3 and 4 only


def test_resumed_finished_run_costs_only_the_fingerprint(problem, reference):
    op, counter = problem
    ref, _, d = reference
    c0 = counter[0]
    again = _summary(op, str(d))
    assert counter[0] - c0 == 1 and _numbers(again) == _numbers(ref)


def test_truncated_or_corrupt_state_is_an_error(problem, reference, tmp_path):
    op, _ = problem
    _, _, d = reference
    for damage in ("truncate", "flip"):
        folder = tmp_path / damage
        shutil.copytree(d, folder)
        victim = "top_lanczos-00.result.state"  # read first on resume
        data = (folder / victim).read_bytes()
        if damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data = data[:-10] + bytes([data[-10] ^ 1]) + data[-9:]
        (folder / victim).write_bytes(data)
        with pytest.raises(ResumeError) as e:
            _summary(op, str(folder))
        msg = str(e.value)
        assert victim in msg and "delete the folder" in msg
        assert ("truncated" if damage == "truncate" else "checksum") in msg
        # starting over works
        RunStore(folder, restart=True)
        assert not any(f.endswith(".state") for f in os.listdir(folder))


def test_another_run_in_the_folder_is_an_error(problem, reference, tmp_path):
    op, _ = problem
    _, _, d = reference
    shutil.copytree(d, tmp_path / "s")
    with pytest.raises(ResumeError, match=r"another run \(spectrum_summary: num_probes: 5 here"):
        analysis.spectrum_summary(
            op, key=jax.random.key(3), top_opts=TOP, resume_dir=str(tmp_path / "s"),
            **{**OPTS, "num_probes": 5},
        )  # fmt: skip
    with pytest.raises(ResumeError, match="key"):
        analysis.spectrum_summary(
            op, key=jax.random.key(4), top_opts=TOP, resume_dir=str(tmp_path / "s"), **OPTS
        )
    # same options, another operator: the fingerprint differs
    other = mtj.LinearOperator(lambda v: 2 * op.mv(v), lambda u: 2 * op.rmv(u), op.shape, op.dtype)
    with pytest.raises(ResumeError, match="operator_fingerprint"):
        _summary(other, str(tmp_path / "s"))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    with pytest.raises(ResumeError, match="not a run-state folder"):
        _summary(op, str(tmp_path / "t"))


KILLED = """
import sys, jax
jax.config.update("jax_enable_x64", True)
{operator}
import matfree_tj.analysis as an
op = make_operator(matrix({P}), [0], delay=0.01, record=sys.argv[2])
an.spectrum_summary(op, key=jax.random.key(3), top_opts={TOP}, resume_dir=sys.argv[1], **{OPTS})
"""


def _wait_for(predicate, proc, timeout=120):
    t = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.communicate()}")
        if time.monotonic() - t > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_kill_9_after_the_first_restart_then_resume(problem, reference, tmp_path):
    """SIGKILL a process running a spectrum (10 ms per product) once its first restart cycle is
    on disk; resume here: the numbers of the uninterrupted run, bit for bit; the kill lost at
    most one cycle of products (the killed run records every product it begins)."""
    op, counter = problem
    ref, n_ref, _ = reference
    script = tmp_path / "run.py"
    script.write_text(KILLED.format(operator=OPERATOR, P=P, TOP=repr(TOP), OPTS=repr(OPTS)))
    state, count = tmp_path / "state", tmp_path / "count"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(state), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = state / "top_lanczos-00.cycle.state"
    _wait_for(first.exists, proc)
    # then into the next cycle (the first cycle is 28 products, plus the fingerprint's one)
    _wait_for(lambda: count.exists() and int(count.read_text() or 0) >= 29 + 4, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    from matfree_tj.linalg._resume import _unpack

    _, record = _unpack(str(first), "")
    saved = record["data"]["num_products"]
    assert record["data"]["cycle"] >= 1
    begun = int(count.read_text())  # products the killed run began (fingerprint included)
    c0 = counter[0]
    again = _summary(op, str(state))
    n_again = counter[0] - c0
    assert _numbers(again) == _numbers(ref)
    # the resumed run redid nothing saved: the fingerprint and the products after the state
    assert n_again == 1 + n_ref - 1 - saved
    # work lost to the kill: products begun after the last saved state, at most one cycle
    assert 0 <= begun - 1 - saved <= CYCLE, (begun, saved)
    print(f"killed after {begun} products begun, {saved} saved; resumed: {n_again}")


TINY = """
import functools
import jax, jax.numpy as jnp, optax
import matfree_tj as mtj


@functools.cache  # the same train_fn on a second call: its compiled products are reused
def run(dtype=None):
    \"\"\"A tanh regression 6 -> 20 -> 1 (P = 140), 10 steps of full-batch GD.\"\"\"
    key = jax.random.key(0)
    X = jax.random.normal(key, (16, 6), dtype)
    y = jnp.sin(jnp.arange(16, dtype=dtype))

    def loss_fn(w, batch):
        Xb, yb = batch
        return 0.5 * jnp.mean((jnp.tanh(Xb @ w["a"]) @ w["b"] - yb) ** 2)

    params0 = {
        "a": jax.random.normal(jax.random.fold_in(key, 1), (6, 20), dtype) / 2,
        "b": jnp.ones((20,), dtype) / 4,
    }
    train_fn = mtj.make_train_fn(loss_fn, optax.sgd(0.2), mtj.full_batch_schedule((X, y), 10))
    return train_fn, params0
"""


def test_cli_ctrl_c_saves_and_resume_continues(x64, tmp_path, monkeypatch):
    """SIGINT to ``matfree-tj spectrum --resume DIR`` once a state file is on disk: exit 130,
    one line on stderr after the progress lines, no traceback, the state kept; the same command
    continues (here in-process) to the end; another command with the folder is refused."""
    import importlib

    from matfree_tj.app import cli

    (tmp_path / "tiny_resume.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    importlib.invalidate_caches()
    args = ["spectrum", "--problem", "tiny_resume:run", "--dtype", "float64", "--num-top", "3"]
    args += ["--num-probes", "4", "--num-steps", "60", "--no-plot"]
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "matfree_tj", *args, "--resume", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def saved():  # finished state files (not the temporaries of a write under way)
        names = os.listdir(state) if state.exists() else []
        return [f for f in names if f.endswith(".state") and not f.startswith(".")]

    _wait_for(saved, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == (
        f"matfree-tj: interrupted; progress is saved in {state}; run the same command to continue"
    )
    assert not out.strip()  # no results printed
    assert saved()
    try:
        rc = cli.main([*args, "--resume", str(state), "--json", "resumed.json", "--quiet"])
        assert rc == 0
        d = json.loads((tmp_path / "resumed.json").read_text())
        assert d["resume_dir"] == str(state) and len(d["run_id"]) == 12
        assert abs(sum(d["counts"].values()) - 140) < 1e-9  # per-probe counts sum to P
        # (that a resumed run equals an uninterrupted one is checked above, in the library)
        # a different command with the folder: a clear error, exit 1
        rc = cli.main([*args[:-3], "--num-steps", "50", "--no-plot", "--resume", str(state)])
        assert rc == 1
    finally:
        sys.modules.pop("tiny_resume", None)


def test_bottom_singular_resumes_identically(problem, tmp_path):
    """The bottom end uses the same hooks: stopped after cycle 1, resumed, identical (the
    module's operator and basis size: its kernels are compiled already)."""
    op, _ = problem
    kw = dict(key=jax.random.key(1), num_basis=14, max_products=200, verify=False)
    ref = mtj.bottom_singular(op, 2, **kw, checkpoint=RunStore(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        mtj.bottom_singular(
            op, 2, **kw, checkpoint=RunStore(tmp_path / "b"), progress=_stop_at("cycle 1:")
        )
    again = mtj.bottom_singular(op, 2, **kw, checkpoint=RunStore(tmp_path / "b"))
    assert ref.num_restarts >= 2 and again.num_products == ref.num_products
    for name in ("s", "U", "V", "residuals", "converged"):
        assert np.array_equal(np.asarray(getattr(again, name)), np.asarray(getattr(ref, name)))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_lines_and_quiet(monkeypatch):
    """On a terminal: a bar with count, rate and ETA that log lines clear and redraw over; not on
    a terminal: the lines only; quiet: nothing. (Our own bar: tqdm hidden.)"""
    from matfree_tj.app._progress import Progress

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm fails: the own bar
    term = _Terminal()
    p = Progress(stream=term)
    p.update("SLQ probes", 0, 10, "probes")
    time.sleep(0.02)
    p.update("SLQ probes", 4, 10, "probes")
    p("a line")
    p.close()
    text = term.getvalue()
    assert "[########............] SLQ probes: 4/10 probes" in text and "ETA 00:0" in text
    assert "\r\033[K[" in text and "] a line\n" in text
    plain = io.StringIO()
    p = Progress(stream=plain)
    p.update("SLQ probes", 4, 10, "probes")
    p("a line")
    assert plain.getvalue().endswith("] a line\n") and "SLQ" not in plain.getvalue()
    quiet = _Terminal()
    p = Progress(quiet=True, stream=quiet)
    p.update("x", 1, 2)
    p("a line")
    assert quiet.getvalue() == ""


def _strip_times(x):
    """A study's results without wall times and the machine record (the rest must match)."""
    if isinstance(x, dict):
        return {
            k: _strip_times(v)
            for k, v in x.items()
            if k not in ("environment",) and "seconds" not in k
        }
    if isinstance(x, list):
        return [_strip_times(v) for v in x]
    return x


def test_study_resumes_after_its_last_finished_experiment(x64, tmp_path):
    """A study killed after its fourth experiment (the later results' files removed, as if the
    process had died there) continues from the saved ones: the same results as the finished
    run, the first four experiments not run again; another study's folder is refused."""
    from matfree_tj.app._report import _json_default
    from matfree_tj.app.study import StudyConfig, run_study

    cfg = StudyConfig(quick=True, backend="matrix-free", num_seeds=2, dtype="float64")
    key = jax.random.key(3)
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = run_study(cfg, key=key, resume_dir=str(full_dir))
    shutil.copytree(full_dir, cut_dir)
    saved = sorted(f for f in os.listdir(cut_dir) if "experiment-" in f)
    assert len(saved) == 9  # 6 experiments, 2 data-vs-labels spectra, the seeds
    for f in saved[4:]:  # died during the fifth (restricted training)
        os.remove(cut_dir / f)
    lines = []
    resumed = run_study(cfg, key=key, resume_dir=str(cut_dir), progress=lines.append)
    text = "\n".join(lines)
    assert "1/8 spectrum" not in text and "4/8 in/out" not in text
    assert "5/8 restricted" in text and "8/8 bulk overlap" in text
    a = json.loads(json.dumps(_strip_times(full), default=_json_default))
    b = json.loads(json.dumps(_strip_times(resumed), default=_json_default))
    assert a == b
    other = StudyConfig(quick=True, backend="matrix-free", num_seeds=3, dtype="float64")
    with pytest.raises(ResumeError, match="another run"):
        run_study(other, key=key, resume_dir=str(full_dir))
