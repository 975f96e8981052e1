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
