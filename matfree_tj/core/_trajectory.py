r"""Training trajectories: the parameters at chosen steps of ONE run, and predictions along them.

:func:`record_trajectory` runs the same optimizer step as :class:`~matfree_tj.TrainFn` (the
step function is shared: :meth:`TrainFn._pieces`), but as an outer :func:`jax.lax.scan` over
checkpoint intervals, each an inner loop over that interval's steps, emitting the parameters
(and model state, and ``output``) at the end of every interval. Memory is O(number of
checkpoints x P) for the record plus one step's working memory, never O(T x P).

:func:`trajectory_predictions` evaluates a model at every checkpoint on a probe set, mapped
over the checkpoints in chunks (:func:`jax.lax.map` with ``batch_size``), so the working memory
is one chunk's forward passes; the result is ``(m, N, ...)``.

These are the inputs of the trajectory geometry (Mao et al., PNAS 2024; arXiv 2505.08915):
Bhattacharyya distances between the checkpoints' predictive distributions and their InPCA
embedding (:mod:`matfree_tj.trajectory`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._train import FullBatch, TrainFn, resolve_trainable

__all__ = ["Trajectory", "record_trajectory", "trajectory_predictions", "PREDICTION_OUTPUTS"]

PREDICTION_OUTPUTS = ("probabilities", "log_probabilities", "raw")


class Trajectory(eqx.Module):
    r"""Checkpoints of one training run (from :func:`record_trajectory`), a pytree.

    Attributes
    ----------
    steps
        ``(m,)`` int array: the optimizer step of each checkpoint (0 = ``params0``; ``T`` =
        the end of training: ``params`` there equals ``train_fn.final_state(params0).params``).
    params
        The parameters, a pytree of ``params0``'s structure whose array leaves have a leading
        checkpoint axis of length ``m`` (non-array leaves, e.g. activation functions, as in
        ``params0``).
    model_state
        The model state at each checkpoint (same layout), or ``None`` without ``model_state=``.
    outputs
        ``train_fn.output(TrainState)`` at each checkpoint (the quantity J differentiates), or
        ``None`` without ``output=``.
    num_steps
        ``T``, the run's number of optimizer steps.
    mask_flat
        The resolved ``trainable`` mask as ``(treedef, flags)`` or ``None``: :meth:`flat` keeps
        the leaves that are variables of the training Jacobian, in its order.
    """

    steps: jax.Array
    params: Any
    model_state: Any
    outputs: Any
    num_steps: int = eqx.field(static=True)
    mask_flat: Any = eqx.field(static=True, default=None)

    @property
    def num_checkpoints(self) -> int:
        return int(np.shape(self.steps)[0])

    def at(self, i: int) -> Any:
        """The parameters at checkpoint ``i`` (a pytree of ``params0``'s structure)."""
        m = self.num_checkpoints
        if not -m <= int(i) < m:
            raise IndexError(f"checkpoint index {i} out of range for {m} checkpoints.")
        return jax.tree_util.tree_map(lambda x: x[i] if eqx.is_array(x) else x, self.params)

    def flat(self, *, which: str = "params") -> jax.Array:
        r"""The checkpoints as an ``(m, P)`` matrix, one ravelled parameter vector per row.

        The order is that of ``ravel_pytree`` on the variables of the training Jacobian (all
        array leaves, or the ``trainable`` ones), so row ``i`` is comparable entry by entry with
        ``J.params0_flat``; ``which="outputs"`` ravels ``outputs`` instead (with ``output=``).
        """
        if which not in ("params", "outputs"):
            raise ValueError(f"which must be 'params' or 'outputs', got {which!r}.")
        tree = self.params if which == "params" else self.outputs
        if tree is None:
            raise ValueError("this trajectory has no outputs: its train_fn has no output=.")
        if self.mask_flat is not None:
            treedef, flags = self.mask_flat
            tree = eqx.filter(tree, jax.tree_util.tree_unflatten(treedef, flags))
        leaves = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]
        m = self.num_checkpoints
        return jnp.concatenate([jnp.reshape(x, (m, -1)) for x in leaves], axis=1)


def _checkpoint_steps(T: int, every: Any, steps: Any) -> tuple[int, ...]:
    """The checkpoint steps as a sorted tuple, or a clear error."""
    if (every is None) == (steps is None):
        raise TypeError(
            "record_trajectory needs exactly one of every=k (steps 0, k, 2k, ..., T) or "
            "steps=[...] (explicit steps in [0, T])."
        )
    if every is not None:
        if isinstance(every, (bool, np.bool_)) or not isinstance(every, (int, np.integer)):
            raise TypeError(f"every must be an integer, got {every!r}.")
        if not 1 <= int(every) <= T:
            raise ValueError(f"Expected 1 <= every <= T = {T} (the run's steps), got {every}.")
        out = list(range(0, T + 1, int(every)))
        return tuple(out if out[-1] == T else [*out, T])
    try:
        arr = np.asarray(steps)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"steps must be a sequence of integers, got {steps!r}.") from e
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"steps must be a non-empty 1-d sequence of integers, got {steps!r}; e.g. "
            f"steps=[0, {T // 2}, {T}]."
        )
    if arr.min() < 0 or arr.max() > T or np.any(np.diff(arr) <= 0):
        raise ValueError(
            f"steps must be strictly increasing integers in [0, T = {T}], got {arr.tolist()}."
        )
    return tuple(int(s) for s in arr)


@eqx.filter_jit
def _record(train_fn: TrainFn, params0: Any, steps: tuple[int, ...]):
    carry0, step, finish = train_fn._pieces(params0)
    batches = train_fn.batches
    full = isinstance(batches, FullBatch)
    index_dtype = jnp.arange(1).dtype  # the dtype of the step index in TrainFn's scan

    def body(t, carry):
        batch = None if full else jax.tree_util.tree_map(lambda x: x[t], batches)
        return step(carry, (t, batch))[0]

    def emit(carry):
        st = finish(carry)
        out = None if train_fn.output is None else train_fn.output(st)
        return tuple(eqx.filter(x, eqx.is_array) for x in (st.params, st.model_state, out))

    def segment(carry, bounds):
        start, end = bounds
        # an empty interval (a checkpoint at step 0, or none between two) runs no step
        carry = jax.lax.fori_loop(start, end, body, carry)
        return carry, emit(carry)

    ends = np.asarray(steps)
    starts = np.concatenate([[0], ends[:-1]])
    bounds = (jnp.asarray(starts, index_dtype), jnp.asarray(ends, index_dtype))
    carry, stacked = jax.lax.scan(segment, carry0, bounds)
    # non-array leaves (activation functions, static fields) as the run has them
    st = finish(carry)
    out = None if train_fn.output is None else train_fn.output(st)
    statics = tuple(
        eqx.filter(x, eqx.is_array, inverse=True) for x in (st.params, st.model_state, out)
    )
    return tuple(eqx.combine(a, s) for a, s in zip(stacked, statics, strict=True))


def record_trajectory(
    train_fn: TrainFn,
    params0: Any,
    *,
    every: int | None = None,
    steps: Sequence[int] | None = None,
) -> Trajectory:
    r"""The parameters at checkpoint steps of one training run, from the run's own step.

    With ``every=k`` the checkpoints are steps :math:`0, k, 2k, \dots, T` (``T`` always
    included); with ``steps=[...]`` exactly those (strictly increasing, in ``[0, T]``). Step
    ``t`` means *after* ``t`` optimizer steps: step 0 is ``params0``, step ``T`` the trained
    parameters. The run is the one ``train_fn`` computes (the same step function, batches,
    per-step keys ``fold_in(key, t)``, model state and optimizer state), executed once as an
    outer :func:`jax.lax.scan` over the checkpoint intervals with an inner loop over each
    interval's steps; the checkpoints are the only record kept.

    Every :func:`~matfree_tj.make_train_fn` option is honoured: ``model_state=`` (the state is
    recorded too), ``key=``, ``trainable=`` (the run is unchanged; :meth:`Trajectory.flat`
    keeps the trainable leaves, as the training Jacobian does), ``output=`` (recorded at each
    checkpoint in ``outputs``). ``checkpoint`` and ``unroll`` only change reverse-mode memory
    and scheduling, not values, and are not used. The record is for analysis: its inner loops
    have traced bounds, so it has no reverse-mode derivative (differentiate ``train_fn``).

    Cost: one training run (``T`` loss gradients and optimizer updates) and one compile per
    ``(train_fn, steps)``; memory O(m x (P + model state)) for the ``m`` checkpoints plus one
    step's working memory.

    Parameters
    ----------
    train_fn
        A :class:`~matfree_tj.TrainFn` from :func:`~matfree_tj.make_train_fn` (its step is
        re-used; an arbitrary function has no steps to record).
    params0
        Initial parameters.
    every
        Checkpoint spacing ``k`` in steps, ``1 <= k <= T``.
    steps
        Explicit checkpoint steps (instead of ``every``).

    Returns
    -------
    Trajectory
        ``steps`` ``(m,)``, ``params`` with a leading checkpoint axis, ``model_state``,
        ``outputs``.

    Examples
    --------
    >>> import jax.numpy as jnp, optax, matfree_tj as mtj
    >>> X, y = jnp.eye(3), jnp.ones(3)
    >>> loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2) / 2
    >>> train = mtj.make_train_fn(loss, optax.sgd(1.5), mtj.full_batch_schedule((X, y), 5))
    >>> traj = mtj.record_trajectory(train, jnp.zeros(3), every=2)
    >>> traj.steps.tolist(), traj.params.shape
    ([0, 2, 4, 5], (4, 3))
    >>> [round(float(w), 4) for w in traj.params[:, 0]]  # 1 - (1 - 1.5/3)^t
    [0.0, 0.75, 0.9375, 0.9688]
    """
    if not isinstance(train_fn, TrainFn):
        raise TypeError(
            "record_trajectory needs a train_fn built by matfree_tj.make_train_fn (it re-uses "
            f"the run's optimizer step); got {type(train_fn).__name__}. Build the run with "
            "make_train_fn(loss_fn, optimizer, batches, ...)."
        )
    if not any(eqx.is_array(x) for x in jax.tree_util.tree_leaves(params0)):
        raise ValueError("params0 has no array leaves: there is nothing to record.")
    T = train_fn.num_steps
    chosen = _checkpoint_steps(T, every, steps)
    params, model_state, outputs = _record(train_fn, params0, chosen)
    mask = None
    if train_fn.trainable is not None:
        resolved = resolve_trainable(train_fn.trainable, params0)
        mask = (
            jax.tree_util.tree_structure(resolved),
            tuple(jax.tree_util.tree_leaves(resolved)),
        )
    return Trajectory(
        steps=np.asarray(chosen, dtype=np.int64),
        params=params,
        model_state=None if train_fn.model_state is None else model_state,
        outputs=outputs,
        num_steps=T,
        mask_flat=mask,
    )


@eqx.filter_jit
def _predict(apply_fn, arrays, static, mstate, mstatic, inputs, output, chunk):
    def one(a):
        p, ms = a
        params = eqx.combine(p, static)
        if ms is None:
            out = apply_fn(params, inputs)
        else:
            out = apply_fn(params, inputs, eqx.combine(ms, mstatic))
        if output == "probabilities":
            return jax.nn.softmax(out, axis=-1)
        if output == "log_probabilities":
            return jax.nn.log_softmax(out, axis=-1)
        return out

    return jax.lax.map(one, (arrays, mstate), batch_size=chunk)


def trajectory_predictions(
    apply_fn: Callable[..., jax.Array],
    trajectory: Trajectory,
    inputs: Any,
    *,
    output: str = "probabilities",
    chunk_size: int = 16,
    with_model_state: bool = False,
) -> jax.Array:
    r"""The model's predictions on a probe set at every checkpoint: ``(m, N, ...)``.

    Calls ``apply_fn(params_i, inputs)`` (or ``apply_fn(params_i, inputs, model_state_i)``
    with ``with_model_state=True``) for each checkpoint ``i`` and, for a classifier,
    turns the logits into per-sample class probabilities: ``output="probabilities"``
    (softmax over the last axis; the input of the categorical Bhattacharyya distance),
    ``"log_probabilities"`` (log-softmax: no underflow where a probability is below the
    dtype's smallest number) or ``"raw"`` (``apply_fn``'s output as is, e.g. the means of a
    regression for the Gaussian distance).

    Cost: ``m`` forward passes on ``N`` inputs, mapped over the checkpoints in chunks of
    ``chunk_size`` (:func:`jax.lax.map`), so the working memory is one chunk's forward
    passes, plus the ``(m, N, C)`` result. Compiles once per ``apply_fn`` and shapes.

    Parameters
    ----------
    apply_fn
        ``apply_fn(params, inputs) -> (N, ...)`` (logits for a classifier).
    trajectory
        From :func:`record_trajectory`.
    inputs
        The probe set (any pytree ``apply_fn`` accepts).
    output
        ``"probabilities"`` (default), ``"log_probabilities"`` or ``"raw"``.
    chunk_size
        Checkpoints evaluated together (``>= 1``).
    with_model_state
        Pass each checkpoint's model state as a third argument (runs with ``model_state=``).

    Returns
    -------
    jax.Array
        ``(m, N, ...)``: predictions of checkpoint ``i`` in row ``i``.

    Examples
    --------
    >>> import jax.numpy as jnp, optax, matfree_tj as mtj
    >>> import jax
    >>> X, y = jnp.eye(2), jnp.array([0, 1])
    >>> apply = lambda w, x: x @ w
    >>> loss = lambda w, b: -jnp.mean(jax.nn.log_softmax(apply(w, b[0]))[jnp.arange(2), b[1]])
    >>> train = mtj.make_train_fn(loss, optax.sgd(1.0), mtj.full_batch_schedule((X, y), 4))
    >>> traj = mtj.record_trajectory(train, jnp.zeros((2, 2)), every=2)
    >>> probs = mtj.trajectory_predictions(apply, traj, X)
    >>> probs.shape, [round(float(p), 3) for p in probs[:, 0, 0]]
    ((3, 2, 2), [0.5, 0.706, 0.803])
    """
    if not isinstance(trajectory, Trajectory):
        raise TypeError(
            "trajectory must be a Trajectory from matfree_tj.record_trajectory, got "
            f"{type(trajectory).__name__}."
        )
    if not callable(apply_fn):
        raise TypeError("apply_fn must be a callable apply_fn(params, inputs) -> predictions.")
    if output not in PREDICTION_OUTPUTS:
        raise ValueError(f"output must be one of {PREDICTION_OUTPUTS}, got {output!r}.")
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be an integer >= 1, got {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(f"Expected chunk_size >= 1, got {chunk_size}.")
    if with_model_state and trajectory.model_state is None:
        raise ValueError(
            "with_model_state=True, but the trajectory has no model state: its train_fn was "
            "built without model_state=."
        )
    arrays, static = eqx.partition(trajectory.params, eqx.is_array)
    mstate = mstatic = None
    if with_model_state:
        mstate, mstatic = eqx.partition(trajectory.model_state, eqx.is_array)
    chunk = min(int(chunk_size), trajectory.num_checkpoints)
    if output != "raw":
        # softmax over a (N,) output would normalise over the inputs, silently
        shape = jax.eval_shape(
            lambda: _predict(apply_fn, arrays, static, mstate, mstatic, inputs, "raw", chunk)
        ).shape
        if len(shape) < 3 or shape[-1] < 2:
            raise ValueError(
                f"output={output!r} takes the softmax over the last axis of apply_fn's output, "
                f"which must be (N, ..., C) logits with C >= 2 classes; got {tuple(shape[1:])} "
                "per checkpoint. For one logit z per input (binary) return "
                "jnp.stack([jnp.zeros_like(z), z], -1); for regression outputs use output='raw'."
            )
    return _predict(apply_fn, arrays, static, mstate, mstatic, inputs, output, chunk)
