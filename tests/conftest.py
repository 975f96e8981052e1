"""Shared test setup.

* Four simulated CPU devices: set in the checkout's root ``conftest.py`` (it also covers the
  package's doctests), before JAX starts.
* ``x64``: a fixture enabling float64 for accuracy tests and restoring the previous setting.
* Warnings are errors (``filterwarnings = error`` in pyproject.toml).
"""

import jax
import pytest


@pytest.fixture(scope="module")
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
