"""Core layer: training loops, the operator abstraction and the training Jacobian.

Imports nothing from the other layers (linalg, analysis, app). The layers above import core
names from this package, not from its private modules."""

from ._derived import Gram as Gram
from ._derived import Projected as Projected
from ._derived import Raised as Raised
from ._derived import Shifted as Shifted
from ._derived import Transposed as Transposed
from ._derived import add_identity as add_identity
from ._derived import gram as gram
from ._derived import transpose as transpose
from ._distributed import global_mesh as global_mesh
from ._distributed import least_over_processes as least_over_processes
from ._distributed import mesh_size as mesh_size
from ._distributed import split_rows as split_rows
from ._jacobian import TrainingJacobian as TrainingJacobian
from ._jacobian import training_jacobian as training_jacobian
from ._memory import MemoryBudgetError as MemoryBudgetError
from ._memory import check_fits as check_fits
from ._operator import AbstractOperator as AbstractOperator
from ._operator import LinearOperator as LinearOperator
from ._operator import MatrixOperator as MatrixOperator
from ._operator import materialise as materialise
from ._operator import products_cache_size as products_cache_size
from ._train import TrainFn as TrainFn
from ._train import TrainState as TrainState
from ._train import full_batch_schedule as full_batch_schedule
from ._train import make_train_fn as make_train_fn
from ._train import minibatch_schedule as minibatch_schedule
from ._trajectory import Trajectory as Trajectory
from ._trajectory import record_trajectory as record_trajectory
from ._trajectory import trajectory_predictions as trajectory_predictions
