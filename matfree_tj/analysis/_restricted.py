r"""Experiment 5: training restricted to the span of a few directions (bulk, its complement,
chaotic or stable singular vectors), against the unconstrained run.

Runs training only; no product of ``J``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ..core import make_train_fn
from ._common import _HI, _is_int, _np

# Result keys of the JSON record that a basis may not be named after.
_TAKEN = ("ks", "unconstrained", "initial")


@dataclasses.dataclass(frozen=True)
class RestrictedTraining:
    """Result of :func:`restricted_training`.

    Attributes
    ----------
    ks
        The subspace sizes, in the order given.
    evals
        Basis name -> ``(len(ks),)`` array: ``eval_fn`` after training within the first ``k``
        columns of that basis (``nan`` where ``k`` exceeds the basis's width).
    unconstrained
        ``eval_fn`` after the normal, unconstrained run.
    initial
        ``eval_fn`` at ``theta_0``.
    """

    ks: tuple[int, ...]
    evals: dict[str, np.ndarray]
    unconstrained: float
    initial: float

    def progress_at(self, k: int) -> dict[str, float]:
        """``{basis: (initial - eval) / (initial - unconstrained)}`` at size ``k``: the share
        of the unconstrained run's decrease of ``eval_fn`` reached within ``k`` directions."""
        if k not in self.ks:
            raise ValueError(f"k={k} is not one of the sizes run, {list(self.ks)}.")
        i = self.ks.index(k)
        gain = self.initial - self.unconstrained
        return {n: float((self.initial - v[i]) / gain) for n, v in self.evals.items()}

    def to_dict(self) -> dict:
        """``{"ks", <basis>: [eval per k], "unconstrained", "initial"}``, JSON-ready."""
        return {
            "ks": list(self.ks),
            **{n: [float(x) for x in v] for n, v in self.evals.items()},
            "unconstrained": float(self.unconstrained),
            "initial": float(self.initial),
        }


def _confined(optimizer: Any, project: Callable) -> Any:
    """``optimizer`` confined to a subspace: it gets ``project(grads)`` and its updates are
    projected. Extra update arguments (``value``, ``grad``, ``value_fn``) are passed on, with
    ``grad`` projected too."""
    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def update(grads, state, params=None, **kwargs):
        g = project(grads)
        if extra:
            kwargs = {**kwargs, "grad": g} if "grad" in kwargs else kwargs
            updates, state = optimizer.update(g, state, params, **kwargs)
        else:
            updates, state = optimizer.update(g, state, params)
        return project(updates), state

    cls = optax.GradientTransformationExtraArgs if extra else optax.GradientTransformation
    return cls(optimizer.init, update)


def _check_orthonormal(B: np.ndarray, name: str, eps: float) -> None:
    """Cheap ``O(P k)`` check that ``B`` has orthonormal columns: unit norms and ``B^T B z = z``
    for a random ``z``. Tolerance ``max(1e-4, 10 k eps)``, above the rounding of a basis
    orthonormalised in the working precision."""
    k = B.shape[1]
    z = np.random.default_rng(0).standard_normal(k)
    z /= np.linalg.norm(z)
    norm_err = np.max(np.abs(np.linalg.norm(B, axis=0) - 1.0)) if k else 0.0
    gram_err = np.linalg.norm(B.T @ (B @ z) - z)
    tol = max(1e-4, 10 * k * eps)
    if not (norm_err <= tol and gram_err <= tol):
        raise ValueError(
            f"restricted_training: basis {name!r} is not orthonormal (column norms off by "
            f"{norm_err:.2e}, |B^T B z - z| = {gram_err:.2e} > {tol:.1e}); orthonormalise it "
            "first, e.g. numpy.linalg.qr(B)[0]."
        )


def restricted_training(
    J: Any,
    bases: Mapping[str, Any],
    ks: Sequence[int],
    *,
    eval_fn: Callable,
    loss_fn: Callable | None = None,
    optimizer: Any = None,
    batches: Any = None,
    progress: Callable[[str], None] | None = None,
) -> RestrictedTraining:
    r"""Train only within the span of the first ``k`` columns of each basis; ``eval_fn`` after.

    With ``B`` the first ``k`` columns of an orthonormal basis and ``Pi = B B^T``, runs the same
    loss, optimizer and batches as ``J.train_fn`` (a :func:`matfree_tj.make_train_fn` run;
    otherwise pass ``loss_fn``, ``optimizer``, ``batches``) from ``theta_0``, with the optimizer
    confined to the span: it receives the projected gradient ``Pi grad`` and each update it
    returns is projected, ``theta <- theta + Pi update``. The optimizer itself runs unchanged on
    the parameter pytree, so per-leaf behaviour (masks, ``multi_transform``, LAMB's trust ratio,
    Adafactor's factored moments) and parameter-dependent transforms (weight decay pulls
    ``theta`` toward 0, not toward ``theta_0``) are those of the normal run. Hence:

    * SGD, with momentum, Nesterov, weight decay and schedules, is exactly projected gradient
      descent: ``theta <- theta - lr Pi (grad + wd theta)`` (and its momentum recursion);
    * any full basis (``k = P``, e.g. a rotation) reproduces the unconstrained run for any
      optimizer, since then ``Pi = I``;
    * for coordinate-wise optimizers (Adam) with a rotated basis it is Adam on the projected
      gradient with the step projected back, not Adam on the coordinates ``B^T theta``.

    Parameters
    ----------
    J
        A :class:`~matfree_tj.TrainingJacobian` (``params0_flat``, ``unravel``, ``train_fn``).
    bases
        Name (e.g. ``"bulk"``, ``"complement"``, ``"chaotic"``, ``"stable"``) -> ``(P, k_max)``
        orthonormal columns in order of priority (checked: column norms and ``B^T B z = z`` for
        a random ``z``). The names ``"ks"``, ``"unconstrained"`` and ``"initial"`` are taken.
    ks
        Subspace sizes, positive integers (a ``k`` above a basis's width gives ``nan`` for it).
    eval_fn
        ``eval_fn(params_pytree) -> scalar`` (e.g. the test loss).

    Returns a :class:`RestrictedTraining` (``evals[name]``: one value per ``k``).

    Cost: no product of ``J``; one training run per (name, k), each step adding four ``(P, w)``
    matrix-vector products (projecting the gradient and the update), ``w`` the next power of
    two above ``k`` (capped at the basis width): the bases are zero-padded to ``w`` (zero
    columns leave ``Pi`` unchanged) so one compile serves each size bucket.

    Examples
    --------
    >>> import jax, numpy as np, matfree_tj as mtj
    >>> from matfree_tj.analysis import restricted_training
    >>> lr = mtj.examples.linear_regression(jax.random.key(0), 4, 6, eta=0.5, num_steps=3)
    >>> J = mtj.training_jacobian(lr.train_fn, lr.params0)
    >>> norm = lambda w: jax.numpy.sum(w**2)
    >>> out = restricted_training(J, {"full": np.eye(6)}, [6], eval_fn=norm)
    >>> round(out.progress_at(6)["full"], 4)  # the full basis is the normal run
    1.0
    """
    tf = J.train_fn
    loss_fn = loss_fn if loss_fn is not None else getattr(tf, "loss_fn", None)
    optimizer = optimizer if optimizer is not None else getattr(tf, "optimizer", None)
    batches = batches if batches is not None else getattr(tf, "batches", None)
    if loss_fn is None or optimizer is None or batches is None:
        raise ValueError(
            "restricted_training needs loss_fn, optimizer and batches (given, or from "
            "a J.train_fn built by matfree_tj.make_train_fn)."
        )
    if getattr(tf, "trainable", None) is not None:
        raise ValueError(
            "restricted_training: J.train_fn trains a subset of the parameters (trainable=); "
            "confining the optimizer to a subspace of that subset is not supported yet. Build "
            "J from a train_fn without trainable= to use restricted_training."
        )
    # the run's other options (model state, per-step keys, another output) carry over as they are
    run_opts = {
        name: getattr(tf, name)
        for name in ("model_state", "key", "output")
        if getattr(tf, name, None) is not None
    }
    theta0, unravel, dt = J.params0_flat, J.unravel, J.dtype
    bad = [k for k in ks if not _is_int(k) or k < 1]
    if bad:
        raise ValueError(f"restricted_training: ks must be positive integers, got {bad}.")
    ks = [int(k) for k in ks]
    taken = set(_TAKEN) & set(bases)
    if taken:
        raise ValueError(f"restricted_training: basis names {sorted(taken)} are taken by results.")

    @jax.jit
    def run(B):
        def project(tree):
            flat, unflatten = ravel_pytree(tree)
            coef = jnp.matmul(flat.astype(B.dtype), B, precision=_HI)
            return unflatten(jnp.matmul(B, coef, precision=_HI).astype(flat.dtype))

        confined = _confined(optimizer, project)
        return eval_fn(make_train_fn(loss_fn, confined, batches, **run_opts)(unravel(theta0)))

    evals: dict = {}
    P = theta0.shape[0]
    for name, basis in bases.items():
        basis = _np(basis)
        if basis.ndim != 2 or basis.shape[0] != P:
            raise ValueError(
                f"restricted_training: basis {name!r} must be ({P}, k_max) columns, "
                f"got shape {basis.shape}."
            )
        _check_orthonormal(basis, name, np.finfo(np.dtype(dt)).eps)
        basis = jnp.asarray(basis, dt)
        vals = []
        for k in ks:
            if k > basis.shape[1]:
                vals.append(float("nan"))
                continue
            # Zero-pad to a power of two: zero columns add nothing to B B^T, so the run is the
            # same; one compile serves each size bucket instead of one per k.
            width = min(basis.shape[1], 1 << (k - 1).bit_length())
            B = basis[:, :width] if width == k else basis[:, :width].at[:, k:].set(0.0)
            vals.append(float(run(B)))
            if progress is not None:
                progress(f"restricted training: {name} k={k} -> {vals[-1]:.4f}")
        evals[name] = np.asarray(vals)
    return RestrictedTraining(
        tuple(ks),
        evals,
        float(eval_fn(J.unravel(J.params_T_flat))),
        float(eval_fn(J.unravel(theta0))),
    )
