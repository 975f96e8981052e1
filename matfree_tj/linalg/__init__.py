"""Linear-algebra layer: spectral solvers on any operator and their typed results.

Imports only from :mod:`matfree_tj.core`; knows nothing about training. The layers above import
solver names from this package, not from its private modules."""

from ._dense import DenseSVD as DenseSVD
from ._dense import dense_svd as dense_svd
from ._lanczos import bottom_singular as bottom_singular
from ._lanczos import top_singular as top_singular
from ._randomized import randomized_svd as randomized_svd
from ._results import RegionCounts as RegionCounts
from ._results import ResolutionWarning as ResolutionWarning
from ._results import SingularTriplets as SingularTriplets
from ._results import SpectralDensity as SpectralDensity
from ._results import count_interval as count_interval
from ._results import probe_quantile as probe_quantile
from ._slq import region_counts as region_counts
from ._slq import singular_value_density as singular_value_density
from ._subspace import principal_cosines as principal_cosines
from ._subspace import project_off as project_off
from ._subspace import project_onto as project_onto
