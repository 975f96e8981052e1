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


# --------------------------------------------------------------------------------------
# The two architectures of matfree_tj.examples: LeNet-5 and the transformer
# --------------------------------------------------------------------------------------


def _num_params(tree):
    import jax
    import numpy as np

    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_lenet5_has_61706_parameters_and_maps_28x28_images_to_10_logits():
    """Abstractly (jax.eval_shape): no parameters are made and nothing is trained."""
    import jax
    import jax.numpy as jnp

    from matfree_tj.app.examples import lenet5_apply, lenet5_init

    params = jax.eval_shape(lambda: lenet5_init(jax.random.key(0)))
    # 6*25+6 + 16*6*25+16 + 400*120+120 + 120*84+84 + 84*10+10
    assert _num_params(params) == 61_706
    x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
    for pool in ("avg", "max"):
        logits = jax.eval_shape(lambda p, x, pool=pool: lenet5_apply(p, x, pool), params, x)
        assert logits.shape == (3, 10)


def test_transformer_parameter_count_at_the_defaults():
    import jax

    from matfree_tj.app.examples import transformer_init

    def count(p, d, L, s=3):  # (p + 1 + s) d + L (12 d^2 + 9 d) + 2 d + d p + p
        return (p + 1 + s) * d + L * (12 * d * d + 9 * d) + 2 * d + d * p + p

    params = jax.eval_shape(
        lambda: transformer_init(jax.random.key(0), 97, d_model=64, num_layers=2)
    )
    assert _num_params(params) == count(97, 64, 2) == 112_353


def test_transformer_quick_trains_and_its_jacobian_is_adjoint(x64, dropout=0.3):
    """float64 end to end: the quick transformer trains (test loss falls) and
    <u, J v> = <J^T u, v> to rounding (dropout masks are part of the run). One dropout rate
    (a 0.0 case cost another 41 s of CI for the one line that skips the masks; the key
    derivation itself is checked against a hand loop in test_train_options)."""
    import jax
    import jax.numpy as jnp

    import matfree_tj as mtj

    run = mtj.examples.transformer(quick=True, dtype=jnp.float64, dropout=dropout)
    assert run.num_params == 4071 and run.config["dtype"] == "float64"
    J = mtj.training_jacobian(run.train_fn, run.params0)
    assert J.dtype == jnp.float64
    assert run.test_loss(J.unravel(J.params_T_flat)) < run.test_loss(run.params0)
    ku, kv = jax.random.split(jax.random.key(0))
    u = jax.random.normal(ku, J.shape[:1], J.dtype)
    v = jax.random.normal(kv, J.shape[:1], J.dtype)
    lhs, rhs = jnp.vdot(u, J.mv(v)), jnp.vdot(J.rmv(u), v)
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
