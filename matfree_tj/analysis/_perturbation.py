r"""Experiments 3 and 4: retraining along a direction (does the linearisation hold?) and the
effect of a final-parameter perturbation on in- and out-of-distribution outputs.

Both run the model or its training; neither needs a product of ``J`` beyond the one that
:func:`perturbation_response` spends when no singular pair is given.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._common import _np, model_inputs

# The per-eps measurements of a PerturbationResponse, in the order of its JSON rows.
_ROW_FIELDS = (
    "eps",
    "projection",
    "expected",
    "remainder",
    "delta_norm",
    "linearisation_error",
)


@dataclasses.dataclass(frozen=True)
class PerturbationResponse:
    r"""Result of :func:`perturbation_response`: one entry per ``eps`` (ascending) in each array.

    With ``delta = theta_T(theta_0 + eps v) - theta_T(theta_0)`` and ``J v = sigma u``:

    Attributes
    ----------
    eps
        The scales, ascending.
    projection
        ``<u, delta>``.
    expected
        ``eps sigma``, the linearisation's prediction of ``projection``.
    remainder
        ``|delta - <u, delta> u|``, the part of the change off ``u``.
    delta_norm
        ``|delta|``.
    linearisation_error
        ``|delta - eps sigma u| / (eps sigma)``.
    test_loss
        ``test_loss`` of each perturbed run, or ``None`` when no ``test_loss`` was given.
    sigma, cos_uv
        ``sigma`` and ``<u, v>`` of the pair compared with.
    linear_up_to
        The largest ``eps`` below which ``linearisation_error`` stays under 0.1 (0 when the
        smallest ``eps`` already fails).
    num_training_runs
        Training runs used (one per ``eps``).
    test_loss_unperturbed
        ``test_loss`` of the unperturbed run, or ``None``.
    """

    eps: np.ndarray
    projection: np.ndarray
    expected: np.ndarray
    remainder: np.ndarray
    delta_norm: np.ndarray
    linearisation_error: np.ndarray
    test_loss: np.ndarray | None
    sigma: float
    cos_uv: float
    linear_up_to: float
    num_training_runs: int
    test_loss_unperturbed: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready: ``sigma``, ``cos_uv``, ``linear_up_to``, ``num_training_runs``,
        ``test_loss_unperturbed`` (if measured) and ``rows``, one dict per ``eps``."""
        cols = {f: getattr(self, f) for f in _ROW_FIELDS}
        if self.test_loss is not None:
            cols["test_loss"] = self.test_loss
        rows = [{f: float(c[i]) for f, c in cols.items()} for i in range(self.eps.size)]
        out = dict(
            sigma=float(self.sigma),
            cos_uv=float(self.cos_uv),
            linear_up_to=float(self.linear_up_to),
            rows=rows,
            num_training_runs=int(self.num_training_runs),
        )
        if self.test_loss_unperturbed is not None:
            out["test_loss_unperturbed"] = float(self.test_loss_unperturbed)
        return out


@dataclasses.dataclass(frozen=True)
class OutputSensitivity:
    r"""Result of :func:`output_sensitivity`.

    Attributes
    ----------
    max_kl
        Input-set name -> ``(m,)`` array: per direction, the largest divergence over that
        set's examples.
    divergence
        ``"softmax"`` or ``"gaussian"``: the divergence used (after resolving ``"auto"``).
    scale
        The length of the perturbation of the final parameters.
    """

    max_kl: dict[str, np.ndarray]
    divergence: str
    scale: float

    def mean(self) -> dict[str, float]:
        """``{input set: mean over directions of max_kl}``."""
        return {name: float(np.mean(v)) for name, v in self.max_kl.items()}

    def to_dict(self) -> dict:
        """``{input set: [max KL per direction]}``, JSON-ready."""
        return {name: [float(x) for x in v] for name, v in self.max_kl.items()}


def _flat_train(J: Any) -> Callable:
    """The training run on J's own flat variables (the trainable leaves, with a mask; the
    frozen ones fixed at params0), returning J's flat output: the map J is the Jacobian of."""
    return jax.jit(J.forward_fn)


def perturbation_response(
    J: Any,
    v: Any,
    *,
    eps: Any = None,
    u: Any = None,
    sigma: float | None = None,
    test_loss: Callable | None = None,
) -> PerturbationResponse:
    r"""Retrain from ``theta_0 + eps v`` for many ``eps`` and compare with the linearisation.

    With ``delta(eps) = theta_T(theta_0 + eps v) - theta_T(theta_0)`` and ``J v = sigma u``
    (``|u| = 1``) reports, per ``eps``: the projection ``<u, delta>`` against ``eps sigma``, the
    remainder ``|delta - <u, delta> u|``, the linearisation error
    ``|delta - eps sigma u| / (eps sigma)``, and ``test_loss(params)`` of the perturbed run if
    given. ``linear_up_to`` is the largest ``eps`` below which that error stays under 0.1.

    Parameters
    ----------
    J
        A :class:`~matfree_tj.TrainingJacobian` (uses ``train_fn``, ``params0_flat``,
        ``params_T_flat``, ``unravel``).
    v
        Direction ``(P,)`` (normalised here), e.g. a right singular vector or a bulk direction.
    eps
        Scales (default ``logspace(-3, 3, 30)``: six orders of magnitude, as the paper); sorted
        ascending (duplicates dropped), the order of the result's arrays.
    u, sigma
        A singular pair with ``J v = sigma u``. If omitted, ``sigma = |J v|`` and
        ``u = J v / sigma`` are computed with one product, so any ``v`` works.

    Cost: ``len(eps)`` training runs (+1 product of ``J`` if ``u``/``sigma`` are omitted).

    Examples
    --------
    >>> import jax, numpy as np, matfree_tj as mtj
    >>> from matfree_tj.analysis import perturbation_response
    >>> lr = mtj.examples.linear_regression(jax.random.key(0), 4, 6, eta=0.5, num_steps=3)
    >>> J = mtj.training_jacobian(lr.train_fn, lr.params0)
    >>> resp = perturbation_response(J, np.ones(6), eps=[1e-2, 1.0])  # GD on least squares
    >>> resp.linear_up_to, bool(np.all(resp.linearisation_error < 1e-3))  # is exactly linear
    (1.0, True)
    """
    v = _np(v)
    P = J.shape[1]
    if v.shape != (P,):
        raise ValueError(f"perturbation_response: v must have shape ({P},), got {v.shape}.")
    vnorm = float(np.linalg.norm(v))
    if not np.isfinite(vnorm) or vnorm == 0.0:
        raise ValueError(
            f"perturbation_response: v must be a finite nonzero direction, |v| = {vnorm}."
        )
    v = v / vnorm
    eps = np.logspace(-3, 3, 30) if eps is None else np.asarray(eps, dtype=np.float64)
    if eps.ndim != 1 or eps.size < 1 or not np.all(np.isfinite(eps)) or np.any(eps <= 0):
        raise ValueError("eps must be a non-empty 1-d array of finite positive scales.")
    # Ascending: rows come back in that order and linear_up_to reads them as a sweep.
    eps = np.unique(eps)
    dt = J.dtype
    if u is None or sigma is None:
        Jv = _np(J.mv(jnp.asarray(v, dt)))
        sigma = float(np.linalg.norm(Jv))
        u = Jv / sigma if sigma > 0 else Jv
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma <= 0.0:
        raise ValueError(
            f"perturbation_response: sigma = {sigma} (given, or |J v|); it must be finite and "
            "positive (v in J's nullspace or a failed product leaves no direction u to compare "
            "with)."
        )
    u = _np(u)
    if u.shape != (P,):
        raise ValueError(f"perturbation_response: u must have shape ({P},), got {u.shape}.")
    u = u / np.linalg.norm(u)
    train = _flat_train(J)
    theta0, thetaT = J.params0_flat, _np(J.params_T_flat)
    cols: dict = {f: [] for f in _ROW_FIELDS[1:]}
    losses = []
    for e in eps:
        th = train(theta0 + jnp.asarray(e * v, dt))
        delta = _np(th) - thetaT
        proj = float(u @ delta)
        cols["projection"].append(proj)
        cols["expected"].append(float(e * sigma))
        cols["remainder"].append(float(np.linalg.norm(delta - proj * u)))
        cols["delta_norm"].append(float(np.linalg.norm(delta)))
        cols["linearisation_error"].append(
            float(np.linalg.norm(delta - e * sigma * u) / (e * sigma))
        )
        if test_loss is not None:
            losses.append(float(test_loss(J.unravel(th))))
    err = np.array(cols["linearisation_error"])
    bad = np.nonzero(~(err < 0.1))[0]
    linear_up_to = (
        float(eps[: bad[0]].max())
        if bad.size and bad[0] > 0
        else (float(eps.max()) if not bad.size else 0.0)
    )
    return PerturbationResponse(
        eps=eps,
        **{f: np.asarray(c) for f, c in cols.items()},
        test_loss=None if test_loss is None else np.asarray(losses),
        sigma=float(sigma),
        cos_uv=float(u @ v),
        linear_up_to=linear_up_to,
        num_training_runs=int(eps.size),
        test_loss_unperturbed=(
            None if test_loss is None else float(test_loss(J.unravel(J.params_T_flat)))
        ),
    )


def ood_inputs(X_train: Any, X_test: Any, *, key: jax.Array) -> dict:
    r"""The paper's three input sets: ``train`` inputs, standard Gaussian ``noise`` inputs (as
    many as the test set), and ``inverted`` test images ``1 - X_test``."""
    X_test = jnp.asarray(X_test)
    return {
        "train": jnp.asarray(X_train),
        "noise": jax.random.normal(key, X_test.shape, X_test.dtype),
        "inverted": 1.0 - X_test,
    }


def output_sensitivity(
    apply: Callable,
    params: Any,
    directions: Any,
    inputs: Mapping[str, Any],
    *,
    scale: float = 1.0,
    unravel: Callable | None = None,
    divergence: str = "auto",
) -> OutputSensitivity:
    r"""Max over examples of ``KL(p(. | x; theta) || p(. | x; theta + scale d))`` per direction.

    Parameters
    ----------
    apply
        ``apply(params_pytree, X) -> outputs``: class logits ``(N, C)`` or regression outputs
        ``(N,)`` / ``(N, d)``.
    params
        Final parameters: a flat ``(P,)`` vector with ``unravel``, or a
        :class:`~matfree_tj.TrainingJacobian` (its ``params_T_flat`` and ``unravel``).
    directions
        ``(P, m)`` directions (normalised here), e.g. right singular vectors across the spectrum.
    inputs
        Name -> inputs, e.g. :func:`ood_inputs`.
    divergence
        ``"softmax"``: KL between the softmax distributions of the logits (classifiers, the
        paper's measure); ``"gaussian"``: KL between unit-variance Gaussians centred on the
        outputs, :math:`\|f(x; \theta) - f(x; \theta')\|^2 / 2` (regression);
        ``"auto"`` (default): ``"softmax"`` for outputs ``(N, C)`` with ``C >= 2``,
        ``"gaussian"`` for ``(N,)`` or ``(N, 1)``. Pass it explicitly for multi-output
        regression.

    Floating inputs are cast to the parameters' dtype; integer inputs (token ids, class
    indices) are passed as they are.

    Returns an :class:`OutputSensitivity` (``max_kl[name]``: ``(m,)``). Cost: ``m + 1`` forward
    passes per input set, no training.

    Examples
    --------
    >>> import jax.numpy as jnp, numpy as np
    >>> from matfree_tj.analysis import output_sensitivity
    >>> apply = lambda w, X: X @ w  # a linear regression model, outputs (N,)
    >>> X = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> out = output_sensitivity(apply, jnp.zeros(2), np.eye(2), {"x": X}, unravel=lambda t: t)
    >>> out.divergence, np.round(out.max_kl["x"], 4)  # max_x (x^T d)^2 / 2
    ('gaussian', array([0.5, 2. ]))
    """
    if unravel is None:
        params, unravel = params.params_T_flat, params.unravel
    theta = jnp.asarray(params)
    P = theta.shape[0]
    D = _np(directions)
    if D.ndim == 1:
        D = D[:, None]  # one direction
    if D.ndim != 2 or D.shape[0] != P:
        raise ValueError(
            f"output_sensitivity: directions must be ({P}, m) (or one ({P},) direction), "
            f"got shape {np.shape(directions)}."
        )
    norms = np.linalg.norm(D, axis=0, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("output_sensitivity: every direction must be finite and nonzero.")
    D = jnp.asarray(D / norms, theta.dtype)
    if divergence not in ("auto", "softmax", "gaussian"):
        raise ValueError(f"divergence must be 'auto', 'softmax' or 'gaussian', got {divergence!r}.")
    if not inputs:
        raise ValueError(
            "output_sensitivity: inputs is empty; pass {name: X}, e.g. ood_inputs(...)."
        )
    inputs = {name: model_inputs(X, theta.dtype) for name, X in inputs.items()}
    if divergence == "auto":
        X0 = next(iter(inputs.values()))
        out = jax.eval_shape(lambda th: apply(unravel(th), X0), theta)
        if out.ndim == 2 and out.shape[-1] >= 2:
            divergence = "softmax"
        elif out.ndim == 1 or (out.ndim == 2 and out.shape[-1] == 1):
            divergence = "gaussian"
        else:
            raise ValueError(
                f"output_sensitivity: apply returned shape {out.shape}; expected class logits "
                "(N, C) or regression outputs (N,) / (N, 1). Pass divergence='softmax' or "
                "'gaussian' explicitly."
            )
    fn = _max_kl_fn(apply, unravel, divergence)
    kl = {name: _np(fn(theta, D, X, jnp.asarray(scale, theta.dtype))) for name, X in inputs.items()}
    return OutputSensitivity(kl, divergence, float(scale))


@functools.lru_cache(maxsize=32)
def _max_kl_fn(apply: Callable, unravel: Callable, divergence: str) -> Callable:
    # One compiled function per (model, parameter layout), reused across calls and input sets.
    def per_example(out0, out1):
        if divergence == "softmax":
            logp0 = jax.nn.log_softmax(out0, axis=-1)
            logp1 = jax.nn.log_softmax(out1, axis=-1)
            return jnp.sum(jnp.exp(logp0) * (logp0 - logp1), axis=-1)
        diff = (out0 - out1).reshape(out0.shape[0], -1)
        return 0.5 * jnp.sum(diff**2, axis=-1)

    @jax.jit
    def fn(theta, D, X, scale):
        out0 = apply(unravel(theta), X)

        def max_kl(d):
            return jnp.max(per_example(out0, apply(unravel(theta + scale * d), X)))

        return jax.lax.map(max_kl, D.T)

    return fn
