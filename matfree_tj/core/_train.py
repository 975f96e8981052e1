r"""Training loops as pure JAX functions ``params0 -> params_T``.

The loop is a :func:`jax.lax.scan` over a pytree of batches whose leading axis indexes the
optimizer steps: batch ``t`` is used at step ``t``. Everything that is not the initial
parameters (data order, learning-rate schedule, optimizer-state initialisation) is fixed, so
the function is deterministic and differentiable, and its Jacobian is the training Jacobian
of Belrose & Scherlis (2024).

Three scan layouts trade memory of a reverse-mode product against recomputation:

``"none"``
    plain scan; reverse mode stores the residuals of every step (O(T) memory, fastest).
``"step"``
    each step is rematerialised (``jax.checkpoint``); reverse mode stores only the carry
    (parameters + optimizer state) per step: O(T x state).
``"sqrt"``
    nested scans: ``ceil(sqrt(T))`` blocks of ``~sqrt(T)`` rematerialised steps; reverse
    mode stores O(sqrt(T)) carries and one block's residuals: O(sqrt(T) x state).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "TrainFn",
    "FullBatch",
    "make_train_fn",
    "full_batch_schedule",
    "minibatch_schedule",
    "CHECKPOINT_MODES",
]

CHECKPOINT_MODES = ("none", "step", "sqrt")


class FullBatch(eqx.Module):
    """The same data at every one of ``num_steps`` steps (no copy per step)."""

    data: Any
    num_steps: int = eqx.field(static=True)


def _leading_sizes(leaves: list) -> set:
    """The distinct leading-axis lengths of ``leaves`` (``-1`` for a scalar)."""
    return {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in leaves}


def _num_steps(batches: Any) -> int:
    if isinstance(batches, FullBatch):
        return batches.num_steps
    leaves = jax.tree_util.tree_leaves(batches)
    if not leaves:
        raise ValueError("batches has no arrays: give a pytree of arrays with a leading step axis.")
    sizes = _leading_sizes(leaves)
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            "Every leaf of batches must have the same leading axis (the optimizer step); "
            f"got leading sizes {sorted(sizes)}. Build them with full_batch_schedule or "
            "minibatch_schedule."
        )
    (T,) = sizes
    if T < 1:
        raise ValueError("batches must hold at least one step.")
    return T


def _reject_list_of_steps(batches: Any) -> None:
    """A Python list of per-step batches (``[(x0, y0), (x1, y1), ...]``) is a pytree too, but
    its leaves' leading axis is the batch, not the step: say so instead of training on it."""
    if not isinstance(batches, list) or not batches:
        return
    structs = {jax.tree_util.tree_structure(b) for b in batches}
    if len(structs) != 1 or jax.tree_util.treedef_is_leaf(next(iter(structs))):
        return  # e.g. [X_steps, y_steps]: a list of stacked arrays is fine
    if _leading_sizes(jax.tree_util.tree_leaves(batches)) != {len(batches)}:
        raise TypeError(
            f"batches is a list of {len(batches)} per-step batches; make_train_fn wants one "
            "pytree whose leaves have a leading step axis. Stack them: "
            "batches = jax.tree.map(lambda *b: jnp.stack(b), *batches)."
        )


def _warn_adam_eps_root(optimizer: optax.GradientTransformation) -> None:
    """Warn if the optimizer's init state contains an Adam-like transform with eps_root == 0."""

    # optax keeps hyperparameters in closures; scan the closure cells for eps_root.
    def cells(fn, depth=0):
        if depth > 6 or not callable(fn):
            return
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                val = cell.cell_contents
            except ValueError:
                continue
            yield fn, val
            if callable(val):
                yield from cells(val, depth + 1)
            elif isinstance(val, (tuple, list)):
                for v in val:
                    if callable(v):
                        yield from cells(v, depth + 1)
                    for sub in (getattr(v, "update", None), getattr(v, "init", None)):
                        if callable(sub):
                            yield from cells(sub, depth + 1)

    for fn, _ in cells(optimizer.update):
        code = getattr(fn, "__code__", None)
        if code is None or "eps_root" not in code.co_freevars:
            continue
        idx = code.co_freevars.index("eps_root")
        try:
            eps_root = fn.__closure__[idx].cell_contents
        except (ValueError, IndexError):
            continue
        if isinstance(eps_root, (int, float)) and eps_root == 0:
            warnings.warn(
                "The optimizer uses Adam-style second-moment scaling with eps_root=0: its "
                "derivative through sqrt(nu) is infinite where nu == 0, so the training "
                "Jacobian may be NaN. Use e.g. optax.adam(lr, eps_root=1e-8).",
                stacklevel=3,
            )
            return


class TrainFn:
    r"""A deterministic training run ``params0 -> params_T`` (callable).

    Built by :func:`make_train_fn`; ``with_checkpoint(mode)`` returns the same run with a
    different reverse-mode memory layout (same values, same derivatives). A plain Python
    object hashed by identity, so ``jax.jit(train_fn)`` works and compiles once.
    """

    def __init__(self, loss_fn, optimizer, batches, checkpoint="none", unroll=1):
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.batches = batches
        self.checkpoint = checkpoint
        self.unroll = unroll

    def __repr__(self) -> str:
        return (
            f"TrainFn(num_steps={self.num_steps}, checkpoint={self.checkpoint!r}, "
            f"loss_fn={getattr(self.loss_fn, '__name__', self.loss_fn)})"
        )

    @property
    def num_steps(self) -> int:
        return _num_steps(self.batches)

    def with_checkpoint(self, mode: str) -> TrainFn:
        if mode not in CHECKPOINT_MODES:
            raise ValueError(f"checkpoint must be one of {CHECKPOINT_MODES}, got {mode!r}.")
        return TrainFn(self.loss_fn, self.optimizer, self.batches, mode, self.unroll)

    def __call__(self, params0: Any) -> Any:
        # Split array leaves (trained) from everything else (static, e.g. activation functions).
        arrays, static = eqx.partition(params0, eqx.is_array)
        opt_state = self.optimizer.init(arrays)
        loss_fn, optimizer = self.loss_fn, self.optimizer

        extra_args = isinstance(optimizer, optax.GradientTransformationExtraArgs)

        def step(carry, batch):
            p, s = carry
            value_fn = lambda a: loss_fn(eqx.combine(a, static), batch)  # noqa: E731
            if extra_args:
                # optax's extra-arguments protocol (polyak_sgd, lbfgs, chains of them):
                # transforms take what they need and ignore the rest.
                value, grads = jax.value_and_grad(value_fn)(p)
                updates, s = optimizer.update(
                    grads, s, p, value=value, grad=grads, value_fn=value_fn
                )
            else:
                grads = jax.grad(value_fn)(p)
                updates, s = optimizer.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        if isinstance(self.batches, FullBatch):
            # Scan over step indices and reuse the one data set: no (T, n, ...) copy.
            data = self.batches.data
            xs = jnp.arange(self.batches.num_steps)
            raw_step = step
            step = lambda c, _: raw_step(c, data)  # noqa: E731
        else:
            xs = self.batches

        carry = (arrays, opt_state)
        T = self.num_steps
        if self.checkpoint == "none":
            carry, _ = jax.lax.scan(step, carry, xs, unroll=self.unroll)
        elif self.checkpoint == "step":
            carry, _ = jax.lax.scan(jax.checkpoint(step), carry, xs, unroll=self.unroll)
        else:  # sqrt: outer scan of checkpointed blocks, each an inner scan of checkpointed steps
            block = math.isqrt(T - 1) + 1 if T > 1 else 1
            num_blocks, rest = divmod(T, block)
            head = jax.tree_util.tree_map(
                lambda x: x[: num_blocks * block].reshape(num_blocks, block, *x.shape[1:]), xs
            )
            tail = jax.tree_util.tree_map(lambda x: x[num_blocks * block :], xs)

            @jax.checkpoint
            def run_block(c, blk):
                c, _ = jax.lax.scan(jax.checkpoint(step), c, blk)
                return c, None

            carry, _ = jax.lax.scan(run_block, carry, head)
            if rest:
                carry, _ = jax.lax.scan(jax.checkpoint(step), carry, tail)
        return eqx.combine(carry[0], static)


def make_train_fn(
    loss_fn: Callable[[Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    batches: Any,
    *,
    checkpoint: str = "none",
    unroll: int = 1,
) -> TrainFn:
    r"""Build the training run ``params0 -> params_T`` as a pure JAX function.

    Parameters
    ----------
    loss_fn
        ``loss_fn(params, batch) -> scalar``. ``params`` is any pytree (dict, equinox
        module); non-array leaves are held fixed and not trained.
    optimizer
        Any ``optax.GradientTransformation``. Its state is initialised from ``params0`` inside
        the run, so it is part of the differentiated function. Transforms that take extra
        update arguments (``optax.GradientTransformationExtraArgs``, e.g. ``polyak_sgd``)
        receive ``value`` (the batch loss), ``grad`` and ``value_fn`` (the batch loss as a
        function of the parameters). Line searches built on ``lax.while_loop`` (e.g.
        ``optax.lbfgs``) have no reverse-mode derivative: :func:`training_jacobian` then says
        so. For Adam-type optimizers use
        ``eps_root > 0`` (e.g. ``optax.adam(lr, eps_root=1e-8)``): with ``eps_root == 0`` the
        derivative of ``sqrt(nu)`` is infinite where ``nu == 0`` and the Jacobian is NaN (a
        warning is issued when this can be detected).
    batches
        Pytree of arrays whose leading axis indexes optimizer steps: batch ``t`` is used at
        step ``t``. See :func:`full_batch_schedule` and :func:`minibatch_schedule`.
    checkpoint
        ``"none" | "step" | "sqrt"``: memory layout for reverse mode (see module docs).
    unroll
        Passed to :func:`jax.lax.scan`.

    Returns
    -------
    TrainFn
        A callable ``params0 -> params_T`` with the structure of ``params0``.

    Examples
    --------
    >>> import jax.numpy as jnp, optax, matfree_tj as mtj
    >>> X, y = jnp.ones((8, 3)), jnp.zeros(8)
    >>> loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2) / 2
    >>> train = mtj.make_train_fn(loss, optax.sgd(0.1), mtj.full_batch_schedule((X, y), 10))
    >>> train(jnp.ones(3)).shape
    (3,)
    """
    if not callable(loss_fn):
        raise TypeError("loss_fn must be a callable loss_fn(params, batch) -> scalar.")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError("optimizer must be an optax.GradientTransformation (with init and update).")
    if checkpoint not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_MODES}, got {checkpoint!r}.")
    if not isinstance(batches, FullBatch):
        _reject_list_of_steps(batches)
        batches = jax.tree_util.tree_map(jnp.asarray, batches)
    _num_steps(batches)
    _warn_adam_eps_root(optimizer)
    return TrainFn(loss_fn, optimizer, batches, checkpoint, int(unroll))


def full_batch_schedule(data: Any, num_steps: int) -> FullBatch:
    """The whole data set at every one of ``num_steps`` steps (stored once, not per step)."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    return FullBatch(jax.tree_util.tree_map(jnp.asarray, data), int(num_steps))


def minibatch_schedule(
    data: Any,
    batch_size: int,
    num_epochs: int,
    *,
    key: jax.Array | None = None,
    drop_remainder: bool = True,
) -> Any:
    r"""Minibatches in a fixed order over several epochs: leaves ``(steps, batch_size, ...)``.

    Without ``key`` the batches follow the data order in every epoch (the reference
    configuration: no reshuffle). With ``key`` the order is reshuffled once per epoch from
    ``jax.random.fold_in(key, epoch)``: still a fixed, reproducible schedule.

    ``drop_remainder=True`` drops the last incomplete batch of each epoch (1600 examples,
    batch 64 -> 25 steps per epoch); ``False`` raises if ``n`` is not a multiple of
    ``batch_size``, since ragged batches cannot be stacked.
    """
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError("data has no arrays.")
    n = int(np.shape(leaves[0])[0])
    if any(int(np.shape(x)[0]) != n for x in leaves):
        raise ValueError("Every leaf of data must have the same number of examples (leading axis).")
    if not 1 <= int(batch_size) <= n:
        raise ValueError(f"batch_size must satisfy 1 <= batch_size <= n = {n}, got {batch_size}.")
    if int(num_epochs) < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}.")
    per_epoch, rem = divmod(n, int(batch_size))
    if rem and not drop_remainder:
        raise ValueError(
            f"n = {n} is not a multiple of batch_size = {batch_size}; use drop_remainder=True."
        )
    orders = []
    for epoch in range(int(num_epochs)):
        if key is None:
            perm = jnp.arange(n)
        else:
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
        orders.append(perm[: per_epoch * batch_size])
    idx = jnp.concatenate(orders).reshape(per_epoch * int(num_epochs), int(batch_size))
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[idx], data)
