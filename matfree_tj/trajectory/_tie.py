r"""The trajectory tied to the training Jacobian of the same run.

Two views of one training run: the path :math:`\theta_0, \theta_{t_1}, \dots, \theta_T` that
:func:`~matfree_tj.record_trajectory` records, and the training Jacobian
:math:`J = \partial\theta_T/\partial\theta_0`. :func:`trajectory_vs_jacobian` measures how the
path's directions sit against J's distinguished subspaces, each against random subspaces of
the same dimension, and how much of the hyper-ribbon's stress the path keeps when it is
projected on J's chaotic (or moved) subspace.

For GD on least squares everything is exact: :math:`\theta_T - \theta_0 = (J - I)(\theta_0 -
w^*)`, so the displacement and every checkpoint's offset lie in the range of :math:`J - I`
(the moved subspace): squared cosine 1 against it, ``k/P`` expected against a random one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..analysis import moved_directions, singular_triplets
from ..core import AbstractOperator, Trajectory
from ._distances import bhattacharyya_distances

__all__ = ["TrajectoryJacobianTie", "trajectory_vs_jacobian", "SUBSPACES"]

SUBSPACES = ("top", "moved_right", "moved_left")
_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class TrajectoryJacobianTie:
    r"""How a recorded trajectory sits against its training Jacobian
    (:func:`trajectory_vs_jacobian`).

    Subspaces (each ``k``-dimensional, orthonormal, in J's variable order): ``"top"``, the top
    ``k`` right singular vectors of J; ``"moved_right"``, the top ``k`` right singular vectors
    of :math:`J - I` (the initial directions training moved most; ``analysis.moved_directions``);
    ``"moved_left"``, its left singular vectors (where those moves end up in :math:`\theta_T`).

    Attributes
    ----------
    num_params, num_checkpoints, k, num_pcs
        ``P``, ``m``, the subspace dimension and the number of trajectory principal directions.
    displacement_norm
        :math:`\|\theta_T - \theta_0\|`.
    pca_variance_ratio
        ``(num_pcs,)`` fraction of the trajectory's variance (about its mean checkpoint) along
        each principal direction.
    displacement_cos2
        ``{subspace: |Q^T d|^2 / |d|^2}`` for the displacement ``d``.
    pca_cosines
        ``{subspace: (min(num_pcs, k),) principal cosines}`` between the span of the
        trajectory's principal directions and the subspace, descending.
    expected_cos2, expected_pca_cos2
        The random baselines in closed form: for a uniformly random ``k``-dimensional subspace
        of :math:`\mathbb{R}^P`, :math:`E\,\cos^2 = k/P` for a fixed vector, and the mean squared
        principal cosine with a fixed ``r``-dimensional span is :math:`\max(r, k)/P`.
    random_cos2, random_pca_cos2
        ``(mean, standard deviation)`` of the same two quantities over ``num_random`` sampled
        Gaussian subspaces (an empirical check of the baselines at this ``P``).
    singular_values, moved_singular_values
        The top ``k`` singular values of J and of :math:`J - I`.
    num_chaotic
        How many of J's top ``k`` singular values exceed ``hi``: the dimension of the chaotic
        subspace used by the stress fractions (``k`` may be too small to hold all of them if
        ``singular_values[-1] > hi``).
    stress_fraction
        ``{"chaotic": chi, "moved_right": chi}`` (``None`` without ``apply_fn``; ``nan`` for an
        empty chaotic subspace): the ribbon's stress explained by the projected trajectory
        (definition in :func:`trajectory_vs_jacobian`).
    random_stress_fraction
        ``{name: (mean, std)}`` of the same measure for random subspaces of the same dimension.
    num_products
        Operator products of J spent on the triplets (0 with a dense matrix given).
    """

    num_params: int
    num_checkpoints: int
    k: int
    num_pcs: int
    displacement_norm: float
    pca_variance_ratio: np.ndarray
    displacement_cos2: dict
    pca_cosines: dict
    expected_cos2: float
    expected_pca_cos2: float
    random_cos2: tuple[float, float]
    random_pca_cos2: tuple[float, float]
    singular_values: np.ndarray
    moved_singular_values: np.ndarray
    num_chaotic: int
    stress_fraction: dict | None
    random_stress_fraction: dict | None
    num_products: int

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""

        def conv(x):
            if isinstance(x, dict):
                return {k: conv(v) for k, v in x.items()}
            if isinstance(x, (tuple, list)):
                return [conv(v) for v in x]
            if isinstance(x, np.ndarray):
                return [float(v) for v in x]
            if isinstance(x, (np.floating, float)):
                return float(x)
            if isinstance(x, (np.integer, int)):
                return int(x)
            return x

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _orth(A: np.ndarray) -> np.ndarray:
    Q, _ = np.linalg.qr(A)
    return Q


def _cos2(Q: np.ndarray, d: np.ndarray) -> float:
    nd = float(d @ d)
    return float(np.sum((Q.T @ d) ** 2) / nd) if nd > 0 else float("nan")


def _pcos(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Principal cosines of two orthonormal bases (singular values of A^T B), descending."""
    return np.clip(np.linalg.svd(A.T @ B, compute_uv=False), 0.0, 1.0)


def _centred_w(D: np.ndarray) -> np.ndarray:
    """W = -1/2 L D L with L = I - 11^T/m."""
    Dc = D - D.mean(0, keepdims=True)
    return -0.5 * (Dc - Dc.mean(1, keepdims=True))


def trajectory_vs_jacobian(
    trajectory: Trajectory,
    J: AbstractOperator,
    *,
    k: int,
    key: jax.Array,
    num_pcs: int | None = None,
    backend: str = "matrix-free",
    dense: Any = None,
    hi: float = 1.1,
    num_random: int = 16,
    apply_fn: Callable[[Any, Any], jax.Array] | None = None,
    inputs: Any = None,
    kind: str = "categorical",
    sigma: float | None = None,
    num_random_stress: int = 3,
    chunk_size: int = 16,
    **opts,
) -> TrajectoryJacobianTie:
    r"""The trajectory's displacement and principal directions against J's subspaces, and the
    ribbon's stress kept by the trajectory projected on J's chaotic subspace.

    Let :math:`\Theta` be the ``(m, P)`` checkpoints (:meth:`Trajectory.flat`, J's variable
    order), :math:`d = \theta_T - \theta_0` the displacement, and :math:`V_{\rm pca}` the
    top ``num_pcs`` right singular vectors of the centred :math:`\Theta - \bar\theta`. For each
    ``k``-dimensional subspace :math:`Q` of :data:`SUBSPACES` (top right singular vectors of
    J; top right / left singular vectors of :math:`J - I`) this reports
    :math:`\|Q^\top d\|^2 / \|d\|^2` and the principal cosines of :math:`V_{\rm pca}` with
    :math:`Q`, with random baselines in closed form (:math:`k/P`; :math:`\max(r, k)/P` for
    the mean squared principal cosine) and sampled (``num_random`` Gaussian subspaces).

    Stress fraction (with ``apply_fn`` and ``inputs``). For an orthonormal basis :math:`B`
    (``"chaotic"``: the columns of J's top right singular vectors whose singular value exceeds
    ``hi``; ``"moved_right"``: the moved subspace) the *projected trajectory* is
    :math:`\theta^B_t = \theta_0 + B B^\top (\theta_t - \theta_0)`. With :math:`D` and
    :math:`D^B` the Bhattacharyya distances between the predictions of the checkpoints and of
    the projected checkpoints on ``inputs``, and :math:`W = -\tfrac12 L D L`,
    :math:`W^B = -\tfrac12 L D^B L` (:math:`L = I - 11^\top/m`),

    .. math::

        \chi_B = 1 - \frac{\|W - W^B\|_F}{\|W\|_F},

    the same measure as InPCA's explained stress (which is :math:`1 - \|W - W_j\|_F/\|W\|_F`
    for the rank-``j`` truncation :math:`W_j`): 1 when the projected trajectory reproduces the
    ribbon exactly, 0 when it explains nothing, negative when it distorts more than it
    explains. It is compared with random subspaces of the same dimension
    (``num_random_stress`` samples). Only J's variables are projected: leaves that are not
    (``trainable`` False; the run still updates them unless the optimizer freezes them) take
    each checkpoint's recorded values in both :math:`D` and :math:`D^B`, so :math:`W` is the
    recorded trajectory's ribbon.

    Cost: the triplets of J and of :math:`J - I` (``num_products``; none with
    ``backend="dense"`` and ``dense`` the materialised J), ``O(m P k)`` flops, and for the
    stress ``(2 + num_random_stress) x m`` forward passes on ``inputs`` and as many distance
    matrices.

    Parameters
    ----------
    trajectory
        From :func:`~matfree_tj.record_trajectory` on the run J was built from.
    J
        The :class:`~matfree_tj.TrainingJacobian` of that run (any square operator with
        ``params0_flat`` and ``unravel`` for the stress fraction).
    k
        Dimension of J's subspaces, ``1 <= k < P``.
    key
        PRNG key (the solvers' start vectors and the random baselines).
    num_pcs
        Principal directions of the trajectory (default ``min(k, m - 1)``).
    backend, dense, opts
        As :func:`matfree_tj.analysis.singular_triplets` (``dense``: the ``(P, P)`` matrix of J,
        used for both J and :math:`J - I`).
    hi
        Chaotic threshold on J's singular values (default 1.1, the analyses' default).
    num_random
        Random subspaces sampled for the cosine baselines.
    apply_fn, inputs
        ``apply_fn(params, inputs)``: logits (``kind="categorical"``) or means
        (``"gaussian"``) on a probe set; ``None`` skips the stress fractions.
    kind, sigma
        As :func:`matfree_tj.bhattacharyya_distances` (categorical distances use log-softmax
        of ``apply_fn``'s output).
    num_random_stress
        Random subspaces sampled for the stress baseline.
    chunk_size
        Checkpoints per chunk of forward passes.

    Returns
    -------
    TrajectoryJacobianTie

    Examples
    --------
    >>> import jax, numpy as np, matfree_tj as mtj
    >>> from matfree_tj.trajectory import trajectory_vs_jacobian
    >>> lin = mtj.examples.linear_regression(jax.random.key(0), 3, 8, eta=0.5, num_steps=10)
    >>> traj = mtj.record_trajectory(lin.train_fn, lin.params0, every=2)
    >>> J = mtj.training_jacobian(lin.train_fn, lin.params0)
    >>> tie = trajectory_vs_jacobian(traj, J, k=3, key=jax.random.key(1), backend="dense")
    >>> round(tie.displacement_cos2["moved_right"], 6), tie.expected_cos2  # GD: d in range(J - I)
    (1.0, 0.375)
    """
    if not isinstance(trajectory, Trajectory):
        raise TypeError(
            "trajectory must be a Trajectory from matfree_tj.record_trajectory, got "
            f"{type(trajectory).__name__}."
        )
    if not isinstance(J, AbstractOperator) or J.shape[0] != J.shape[1]:
        raise TypeError("J must be a square operator (a TrainingJacobian of the same run).")
    Theta = np.asarray(jax.device_get(trajectory.flat()), dtype=np.float64)
    m, P = Theta.shape
    if P != J.shape[0]:
        raise ValueError(
            f"the trajectory has P = {P} variables but J is {J.shape}: record the trajectory "
            "from the train_fn and params0 that J was built from."
        )
    p0 = getattr(J, "params0_flat", None)
    if p0 is not None and not np.allclose(np.asarray(p0, np.float64), Theta[0], rtol=0, atol=0):
        raise ValueError(
            "the trajectory's first checkpoint is not J.params0_flat: they are different runs. "
            "Record with steps starting at 0 from the same params0."
        )
    if m < 2:
        raise ValueError("the trajectory needs at least 2 checkpoints (steps 0 and T).")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) < P:
        raise ValueError(f"Expected an integer 1 <= k < P = {P}, got {k!r}.")
    k = int(k)
    r = min(k, m - 1) if num_pcs is None else int(num_pcs)
    if not 1 <= r <= m - 1:
        raise ValueError(f"Expected 1 <= num_pcs <= m - 1 = {m - 1}, got {num_pcs}.")
    if not isinstance(num_random, (int, np.integer)) or num_random < 2:
        raise ValueError(f"Expected num_random >= 2 (a mean and a spread), got {num_random}.")
    if (apply_fn is None) != (inputs is None):
        raise ValueError("give both apply_fn and inputs for the stress fractions, or neither.")
    if kind not in ("categorical", "gaussian"):
        raise ValueError(f"kind must be 'categorical' or 'gaussian', got {kind!r}.")

    k_top, k_moved, k_rand = jax.random.split(key, 3)
    if backend == "dense" and dense is None:
        dense = np.asarray(J.to_dense(), np.float64)
        num_products = P
    else:
        num_products = 0
    top = singular_triplets(J, k, key=k_top, which="top", backend=backend, dense=dense, **opts)
    moved = moved_directions(J, k, key=k_moved, backend=backend, dense=dense, **opts)
    if backend != "dense":
        num_products += int(top.num_products) + int(moved.num_products)
    bases = {"top": _orth(top.V), "moved_right": _orth(moved.V), "moved_left": _orth(moved.U)}

    d = Theta[-1] - Theta[0]
    centred = Theta - Theta.mean(0, keepdims=True)
    _, sv, Vt = np.linalg.svd(centred, full_matrices=False)
    V_pca = Vt[:r].T
    var = sv**2
    ratio = var[:r] / var.sum() if var.sum() > 0 else np.full(r, np.nan)

    # float64 Gaussians whatever JAX's x64 setting: a NumPy generator seeded from the key
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_rand)).ravel().tolist())
    rand_cos2, rand_pca = [], []
    for _ in range(int(num_random)):
        Qr = _orth(rng.standard_normal((P, k)))
        rand_cos2.append(_cos2(Qr, d))
        rand_pca.append(float(np.mean(_pcos(V_pca, Qr) ** 2)))

    stress = rand_stress = None
    s_top = np.asarray(top.s, np.float64)
    num_chaotic = int(np.sum(s_top > hi))
    if apply_fn is not None:
        stress, rand_stress = {}, {}
        fz = _frozen(trajectory)
        W = _centred_w(_distances(apply_fn, J, Theta, fz, inputs, kind, sigma, chunk_size))
        w_norm = np.linalg.norm(W)

        def chi(B):
            proj = Theta[0] + (Theta - Theta[0]) @ B @ B.T
            Wb = _centred_w(_distances(apply_fn, J, proj, fz, inputs, kind, sigma, chunk_size))
            return float(1.0 - np.linalg.norm(W - Wb) / w_norm) if w_norm > 0 else float("nan")

        chaotic = bases["top"][:, s_top > hi]
        for name, B in (("chaotic", chaotic), ("moved_right", bases["moved_right"])):
            if B.shape[1] == 0:
                stress[name], rand_stress[name] = float("nan"), (float("nan"), float("nan"))
                continue
            stress[name] = chi(B)
            samples = []
            for _ in range(int(num_random_stress)):
                samples.append(chi(_orth(rng.standard_normal((P, B.shape[1])))))
            rand_stress[name] = (float(np.mean(samples)), float(np.std(samples)))

    return TrajectoryJacobianTie(
        num_params=P,
        num_checkpoints=m,
        k=k,
        num_pcs=r,
        displacement_norm=float(np.linalg.norm(d)),
        pca_variance_ratio=ratio,
        displacement_cos2={n: _cos2(Q, d) for n, Q in bases.items()},
        pca_cosines={n: _pcos(V_pca, Q) for n, Q in bases.items()},
        expected_cos2=k / P,
        expected_pca_cos2=max(r, k) / P,
        random_cos2=(float(np.mean(rand_cos2)), float(np.std(rand_cos2))),
        random_pca_cos2=(float(np.mean(rand_pca)), float(np.std(rand_pca))),
        singular_values=s_top,
        moved_singular_values=np.asarray(moved.s, np.float64),
        num_chaotic=num_chaotic,
        stress_fraction=stress,
        random_stress_fraction=rand_stress,
        num_products=num_products,
    )


def _frozen(trajectory: Trajectory) -> Any:
    """The checkpoints' array leaves that are not variables of J (``trainable`` False), stacked
    with their checkpoint axis, at those leaves' places (``None`` elsewhere); ``None`` if J
    has every array leaf. The run updates them (a mask does not change it), so the recorded
    ribbon needs each checkpoint's own values, not ``params0``'s that ``J.unravel`` fills in."""
    if trajectory.mask_flat is None:
        return None
    treedef, flags = trajectory.mask_flat
    mask = jax.tree_util.tree_unflatten(treedef, flags)
    rest = eqx.filter(eqx.filter(trajectory.params, mask, inverse=True), eqx.is_array)
    return rest if jax.tree_util.tree_leaves(rest) else None


@eqx.filter_jit
def _predictions(apply_fn, unravel, thetas, frozen, inputs, kind, chunk):
    """Predictions of every flat checkpoint (log-softmax for categorical), chunked; with
    ``frozen``, checkpoint ``i``'s non-variable leaves are ``frozen``'s row ``i``."""

    def one(a):
        theta, fz = a
        params = unravel(theta) if fz is None else eqx.combine(fz, unravel(theta))
        out = apply_fn(params, inputs)
        return jax.nn.log_softmax(out, axis=-1) if kind == "categorical" else out

    return jax.lax.map(one, (thetas, frozen), batch_size=chunk)


def _distances(apply_fn, J, Theta, frozen, inputs, kind, sigma, chunk_size) -> np.ndarray:
    """Bhattacharyya distances between the predictions of the flat checkpoints ``Theta``."""
    thetas = jnp.asarray(Theta, J.params0_flat.dtype)
    chunk = min(int(chunk_size), thetas.shape[0])
    preds = _predictions(apply_fn, J.unravel, thetas, frozen, inputs, kind, chunk)
    if kind == "categorical":
        D = bhattacharyya_distances(preds, kind="categorical", log=True)
    else:
        D = bhattacharyya_distances(preds, kind="gaussian", sigma=sigma)
    return np.asarray(D, np.float64)
