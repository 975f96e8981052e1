"""Application layer: the study runner, figures, the command line and the example models.

Not imported by ``import matfree_tj``; may import every layer below it."""
