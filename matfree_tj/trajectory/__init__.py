"""Trajectory geometry (analysis layer): training trajectories as sequences of predictive
distributions, their Bhattacharyya distances, the InPCA embedding and its hyper-ribbon widths.

Imports :mod:`matfree_tj.core` and :mod:`matfree_tj.linalg` through their doors only; never the
application layer. One module per concept::

    _distances   bhattacharyya_distances, DistanceOperator (D @ v streamed from predictions)
    _inpca       inpca, InPCAResult, CentredOperator (W = -1/2 L D L, never formed)
    _ribbon      ribbon_widths, RibbonWidths
"""

from ._distances import DistanceOperator as DistanceOperator
from ._distances import UnderflowWarning as UnderflowWarning
from ._distances import bhattacharyya_distances as bhattacharyya_distances
from ._inpca import CentredOperator as CentredOperator
from ._inpca import InPCAResult as InPCAResult
from ._inpca import inpca as inpca
from ._ribbon import RibbonWidths as RibbonWidths
from ._ribbon import ribbon_widths as ribbon_widths
from ._tie import SUBSPACES as SUBSPACES
from ._tie import TrajectoryJacobianTie as TrajectoryJacobianTie
from ._tie import trajectory_vs_jacobian as trajectory_vs_jacobian
