"""Shared test setup.

* Four simulated CPU devices (for the mesh-sharded block products), set before JAX starts.
* ``x64``: a fixture enabling float64 for accuracy tests and restoring the previous setting.
* Warnings are errors (``filterwarnings = error`` in pyproject.toml).
"""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
