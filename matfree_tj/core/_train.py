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

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "TrainFn",
    "TrainState",
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
            warnings.warn(_EPS_ROOT_MESSAGE, stacklevel=3)
            return
    if _injected_eps_root_zero(optimizer):
        warnings.warn(_EPS_ROOT_MESSAGE, stacklevel=3)


def _injected_eps_root_zero(optimizer: Any) -> bool:
    """Whether an ``optax.inject_hyperparams`` wrapper inside ``optimizer`` holds ``eps_root == 0``.

    Injected hyperparameters live in the optimizer *state*, not in closures: initialise on an
    empty parameter tree (cheap, no arrays of the model's size) and look for them there."""
    try:
        state = optimizer.init({})
    except Exception:  # noqa: BLE001 - an optimizer that needs real parameters: nothing to see
        return False

    def has_hparams(x):
        return isinstance(getattr(x, "hyperparams", None), dict)

    for node in jax.tree_util.tree_leaves(state, is_leaf=has_hparams):
        if has_hparams(node) and "eps_root" in node.hyperparams:
            value = node.hyperparams["eps_root"]
            if eqx.is_array_like(value) and np.ndim(value) == 0 and float(value) == 0.0:
                return True
    return False


_EPS_ROOT_MESSAGE = (
    "The optimizer uses Adam-style second-moment scaling with eps_root=0: its derivative "
    "through sqrt(nu) is infinite where nu == 0, so the training Jacobian may be NaN. Use e.g. "
    "optax.adam(lr, eps_root=1e-8) (with optax.inject_hyperparams: "
    "optax.inject_hyperparams(optax.adam)(learning_rate=lr, eps_root=1e-8))."
)


def warn_narrow_optimizer_state(optimizer: Any, params: Any, stacklevel: int = 2) -> None:
    """Warn when an array of the optimizer state is narrower than every parameter.

    A float32 accumulator in a float64 run (``optax.MultiSteps`` keeps one by default) rounds
    every step to float32, which caps the accuracy of each product at ~1e-7 relative whatever
    the solvers' tolerance. Scalars (hyperparameters, counts) are left alone."""
    arrays = eqx.filter(params, eqx.is_inexact_array)
    widths = [x.dtype.itemsize for x in jax.tree_util.tree_leaves(arrays)]
    if not widths:
        return
    try:
        state = jax.eval_shape(optimizer.init, arrays)
    except Exception:  # noqa: BLE001 - the run itself reports an optimizer that cannot init
        return
    narrowest = min(widths)
    for path, x in jax.tree_util.tree_leaves_with_path(state):
        if (
            isinstance(x, jax.ShapeDtypeStruct)
            and x.ndim > 0
            and jnp.issubdtype(x.dtype, jnp.inexact)
            and x.dtype.itemsize < narrowest
        ):
            warnings.warn(
                f"The optimizer state leaf {jax.tree_util.keystr(path)} is {x.dtype.name}, "
                "narrower than the parameters: every step rounds through it, so J's products "
                f"are accurate only to {x.dtype.name} precision. Give the optimizer the "
                "parameters' dtype for its state (optax.MultiSteps(..., "
                "accumulator_dtype=jnp.float64); optax.adam(..., mu_dtype=jnp.float64)).",
                stacklevel=stacklevel + 1,
            )
            return


class TrainState(NamedTuple):
    """The state at the end of a training run: what ``output=`` receives.

    ``params``: the parameters (pytree of ``params0``'s structure); ``opt_state``: the
    optimizer state; ``model_state``: the model state (``None`` without ``model_state=``)."""

    params: Any
    opt_state: Any
    model_state: Any


def _describe(tree: Any) -> str:
    def one(x):
        return f"{x.dtype.name}{list(x.shape)}" if hasattr(x, "dtype") else repr(x)

    return str(jax.tree_util.tree_map(one, tree))


def _same_layout(a: Any, b: Any) -> bool:
    """Same tree structure, and the same shape and dtype at every array leaf."""
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        if eqx.is_array(x) != eqx.is_array(y):
            return False
        if eqx.is_array(x) and (x.shape, x.dtype) != (y.shape, y.dtype):
            return False
    return True


def _loss_call(has_state: bool, has_key: bool) -> str:
    args = "params, batch" + (", model_state" if has_state else "")
    ret = "(loss, new_model_state)" if has_state else "loss"
    return f"loss_fn({args}{', key=key' if has_key else ''}) -> {ret}"


def _check_signature(loss_fn: Callable, has_state: bool, has_key: bool) -> None:
    """Fail at construction, naming the option, when ``loss_fn`` cannot take the call the
    options imply (a signature we cannot inspect is checked when the run is traced)."""
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        return

    def binds(state, key):
        try:
            sig.bind(*((0, 0, 0) if state else (0, 0)), **({"key": 0} if key else {}))
        except TypeError:
            return False
        return True

    if binds(has_state, has_key):
        return
    if not has_state and binds(True, has_key):
        hint = "It takes a third argument: pass make_train_fn(..., model_state=s0)."
    elif not has_key and binds(has_state, True):
        hint = "It needs a key: pass make_train_fn(..., key=jax.random.key(0))."
    elif has_key and binds(has_state, False):
        hint = "Add a keyword parameter: def loss_fn(..., *, key), or drop key=."
    elif has_state and binds(False, has_key):
        hint = "It takes no model state: drop model_state=, or add the argument."
    else:
        hint = "Change loss_fn's signature or the options."
    raise TypeError(
        f"With the options given, make_train_fn calls {_loss_call(has_state, has_key)}, but "
        f"loss_fn{sig} cannot be called that way. {hint}"
    )


def resolve_trainable(trainable: Any, params0: Any) -> Any:
    """The mask ``trainable`` (a pytree of bools, or a callable ``params -> pytree``) checked
    against ``params0``: a pytree of Python bools of ``params0``'s structure, True exactly at
    the array leaves that are variables of J."""
    mask = trainable
    if callable(mask) and not isinstance(mask, eqx.Module):
        mask = mask(params0)
    fix = (
        "Build it from the parameters, e.g. mask = jax.tree.map(lambda _: False, params0) and "
        "then set the trainable leaves to True (eqx.tree_at for modules), or pass a callable "
        "params -> mask."
    )
    p_def = jax.tree_util.tree_structure(params0)
    m_def = jax.tree_util.tree_structure(mask)
    if p_def != m_def:
        raise ValueError(
            "trainable must have the structure of params0, one bool per leaf.\n"
            f"  params0: {p_def}\n  trainable: {m_def}\n{fix}"
        )
    flags = []
    for path, m in jax.tree_util.tree_leaves_with_path(mask):
        if not isinstance(m, (bool, np.bool_)):
            raise TypeError(
                f"trainable leaf {jax.tree_util.keystr(path)} is {m!r}, not a bool: the mask "
                f"takes one Python bool per leaf (a whole array is trainable or not). {fix}"
            )
        flags.append(bool(m))
    leaves = jax.tree_util.tree_leaves(params0)
    flags = [f and eqx.is_array(x) for f, x in zip(flags, leaves, strict=True)]
    if not any(flags):
        raise ValueError(
            "trainable marks no array leaf of params0 True: J would have no variables. Mark at "
            "least one parameter array True (leaves that are not arrays are never variables)."
        )
    return jax.tree_util.tree_unflatten(p_def, flags)


class TrainFn:
    r"""A deterministic training run ``params0 -> params_T`` (callable).

    Built by :func:`make_train_fn`; ``with_checkpoint(mode)`` returns the same run with a
    different reverse-mode memory layout (same values, same derivatives). A plain Python
    object hashed by identity, so ``jax.jit(train_fn)`` works and compiles once.

    ``train_fn(params0)`` returns ``params_T`` (or ``output(final)`` when built with
    ``output=``); ``train_fn.final_state(params0)`` returns the whole final
    :class:`TrainState` (parameters, optimizer state, model state).
    """

    def __init__(
        self,
        loss_fn,
        optimizer,
        batches,
        checkpoint="none",
        unroll=1,
        *,
        model_state=None,
        key=None,
        trainable=None,
        output=None,
    ):
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.batches = batches
        self.checkpoint = checkpoint
        self.unroll = unroll
        self.model_state = model_state
        self.key = key
        self.trainable = trainable
        self.output = output

    def __repr__(self) -> str:
        opts = "".join(
            f", {name}=..."
            for name in ("model_state", "key", "trainable", "output")
            if getattr(self, name) is not None
        )
        return (
            f"TrainFn(num_steps={self.num_steps}, checkpoint={self.checkpoint!r}, "
            f"loss_fn={getattr(self.loss_fn, '__name__', self.loss_fn)}{opts})"
        )

    @property
    def num_steps(self) -> int:
        return _num_steps(self.batches)

    def with_checkpoint(self, mode: str) -> TrainFn:
        if mode not in CHECKPOINT_MODES:
            raise ValueError(f"checkpoint must be one of {CHECKPOINT_MODES}, got {mode!r}.")
        return TrainFn(
            self.loss_fn,
            self.optimizer,
            self.batches,
            mode,
            self.unroll,
            model_state=self.model_state,
            key=self.key,
            trainable=self.trainable,
            output=self.output,
        )

    def __call__(self, params0: Any) -> Any:
        final = self.final_state(params0)
        return final.params if self.output is None else self.output(final)

    def _value_fn(self, static, batch, mstate, mstatic, t):
        """The step's loss as a function of the trained arrays: ``a -> (loss, new_state)``."""
        loss_fn, has_state, key = self.loss_fn, self.model_state is not None, self.key
        call = _loss_call(has_state, key is not None)

        def value_fn(a):
            args = (eqx.combine(a, static), batch)
            if has_state:
                args += (eqx.combine(mstate, mstatic),)
            kwargs = {} if key is None else {"key": jax.random.fold_in(key, t)}
            out = loss_fn(*args, **kwargs)
            if not has_state:
                if isinstance(out, tuple):
                    raise TypeError(
                        f"loss_fn returned a tuple; make_train_fn expects {call}. If the second "
                        "element is a model state, pass make_train_fn(..., model_state=s0)."
                    )
                return out, None
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    f"With model_state= given, loss_fn must return (loss, new_model_state) "
                    f"({call}); it returned {type(out).__name__}."
                )
            loss, new = out
            old = eqx.combine(mstate, mstatic)
            if not _same_layout(new, old):
                raise ValueError(
                    "loss_fn changed the model state's structure, shape or dtype in a step; "
                    "the state is carried through a lax.scan and must keep its layout.\n"
                    f"  before: {_describe(old)}\n  after:  {_describe(new)}\n"
                    "Return the new state with the initial state's structure (cast with "
                    "x.astype(old.dtype) where a dtype drifts)."
                )
            return loss, eqx.filter(new, eqx.is_array)

        return value_fn

    def _pieces(self, params0: Any):
        """The run's parts, shared by :meth:`final_state` and
        :func:`~matfree_tj.record_trajectory`: ``(carry0, step, finish)``.

        ``step(carry, (t, batch)) -> (carry, None)`` is one optimizer step (``batch`` is
        ignored for a :class:`FullBatch` schedule); ``finish(carry) -> TrainState`` puts the
        static leaves back."""
        # Split array leaves (trained) from everything else (static, e.g. activation functions).
        arrays, static = eqx.partition(params0, eqx.is_array)
        opt_state = self.optimizer.init(arrays)
        mstate, mstatic = eqx.partition(self.model_state, eqx.is_array)
        optimizer = self.optimizer
        extra_args = isinstance(optimizer, optax.GradientTransformationExtraArgs)
        full_batch = isinstance(self.batches, FullBatch)

        def step(carry, x):
            p, s, m = carry
            t, batch = x
            if full_batch:
                batch = self.batches.data  # the one data set, not a (T, n, ...) copy
            value_fn = self._value_fn(static, batch, m, mstatic, t)
            (value, m), grads = jax.value_and_grad(value_fn, has_aux=True)(p)
            if extra_args:
                # optax's extra-arguments protocol (polyak_sgd, lbfgs, chains of them):
                # transforms take what they need and ignore the rest.
                updates, s = optimizer.update(
                    grads, s, p, value=value, grad=grads, value_fn=lambda a: value_fn(a)[0]
                )
            else:
                updates, s = optimizer.update(grads, s, p)
            return (optax.apply_updates(p, updates), s, m), None

        def finish(carry) -> TrainState:
            p, s, m = carry
            model_state = None if self.model_state is None else eqx.combine(m, mstatic)
            return TrainState(eqx.combine(p, static), s, model_state)

        return (arrays, opt_state, mstate), step, finish

    def final_state(self, params0: Any) -> TrainState:
        """Run the training and return the final :class:`TrainState` (differentiable)."""
        carry, step, finish = self._pieces(params0)
        full_batch = isinstance(self.batches, FullBatch)
        T = self.num_steps
        # The step index rides along with the batches: per-step keys are fold_in(key, t).
        xs = (jnp.arange(T), None if full_batch else self.batches)
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
        return finish(carry)


def make_train_fn(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    batches: Any,
    *,
    checkpoint: str = "none",
    unroll: int = 1,
    model_state: Any = None,
    key: jax.Array | None = None,
    trainable: Any = None,
    output: Callable[[TrainState], Any] | None = None,
) -> TrainFn:
    r"""Build the training run ``params0 -> params_T`` as a pure JAX function.

    At step :math:`t = 0, \dots, T-1`, with batch :math:`b_t`, model state :math:`s_t`
    (:math:`s_0` fixed) and key :math:`k_t = \mathrm{fold\_in}(k, t)`,

    .. math::

        (\ell_t, s_{t+1}) = L(\theta_t, b_t, s_t; k_t), \qquad
        (u_t, o_{t+1}) = \mathrm{opt}(\nabla_\theta \ell_t, o_t, \theta_t), \qquad
        \theta_{t+1} = \theta_t + u_t,

    with :math:`o_0 = \mathrm{opt.init}(\theta_0)`. The training Jacobian is
    :math:`\partial\theta_T / \partial\theta_0` (or of ``output``): the model-state and
    optimizer-state trajectories depend on :math:`\theta_0` and J includes that dependence.
    Cost: one run is ``T`` loss gradients and optimizer updates.

    Parameters
    ----------
    loss_fn
        ``loss_fn(params, batch) -> scalar``; with ``model_state=``,
        ``loss_fn(params, batch, model_state) -> (loss, new_model_state)``; with ``key=``, it
        is also given the keyword ``key``. ``params`` is any pytree (dict, equinox module);
        non-array leaves are held fixed and not trained.
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
        warning is issued when this can be detected, ``optax.inject_hyperparams`` included).
    batches
        Pytree of arrays whose leading axis indexes optimizer steps: batch ``t`` is used at
        step ``t``. See :func:`full_batch_schedule` and :func:`minibatch_schedule`.
    checkpoint
        ``"none" | "step" | "sqrt"``: memory layout for reverse mode (see module docs).
    unroll
        Passed to :func:`jax.lax.scan`.
    model_state
        Initial model state :math:`s_0` (any pytree: BatchNorm statistics, ``eqx.nn.State``,
        flax ``batch_stats``), carried through the scan. Fixed: not a variable of J. Each
        step must return a state of the same structure, shapes and dtypes. Integer leaves
        (step counts, RNG counters) belong here, not in ``params``.
    key
        A PRNG key; step ``t`` calls ``loss_fn(..., key=jax.random.fold_in(key, t))``
        (``t`` 0-based), so any step can be reproduced by hand.
    trainable
        Pytree of Python bools with the structure of ``params0`` (or a callable
        ``params -> such a pytree``): :func:`training_jacobian` takes J with respect to the
        True leaves only, shape ``(P_trainable, P_trainable)``. It does not change the run:
        False leaves start from ``params0`` and are updated as the optimizer says (freeze them
        with e.g. ``optax.masked`` if wanted).
    output
        ``output(final: TrainState) -> pytree with the structure of params`` (e.g. EMA
        parameters kept in the optimizer state): the run then returns it instead of
        ``params_T``, and J is its Jacobian.

    Returns
    -------
    TrainFn
        A callable ``params0 -> params_T`` (or ``output``) with the structure of ``params0``;
        ``.final_state(params0)`` gives the whole :class:`TrainState`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, optax, matfree_tj as mtj
    >>> X, y = jnp.ones((8, 3)), jnp.zeros(8)
    >>> loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2) / 2
    >>> train = mtj.make_train_fn(loss, optax.sgd(0.1), mtj.full_batch_schedule((X, y), 10))
    >>> train(jnp.ones(3)).shape
    (3,)

    A running mean as model state and a dropout key:

    >>> def loss_s(w, b, mean, *, key):
    ...     keep = jax.random.bernoulli(key, 0.8, w.shape)
    ...     pred = b[0] @ (w * keep)
    ...     new_mean = 0.9 * mean + 0.1 * jnp.mean(pred)
    ...     return jnp.mean((pred - new_mean - b[1]) ** 2) / 2, new_mean
    >>> batches = mtj.full_batch_schedule((X, y), 4)
    >>> train = mtj.make_train_fn(
    ...     loss_s, optax.sgd(0.1), batches, model_state=jnp.zeros(()), key=jax.random.key(0)
    ... )
    >>> train.final_state(jnp.ones(3)).model_state.shape
    ()
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
    if key is not None:
        try:
            jax.random.fold_in(key, 0)
        except Exception as e:  # noqa: BLE001 - re-raise with the fix
            raise TypeError(
                f"key must be a JAX PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)): {e}"
            ) from e
    if output is not None and not callable(output):
        raise TypeError("output must be a callable output(final: TrainState) -> pytree.")
    if trainable is not None and not (isinstance(trainable, eqx.Module) or callable(trainable)):
        if not jax.tree_util.tree_leaves(trainable):
            raise ValueError("trainable is an empty pytree: give one bool per leaf of params0.")
    _check_signature(loss_fn, model_state is not None, key is not None)
    _warn_adam_eps_root(optimizer)
    return TrainFn(
        loss_fn,
        optimizer,
        batches,
        checkpoint,
        int(unroll),
        model_state=model_state,
        key=key,
        trainable=trainable,
        output=output,
    )


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
