"""matfree_tj: the spectrum of a neural network's training Jacobian, matrix-free.

The public surface, layer by layer (see ARCHITECTURE.md): the core (training loops, operators,
the training Jacobian), the linear-algebra layer (solvers and their typed results) and
:mod:`matfree_tj.analysis` (the paper's experiments). The application layer (``matfree_tj.app``:
study runner, figures, CLI, example models) is imported only on use: ``mtj.examples`` loads it
on first access, so ``import matfree_tj`` pulls in neither it nor scikit-learn.
"""

import importlib as _importlib

from . import analysis as analysis  # noqa: E402,I001 - the analysis layer sits on the solvers
from .core._derived import add_identity as add_identity
from .core._derived import gram as gram
from .core._derived import transpose as transpose
from .core._distributed import global_mesh as global_mesh
from .core._jacobian import TrainingJacobian as TrainingJacobian
from .core._jacobian import training_jacobian as training_jacobian
from .core._memory import MemoryBudgetError as MemoryBudgetError
from .core._operator import AbstractOperator as AbstractOperator
from .core._operator import LinearOperator as LinearOperator
from .core._operator import MatrixOperator as MatrixOperator
from .core._operator import materialise as materialise
from .core._train import TrainFn as TrainFn
from .core._train import TrainState as TrainState
from .core._train import full_batch_schedule as full_batch_schedule
from .core._train import make_train_fn as make_train_fn
from .core._train import minibatch_schedule as minibatch_schedule
from .core._trajectory import Trajectory as Trajectory
from .core._trajectory import record_trajectory as record_trajectory
from .core._trajectory import trajectory_predictions as trajectory_predictions
from .linalg._dense import dense_svd as dense_svd
from .linalg._lanczos import bottom_singular as bottom_singular
from .linalg._lanczos import top_singular as top_singular
from .linalg._profile import SpectrumProfile as SpectrumProfile
from .linalg._profile import spectrum_profile as spectrum_profile
from .linalg._quadrature import ResolutionWarning as ResolutionWarning
from .linalg._quadrature import SpectralDensity as SpectralDensity
from .linalg._randomized import randomized_svd as randomized_svd
from .linalg._results import RegionCounts as RegionCounts
from .linalg._results import SingularTriplets as SingularTriplets
from .linalg._results import Status as Status
from .linalg._slq import region_counts as region_counts
from .linalg._slq import singular_value_density as singular_value_density
from .linalg._subspace import principal_cosines as principal_cosines
from .linalg._subspace import project_off as project_off
from .linalg._subspace import project_onto as project_onto
from .trajectory._distances import DistanceOperator as DistanceOperator
from .trajectory._distances import UnderflowWarning as UnderflowWarning
from .trajectory._distances import bhattacharyya_distances as bhattacharyya_distances
from .trajectory._inpca import InPCAResult as InPCAResult
from .trajectory._inpca import inpca as inpca
from .trajectory._ribbon import RibbonWidths as RibbonWidths
from .trajectory._ribbon import ribbon_widths as ribbon_widths

__version__ = "0.1.0"

# Application-layer modules, loaded on first attribute access (PEP 562).
_LAZY = {"examples": ".app.examples", "cli": ".app.cli"}


def __getattr__(name: str):
    if name in _LAZY:
        module = _importlib.import_module(_LAZY[name], __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
