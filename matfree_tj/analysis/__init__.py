r"""Analyses of a training Jacobian: the experiments of Belrose & Scherlis (2024), matrix-free.

Every function here is something a researcher calls on their own model and training run. Each
docstring says what it needs (a :class:`~matfree_tj.TrainingJacobian` ``J``, singular triplets,
an ``apply`` function) and what it costs in operator products (``J v`` ~ 2-3 training runs,
``J^T u`` ~ 3-5) or in training runs. None of them knows how the triplets were computed: they
come from :func:`singular_triplets`, which calls the library's solvers
(:func:`matfree_tj.top_singular`, :func:`matfree_tj.bottom_singular`) or, with
``backend="dense"``, the dense oracle :func:`matfree_tj.dense_svd`.

Experiments and what they need
------------------------------
(``P`` parameters; a "product" is one ``J v`` or one ``J^T u``; a training run is ~1/3 of a
``J v``.)

=====================================  ==============================  ===========================
experiment                             functions                       needs / cost
=====================================  ==============================  ===========================
1. spectrum, region counts             :func:`spectrum_summary`        ``J``; SLQ: 2 x probes x
                                                                       steps products + top-k
2. alignment cos(u_i, v_i)             :func:`alignment`,              triplets (no products);
                                       :func:`bulk_alignment_probe`    probe: 2 x probes products
3. perturbation / linearisation        :func:`perturbation_response`   ``J.train_fn``; one training
                                                                       run per eps
4. in/out-of-distribution effect       :func:`output_sensitivity`,     ``apply``; forward passes
                                       :func:`ood_inputs`              only
5. restricted training                 :func:`restricted_training`     bases; one training run per
                                                                       (basis, k)
6. data vs labels                      :func:`compare_spectra`         one ``J`` per run
7. bulk vs null(F) on test data        :func:`function_jacobian`,      ``apply``; N x C reverse
                                       :func:`function_rowspace`,      passes, thin SVD
                                       :func:`bulk_nullspace_overlap`
8. bulk overlap across seeds           :func:`seed_overlap`            moved directions per seed
=====================================  ==============================  ===========================

Triplets come from :func:`singular_triplets` (top / bottom of ``J``) and
:func:`moved_directions` (top of ``J - I``); with ``backend="matrix-free"`` they cost Krylov
products (reported in ``num_products``), with ``backend="dense"`` one materialisation (``P``
products, ``P^2`` memory) and an ``O(P^3)`` SVD. For ``P`` in the millions use the matrix-free
backend with ``k`` in the tens to hundreds; the bulk is then handled through its complement.

Conventions
-----------
Regions
    ``chaotic``: :math:`\sigma > hi`; ``bulk``: :math:`lo \le \sigma \le hi`; ``stable``:
    :math:`\sigma < lo` (``lo=0.9``, ``hi=1.1`` by default, as in the paper's figures).
Moved directions and the bulk subspace
    The right singular vectors of :math:`J - I` with the largest singular values are exactly the
    initial-parameter directions whose perturbation training changes the most. We call the span
    of the top ``k`` of them the *moved* subspace, and define the bulk subspace as its orthogonal
    complement. This definition needs only ``k`` matrix-free triplets of ``J - I``
    (:func:`matfree_tj.add_identity`), so it scales to any ``P``; the bulk itself (dimension
    ``P - k``) is never formed, it is used implicitly through projections
    (:func:`matfree_tj.project_off`) and through the identity
    :math:`\|P_{A^\perp} P_{B^\perp}\|_F^2 = P - a - b + \|A^\top B\|_F^2` for orthonormal
    ``A`` (P, a) and ``B`` (P, b) (see :func:`subspace_overlap`). The dense backend computes the
    same subspace from a dense SVD of ``J - I``, so the two backends are directly comparable.
Randomness
    Every stochastic function takes an explicit ``key``; there is no default key.
Results
    Each experiment returns a small frozen dataclass with named fields (:class:`SpectrumSummary`,
    :class:`PerturbationResponse`, :class:`RestrictedTraining`, ...) and a ``to_dict()`` for
    JSON; inputs that are data (the input sets of :func:`ood_inputs`) are plain dicts.

References
----------
Belrose & Scherlis, "Understanding Gradient Descent through the Training Jacobian",
arXiv:2412.07003 (2024). Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos
quadrature", SIMAX (2017). Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM
Review (2011).
"""

from ._common import BACKENDS as BACKENDS
from ._common import REGIONS as REGIONS
from ._common import model_inputs as model_inputs
from ._overlap import NullspaceOverlap as NullspaceOverlap
from ._overlap import Overlap as Overlap
from ._overlap import SeedOverlap as SeedOverlap
from ._overlap import bulk_nullspace_overlap as bulk_nullspace_overlap
from ._overlap import function_jacobian as function_jacobian
from ._overlap import function_rowspace as function_rowspace
from ._overlap import seed_overlap as seed_overlap
from ._overlap import subspace_overlap as subspace_overlap
from ._perturbation import OutputSensitivity as OutputSensitivity
from ._perturbation import PerturbationResponse as PerturbationResponse
from ._perturbation import ood_inputs as ood_inputs
from ._perturbation import output_sensitivity as output_sensitivity
from ._perturbation import perturbation_response as perturbation_response
from ._restricted import RestrictedTraining as RestrictedTraining
from ._restricted import restricted_training as restricted_training
from ._spectrum import SpectrumComparison as SpectrumComparison
from ._spectrum import SpectrumSummary as SpectrumSummary
from ._spectrum import alignment_by_region as alignment_by_region
from ._spectrum import auto_num_steps as auto_num_steps
from ._spectrum import choose_backend as choose_backend
from ._spectrum import compare_spectra as compare_spectra
from ._spectrum import counts_from_values as counts_from_values
from ._spectrum import spectrum_summary as spectrum_summary
from ._triplets import AlignmentSummary as AlignmentSummary
from ._triplets import BulkAlignmentProbe as BulkAlignmentProbe
from ._triplets import ProbeAlignment as ProbeAlignment
from ._triplets import alignment as alignment
from ._triplets import alignment_summary as alignment_summary
from ._triplets import bulk_alignment_probe as bulk_alignment_probe
from ._triplets import moved_directions as moved_directions
from ._triplets import random_bulk_basis as random_bulk_basis
from ._triplets import singular_triplets as singular_triplets

__all__ = [
    "BACKENDS",
    "REGIONS",
    "model_inputs",
    "SpectrumSummary",
    "SpectrumComparison",
    "spectrum_summary",
    "counts_from_values",
    "alignment_by_region",
    "auto_num_steps",
    "choose_backend",
    "compare_spectra",
    "AlignmentSummary",
    "ProbeAlignment",
    "BulkAlignmentProbe",
    "singular_triplets",
    "moved_directions",
    "alignment",
    "alignment_summary",
    "random_bulk_basis",
    "bulk_alignment_probe",
    "PerturbationResponse",
    "OutputSensitivity",
    "perturbation_response",
    "ood_inputs",
    "output_sensitivity",
    "RestrictedTraining",
    "restricted_training",
    "Overlap",
    "NullspaceOverlap",
    "SeedOverlap",
    "subspace_overlap",
    "function_jacobian",
    "function_rowspace",
    "bulk_nullspace_overlap",
    "seed_overlap",
]
