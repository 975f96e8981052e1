"""Core layer: training loops, the operator abstraction and the training Jacobian.

Imports nothing from the other layers (linalg, analysis, app). The layers above import core
names from this package, not from its private modules."""

from ._jacobian import TrainingJacobian as TrainingJacobian
from ._jacobian import training_jacobian as training_jacobian
from ._operator import AbstractOperator as AbstractOperator
from ._operator import LinearOperator as LinearOperator
from ._operator import MatrixOperator as MatrixOperator
from ._operator import add_identity as add_identity
from ._operator import gram as gram
from ._operator import materialise as materialise
from ._operator import transpose as transpose
from ._train import TrainFn as TrainFn
from ._train import full_batch_schedule as full_batch_schedule
from ._train import make_train_fn as make_train_fn
from ._train import minibatch_schedule as minibatch_schedule
