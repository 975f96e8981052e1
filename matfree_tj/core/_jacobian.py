r"""The training Jacobian :math:`J = \partial\theta_T / \partial\theta_0` as a matrix-free operator.

Forward products :math:`Jv` are ``jax.jvp`` through the training loop (memory flat in the
number of steps ``T``; each product re-runs the primal alongside the tangent, and a block
product shares one primal run among its columns). ``forward="linearize"`` instead runs the
primal once and caches the linearisation (residuals for every step: O(T) memory); the default
``"auto"`` caches whenever the residuals fit in a memory budget, since cached products are
~3x faster (measured on the reference model).

Reverse products :math:`J^T u` are ``jax.vjp`` through the training loop, with the reverse
memory layout picked by ``checkpoint`` (``"none"``, ``"step"``, ``"sqrt"``; see
:func:`matfree_tj.make_train_fn`). ``cache_reverse=True`` runs the primal once and keeps the
pullback (its residuals) for all later reverse products (``"auto"``: when it fits the budget).

References
----------
Belrose & Scherlis, "Understanding Gradient Descent through the Training Jacobian",
arXiv:2412.07003 (2024).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._distributed import least_over_processes
from ._operator import AbstractOperator, _check_settings
from ._train import CHECKPOINT_MODES, resolve_trainable, warn_narrow_optimizer_state

__all__ = ["TrainingJacobian", "training_jacobian"]


class TrainingJacobian(AbstractOperator):
    """The operator ``d train_fn(params0) / d params0`` on flat parameters (a pytree: the
    primal run and the cached linearisation / pullback are leaves, the training code is static).

    Attributes: ``params0_flat`` and ``params_T_flat`` (ravelled, ``(P,)``), ``unravel`` (flat
    vector -> parameter pytree), ``train_fn``, ``num_params`` and ``cached``. Built by
    :func:`training_jacobian`.

    With a ``trainable`` mask (see :func:`matfree_tj.make_train_fn`) the flat vectors hold the
    trainable leaves only (``P = P_trainable``) and ``unravel(theta)`` puts ``theta`` into
    the trainable leaves and ``params0``'s values into the frozen ones: the input point of
    the map J linearises, so ``train_fn(J.unravel(J.params0_flat + eps * v))`` is the run
    perturbed along ``v``. For a direction alone use
    ``eqx.filter(J.unravel(v), J.trainable)``; ``J.trainable`` is the resolved mask
    (``None`` without one).
    """

    params0_flat: jax.Array
    params_T_flat: jax.Array
    linearisation: Any  # cached forward product (a pytree of residuals) or None
    pullback: Any  # cached reverse product (a pytree of residuals) or None
    forward_fn: Callable = eqx.field(static=True)  # flat params0 -> flat params_T
    reverse_fn: Callable = eqx.field(static=True)  # the same run, reverse-mode memory layout
    unravel: Callable = eqx.field(static=True)
    train_fn: Callable = eqx.field(static=True)
    # The mask as (treedef, flags): static fields must be hashable, a dict of bools is not.
    mask_flat: Any = eqx.field(static=True, default=None)

    def _mv(self, v):
        if self.linearisation is not None:
            return self.linearisation(v)
        return jax.jvp(self.forward_fn, (self.params0_flat,), (v,))[1]

    def _rmv(self, u):
        if self.pullback is not None:
            return self.pullback(u)[0]
        return jax.vjp(self.reverse_fn, self.params0_flat)[1](u)[0]

    @property
    def cached(self) -> dict:
        """Which products use a cache: ``{"forward": bool, "reverse": bool}``."""
        return {"forward": self.linearisation is not None, "reverse": self.pullback is not None}

    @property
    def trainable(self) -> Any:
        """The resolved ``trainable`` mask (bools, ``params0``'s structure) or ``None``."""
        if self.mask_flat is None:
            return None
        treedef, flags = self.mask_flat
        return jax.tree_util.tree_unflatten(treedef, flags)

    @property
    def num_params(self) -> int:
        return self.shape[0]


def _check_params(params0: Any) -> None:
    arrays = [x for x in jax.tree_util.tree_leaves(params0) if eqx.is_array(x)]
    if not arrays:
        raise ValueError("params0 has no array leaves: nothing to differentiate.")
    for path, x in jax.tree_util.tree_leaves_with_path(params0):
        if eqx.is_array(x) and not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"params0 leaf {jax.tree_util.keystr(path)} has dtype {x.dtype.name}; the training "
                "Jacobian needs floating-point parameters. If it is a counter (a BatchNorm step "
                "count, an RNG counter) it is not a parameter: carry it as model state "
                "(make_train_fn(..., model_state=s0)) or close over it in loss_fn. Cast it "
                "(x.astype(jnp.float32)) only if it really is a trainable weight."
            )


def default_cache_budget(x: jax.Array) -> int:
    """A quarter of the memory of the device holding ``x`` (host RAM on CPU), at least 1 GiB."""
    total = None
    try:
        dev = next(iter(x.devices()))
        if dev.platform != "cpu":
            total = (dev.memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - memory_stats is optional per backend
        total = None
    if total is None:
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            total = 8 * 1024**3
    return max(int(total) // 4, 1024**3)


def _describe(tree: Any) -> str:
    return str(jax.tree_util.tree_map(lambda s: f"{s.dtype.name}{list(s.shape)}", tree))


def training_jacobian(
    train_fn: Callable[[Any], Any],
    params0: Any,
    *,
    forward: str = "auto",
    checkpoint: str = "none",
    cache_reverse: bool | str = "auto",
    cache_budget_bytes: int | None = None,
    chunk_size: int = 64,
    mesh: jax.sharding.Mesh | None = None,
    check_finite: bool = True,
    check_deterministic: bool = True,
) -> TrainingJacobian:
    r"""The training Jacobian ``d train_fn(params0) / d params0`` as a linear operator.

    Parameters are flattened once with ``ravel_pytree`` (array leaves only: non-array leaves,
    such as the activation functions of equinox modules *and plain Python floats*, are held
    fixed and are not part of ``J``; wrap a trainable scalar as ``jnp.asarray(x)``). With
    mixed dtypes the flat vector, and so ``J.dtype``, take the promoted dtype, but each
    leaf's tangent is computed in that leaf's own dtype: a float32 leaf limits the products
    to float32 accuracy (set ``tol``/``atol`` of the solvers accordingly, or cast all leaves
    to one dtype).

    Built from a :func:`matfree_tj.make_train_fn` run, J follows its options: with
    ``trainable=`` it is :math:`\partial\theta_T^{\rm tr} / \partial\theta_0^{\rm tr}` on the
    True leaves only (shape ``(P_trainable, P_trainable)``; the frozen leaves start at
    ``params0``'s values); with ``model_state=`` and ``key=`` the state trajectory and the
    per-step keys are part of the run (the initial state is fixed); with ``output=`` it is
    the Jacobian of that output. A float optimizer-state array narrower than the parameters
    (``optax.MultiSteps``' float32 accumulator in a float64 run) caps the products' accuracy:
    a warning names the option to widen it.

    Parameters
    ----------
    train_fn
        Deterministic ``params -> params`` (e.g. from :func:`matfree_tj.make_train_fn`).
    params0
        Initial parameters (pytree of floating arrays).
    forward
        ``"jvp"`` (memory flat in T; the primal is re-run inside every product),
        ``"linearize"`` (primal once, cached linearisation: O(T) memory, products ~3x faster),
        or ``"auto"`` (default): ``"linearize"`` when the cached residuals fit in
        ``cache_budget_bytes``, else ``"jvp"``.
    checkpoint
        Reverse-product memory layout: ``"none"`` (O(T) residuals), ``"step"``
        (O(T x state)), ``"sqrt"`` (O(sqrt(T) x state)). Needs a ``train_fn`` from
        :func:`~matfree_tj.make_train_fn` unless ``"none"``.
    cache_reverse
        ``True``: keep the pullback from one primal run for all reverse products (memory as
        set by ``checkpoint``; products ~3x faster); ``False``: re-run the primal in each
        product; ``"auto"`` (default): cache when it fits in ``cache_budget_bytes``.
    cache_budget_bytes
        Memory allowed for the two caches together under ``"auto"`` (the forward cache is
        considered first, the reverse one gets what is left). Default ``None``: a quarter of
        the memory of the device holding ``params0`` (host RAM on CPU; at least 1 GiB); across
        processes (``jax.distributed``) the smallest of theirs, so all cache alike.
        Sizes are found abstractly (``jax.eval_shape``) before anything is stored;
        ``J.cached`` says what was cached.
    chunk_size
        Columns per vmapped chunk of a block product.
    mesh
        Device mesh over whose first axis block products split their columns.
    check_finite
        Raise on NaN/inf in the trained parameters and in any product.
    check_deterministic
        Run the training twice and raise if the results differ.

    Cost: construction runs the training once (twice with ``check_deterministic``) plus one
    compile per product kind. ``mv`` ~ 2-3 training runs; ``rmv`` ~ 3-5 (more with
    checkpointing); a ``k``-column block product shares one primal run.

    Examples
    --------
    >>> import jax.numpy as jnp, optax, matfree_tj as mtj
    >>> X = jnp.eye(3); y = jnp.zeros(3)
    >>> loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2) / 2
    >>> train = mtj.make_train_fn(loss, optax.sgd(0.5), mtj.full_batch_schedule((X, y), 2))
    >>> J = mtj.training_jacobian(train, jnp.ones(3))
    >>> [round(float(x), 5) for x in J.mv(jnp.ones(3))]  # (1 - 0.5/3)^2 on each axis
    [0.69444, 0.69444, 0.69444]
    """
    if forward not in ("jvp", "linearize", "auto"):
        raise ValueError(f"forward must be 'jvp', 'linearize' or 'auto', got {forward!r}.")
    if cache_reverse not in (True, False, "auto"):
        raise ValueError(f"cache_reverse must be True, False or 'auto', got {cache_reverse!r}.")
    if checkpoint not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_MODES}, got {checkpoint!r}.")
    if not callable(train_fn):
        raise TypeError("train_fn must be a callable params -> params.")
    _check_params(params0)

    mask = getattr(train_fn, "trainable", None)
    if mask is not None:
        mask = resolve_trainable(mask, params0)
    spec = eqx.is_array if mask is None else mask
    arrays0 = eqx.filter(params0, eqx.is_array)
    if hasattr(train_fn, "optimizer"):
        warn_narrow_optimizer_state(train_fn.optimizer, arrays0, stacklevel=2)
    # The variables of J (all array leaves, or the trainable ones) and the rest, held fixed.
    variables0, rest = eqx.partition(params0, spec)
    theta0, unravel_vars = ravel_pytree(variables0)
    P = theta0.shape[0]
    dtype = theta0.dtype

    def unravel(theta):
        return eqx.combine(unravel_vars(theta), rest)

    # Output structure must equal input structure: check abstractly before running anything.
    in_shapes = jax.eval_shape(lambda a: a, arrays0)
    try:
        out_full = eqx.filter_eval_shape(train_fn, params0)
    except ValueError:  # make_train_fn's own checks (e.g. a model state changing layout)
        raise
    except Exception as e:  # noqa: BLE001 - re-raise with context
        raise TypeError(f"train_fn(params0) failed to trace: {e}") from e
    out_arrays = eqx.filter(out_full, lambda x: isinstance(x, jax.ShapeDtypeStruct))
    if jax.tree_util.tree_structure(out_arrays) != jax.tree_util.tree_structure(in_shapes) or any(
        (a.shape, a.dtype) != (b.shape, b.dtype)
        for a, b in zip(
            jax.tree_util.tree_leaves(out_arrays), jax.tree_util.tree_leaves(in_shapes), strict=True
        )
    ):
        raise ValueError(
            "train_fn must return parameters with the same structure, shapes and dtypes as its "
            f"input.\n  input:  {_describe(in_shapes)}\n  output: {_describe(out_arrays)}\n"
            "Return only the trained parameters (e.g. drop optimizer state or metrics); "
            "make_train_fn's output= must return a pytree with the structure of params."
        )

    def reverse_train_fn():
        if checkpoint == "none":
            return train_fn
        if not hasattr(train_fn, "with_checkpoint"):
            raise ValueError(
                f"checkpoint={checkpoint!r} needs a train_fn built by matfree_tj.make_train_fn "
                "(it changes the scan layout); use checkpoint='none' for an arbitrary function."
            )
        return train_fn.with_checkpoint(checkpoint)

    def flat(fn):
        def f(theta):
            out = eqx.filter(fn(unravel(theta)), spec)
            return ravel_pytree(out)[0]

        return f

    f_fwd = flat(train_fn)
    f_rev = flat(reverse_train_fn())

    try:
        theta_T = jax.jit(f_fwd)(theta0)
        jax.eval_shape(lambda v: jax.jvp(f_fwd, (theta0,), (v,)), theta0)
        jax.eval_shape(lambda u: jax.vjp(f_rev, theta0)[1](u), theta_T)
    except Exception as e:  # noqa: BLE001
        raise TypeError(
            "train_fn is not differentiable by JAX (jvp/vjp failed to trace). Make the training "
            "a pure JAX function of params0 (no NumPy, no Python control flow on values, no "
            f"non-differentiable callbacks). Original error: {e}"
        ) from e

    if check_finite and not bool(jnp.all(jnp.isfinite(theta_T))):
        raise FloatingPointError(
            "Training produced NaN or inf parameters: the run diverged. Lower the learning rate, "
            "check the data for non-finite values, or use a smaller number of steps."
        )
    if check_deterministic:
        again = jax.jit(lambda th: f_fwd(th))(theta0)  # a fresh trace, not the cached one
        # Identical NaNs count as equal (NaN data with check_finite=False is not randomness).
        if not bool(jnp.all((again == theta_T) | (jnp.isnan(again) & jnp.isnan(theta_T)))):
            raise ValueError(
                "train_fn is not deterministic: two runs from the same params0 differ (max "
                f"abs difference {float(jnp.nanmax(jnp.abs(again - theta_T))):.3g}). Fix the batch "
                "order and all randomness (pass keys explicitly) so params_T depends only on "
                "params0."
            )

    def cache_bytes(make):
        shapes = jax.eval_shape(make, theta0)
        return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))

    if cache_budget_bytes is None:
        # several processes (jax.distributed): the smallest host's budget, so that every
        # process caches the same things and runs the same programs
        budget = least_over_processes(default_cache_budget(theta0))
    else:
        budget = cache_budget_bytes
    if forward == "auto":
        lin_bytes = cache_bytes(lambda th: jax.linearize(f_fwd, th)[1])
        forward = "linearize" if lin_bytes <= budget else "jvp"
        budget -= lin_bytes if forward == "linearize" else 0
    if cache_reverse == "auto":
        cache_reverse = cache_bytes(lambda th: jax.vjp(f_rev, th)[1]) <= budget

    lin = pullback = None
    if forward == "linearize":
        lin = jax.jit(lambda th: jax.linearize(f_fwd, th)[1])(theta0)
    if cache_reverse:
        pullback = jax.jit(lambda th: jax.vjp(f_rev, th)[1])(theta0)
    shape, chunk_size = _check_settings((P, P), chunk_size)
    return TrainingJacobian(
        shape=shape,
        dtype=jnp.dtype(dtype),
        chunk_size=chunk_size,
        mesh=mesh,
        check_finite=bool(check_finite),
        params0_flat=theta0,
        params_T_flat=theta_T,
        linearisation=lin,
        pullback=pullback,
        forward_fn=f_fwd,
        reverse_fn=f_rev,
        unravel=unravel,
        train_fn=train_fn,
        mask_flat=None
        if mask is None
        else (jax.tree_util.tree_structure(mask), tuple(jax.tree_util.tree_leaves(mask))),
    )
