"""Pytest setup for the whole checkout: the test suite and the package's doctests.

``python -m pytest`` collects ``tests/`` and the docstring examples of ``matfree_tj``
(``--doctest-modules``, see ``[tool.pytest.ini_options]`` in pyproject.toml); this file sits
above both, so what must happen before JAX is imported happens here, once, for either:

* four simulated CPU devices (``XLA_FLAGS``; the mesh-sharded block products need them),
  set before any test module or package module imports JAX.

Warnings are errors (``filterwarnings = error``) and doctest output is compared with the
``NUMBER`` and ``NORMALIZE_WHITESPACE`` flags (pyproject.toml), so an example's printed floats
match to the precision written in the docstring.
"""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Drop JAX's compiled executables after each test module (and each doctest module).

    Every executable keeps its own memory mappings; the suite compiles thousands, and one
    process holding them all ran into the kernel's limit on mappings (``vm.max_map_count``,
    65,530 here), where XLA's compiler segfaulted. Tests reuse compiled code within a module
    (module-scoped fixtures), so clearing between modules costs little."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
