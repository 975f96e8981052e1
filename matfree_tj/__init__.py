"""matfree_tj: the spectrum of a neural network's training Jacobian, matrix-free."""

from . import examples as examples
from ._dense import DenseSVD as DenseSVD
from ._dense import dense_svd as dense_svd
from ._jacobian import TrainingJacobian as TrainingJacobian
from ._jacobian import training_jacobian as training_jacobian
from ._operator import LinearOperator as LinearOperator
from ._operator import add_identity as add_identity
from ._operator import gram as gram
from ._operator import materialise as materialise
from ._operator import transpose as transpose
from ._train import TrainFn as TrainFn
from ._train import full_batch_schedule as full_batch_schedule
from ._train import make_train_fn as make_train_fn
from ._train import minibatch_schedule as minibatch_schedule

__version__ = "0.1.0"
from ._lanczos import bottom_singular as bottom_singular
from ._lanczos import top_singular as top_singular
from ._randomized import randomized_svd as randomized_svd
from ._results import RegionCounts as RegionCounts
from ._results import ResolutionWarning as ResolutionWarning
from ._results import SingularTriplets as SingularTriplets
from ._results import SpectralDensity as SpectralDensity
from ._slq import region_counts as region_counts
from ._slq import singular_value_density as singular_value_density
from ._subspace import principal_cosines as principal_cosines
from ._subspace import project_off as project_off
from ._subspace import project_onto as project_onto
