"""Linear-algebra layer: spectral solvers on any operator and their typed results.

Imports only from :mod:`matfree_tj.core`; knows nothing about training. The layers above import
solver names from this package, not from its private modules.

Inside, one module per concept; imports only go downward (no cycles), each module's
imports from this package in brackets::

    _precision   working dtype (>= float32, Widened), products' precision  ()
    _checks      input validation, run_guarded                              (_precision)
    _gkl         the Golub-Kahan-Lanczos half-steps (CGS2, breakdown) and
                 their traced (SLQ) and eager (restarted, any block) cycles  ()
    _restart     Ritz extraction, thick restarts                            (_gkl)
    _quadrature  SpectralDensity and the quadrature statistics              ()
    _results     Status, SingularTriplets, RegionCounts                     (_quadrature)
    _certify     true residuals, honest flags, missed-value search          (_checks, _restart,
                                                                             _results)
    _dense       dense_svd                                                  (_results)
    _randomized  randomized_svd                                             (_checks, _gkl,
                                                                             _certify, _results)
    _lanczos     top_singular, bottom_singular: the restarted driver        (_checks, _gkl,
                                                                             _restart, _certify,
                                                                             _randomized,
                                                                             _results)
    _slq         singular_value_density, region_counts                      (_checks, _gkl,
                                                                             _quadrature,
                                                                             _results, _dense)
    _subspace    principal cosines, projections                             ()
    _profile     spectrum_profile: sigma_i against i from the quadrature    (_quadrature)
    _resume      RunStore (run state on disk, atomic writes), progress ticks (_results)
"""

from ._dense import dense_svd as dense_svd
from ._lanczos import bottom_singular as bottom_singular
from ._lanczos import top_singular as top_singular
from ._profile import SpectrumProfile as SpectrumProfile
from ._profile import spectrum_profile as spectrum_profile
from ._quadrature import ResolutionWarning as ResolutionWarning
from ._quadrature import SpectralDensity as SpectralDensity
from ._quadrature import count_interval as count_interval
from ._quadrature import probe_quantile as probe_quantile
from ._randomized import randomized_svd as randomized_svd
from ._results import RegionCounts as RegionCounts
from ._results import SingularTriplets as SingularTriplets
from ._results import Status as Status
from ._resume import ResumeError as ResumeError
from ._resume import RunStore as RunStore
from ._resume import atomic_path as atomic_path
from ._resume import atomic_write as atomic_write
from ._slq import region_counts as region_counts
from ._slq import singular_value_density as singular_value_density
from ._subspace import principal_cosines as principal_cosines
from ._subspace import project_off as project_off
from ._subspace import project_onto as project_onto
