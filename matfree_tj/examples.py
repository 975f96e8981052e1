"""``matfree_tj.examples``: the example models (implemented in :mod:`matfree_tj.app.examples`).

Kept at this path because README recipes and users' code import it by this name."""

from .app.examples import *  # noqa: F403
from .app.examples import __all__ as __all__
