"""Every script in examples/ runs in its quick mode (so the examples cannot rot)."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))

# Arguments per script (default: --quick). reproduce_paper.py is a thin wrapper over
# `matfree-tj study`, whose quick run tests/test_cli.py already exercises end to end; here it
# only has to import and parse its options, which keeps CI inside its time budget.
ARGS = {"reproduce_paper.py": ["--help"]}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_quick(script, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script), *ARGS.get(script.name, ["--quick"])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
