"""``matfree_tj.cli``: the command line (implemented in :mod:`matfree_tj.app.cli`)."""

from .app.cli import build_parser as build_parser
from .app.cli import main as main
