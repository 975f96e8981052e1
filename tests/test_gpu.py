"""GPU checks: products on the accelerator agree with the CPU. Skipped cleanly without a GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matfree_tj as mtj

try:
    GPUS = jax.devices("gpu")
except RuntimeError:
    GPUS = []

pytestmark = pytest.mark.skipif(
    not GPUS, reason="no GPU: these checks run only where CUDA is present"
)


def test_products_on_gpu_match_cpu():
    m = mtj.examples.digits_mlp(hidden=16, num_train=128, num_epochs=2)
    v = jax.random.normal(jax.random.key(0), (m.num_params,), jnp.float32)
    out = {}
    for dev in (jax.devices("cpu")[0], GPUS[0]):
        with jax.default_device(dev):
            J = mtj.training_jacobian(m.train_fn, jax.device_put(m.params0, dev))
            out[dev.platform] = (np.asarray(J.mv(v)), np.asarray(J.rmv(v)))
    for a, b in zip(out["cpu"], out["gpu"], strict=True):
        # float32 through ~50 steps: agreement to a few hundred ulps of the vector's scale
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())
