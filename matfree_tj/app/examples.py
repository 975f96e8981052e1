r"""Ready-made training runs: the paper's reference MLP and closed-form linear regression.

``digits_mlp`` is the reference configuration of Belrose & Scherlis (2024): scikit-learn's
digits (8x8 images, features / 16, 1600 train / 197 test), an MLP 64 -> hidden (GELU) -> 10,
625 steps of minibatch SGD (batch 64, 25 epochs, fixed order) with momentum 0.9 and a cosine
schedule from 0.1, float32.

``linear_regression`` is full-batch gradient descent (optionally heavy-ball momentum) on
``|X w - y|^2 / (2n)``, whose training Jacobian is known exactly:
``J = (I - eta Sigma)^T`` for plain GD, ``Sigma = X^T X / n``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core import TrainFn, full_batch_schedule, make_train_fn, minibatch_schedule

__all__ = [
    "DigitsMLP",
    "digits_mlp",
    "load_digits_split",
    "LinearRegression",
    "linear_regression",
    "momentum_gd_singular_values",
]


# --------------------------------------------------------------------------------------
# The reference MLP
# --------------------------------------------------------------------------------------


def load_digits_split(test_size: int = 197, random_state: int = 0):
    """Digits features / 16, split as in the reference notebook.

    Returns ``(X_train, y_train, X_test, y_test)``.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "digits_mlp needs scikit-learn for the digits data set: "
            "pip install 'matfree-tj[datasets]'"
        ) from e
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=random_state)
    return X_tr, y_tr, X_te, y_te


def mlp_init(key: jax.Array, sizes: tuple[int, ...], dtype=jnp.float32) -> dict:
    """Kernels lecun-normal (std fan_in**-0.5), biases normal with std fan_in**-0.5."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, kw, kb = jax.random.split(key, 3)
        std = fan_in**-0.5
        params[f"w{i}"] = (
            std
            * jax.random.truncated_normal(kw, -2.0, 2.0, (fan_in, fan_out))
            / 0.87962566103423978
        ).astype(dtype)
        params[f"b{i}"] = (std * jax.random.normal(kb, (fan_out,))).astype(dtype)
    return params


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
    """Logits of the GELU MLP ``params`` (from :func:`mlp_init`) on inputs ``x: (..., d_in)``."""
    num_layers = len(params) // 2
    h = x
    for i in range(num_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < num_layers - 1:
            h = jax.nn.gelu(h)
    return h


def cross_entropy(apply: Callable, params: Any, batch: tuple) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    x, y = batch
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y))


@dataclasses.dataclass(frozen=True)
class DigitsMLP:
    """The reference training run: ``train_fn(params0) -> params_T`` and everything around it."""

    train_fn: TrainFn
    params0: dict
    apply: Callable[[dict, jax.Array], jax.Array]
    loss_fn: Callable[[dict, Any], jax.Array]
    optimizer: optax.GradientTransformation
    X_train: jax.Array
    y_train: jax.Array
    X_test: jax.Array
    y_test: jax.Array
    batches: Any
    config: dict

    @property
    def num_params(self) -> int:
        return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.params0)))

    def test_loss(self, params: dict) -> jax.Array:
        return cross_entropy(self.apply, params, (self.X_test, self.y_test))


def digits_mlp(
    hidden: int = 64,
    seed: int = 0,
    optimizer: str = "sgd",
    *,
    depth: int = 1,
    num_epochs: int = 25,
    batch_size: int = 64,
    learning_rate: float | None = None,
    labels: str = "original",
    inputs: str = "original",
    num_train: int | None = None,
    dtype: Any = jnp.float32,
    checkpoint: str = "none",
) -> DigitsMLP:
    r"""The reference configuration of REFERENCE.md (Belrose & Scherlis 2024).

    Parameters
    ----------
    hidden
        Hidden width (64 gives P = 4810; P grows ~74 x hidden).
    seed
        Initialisation seed (``jax.random.key(seed)``); also seeds shuffled labels / noise.
    optimizer
        ``"sgd"``: ``optax.sgd(cosine_decay_schedule(0.1, T), momentum=0.9)``;
        ``"adam"``: ``optax.adam(cosine_decay_schedule(3e-3, T), eps_root=1e-8)``.
    depth
        Number of hidden layers (1 in the paper).
    num_epochs, batch_size
        25 and 64 give the reference 625 steps (fixed batch order, no reshuffle).
    learning_rate
        Peak learning rate of the cosine schedule (default 0.1 for sgd, 3e-3 for adam).
    labels
        ``"original"`` or ``"shuffled"`` (a random permutation of the training labels).
    inputs
        ``"original"`` or ``"noise"`` (white noise uniform[0, 1) of the same shape).
    num_train
        Use only the first ``num_train`` training examples (small test models).
    dtype
        Parameter and data dtype (float32 in the paper).
    checkpoint
        Reverse-mode layout of the training scan (see :func:`matfree_tj.make_train_fn`).

    Examples
    --------
    >>> import matfree_tj as mtj
    >>> ref = mtj.examples.digits_mlp()
    >>> ref.num_params
    4810
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}.")
    if labels not in ("original", "shuffled"):
        raise ValueError(f"labels must be 'original' or 'shuffled', got {labels!r}.")
    if inputs not in ("original", "noise"):
        raise ValueError(f"inputs must be 'original' or 'noise', got {inputs!r}.")
    if int(hidden) < 1 or int(depth) < 1:
        raise ValueError(f"hidden and depth must be >= 1, got hidden={hidden}, depth={depth}.")
    X_tr, y_tr, X_te, y_te = load_digits_split()
    if num_train is not None:
        if not 1 <= num_train <= len(X_tr):
            raise ValueError(f"num_train must be in [1, {len(X_tr)}], got {num_train}.")
        X_tr, y_tr = X_tr[:num_train], y_tr[:num_train]
    data_rng = np.random.default_rng(seed)
    if labels == "shuffled":
        y_tr = data_rng.permutation(y_tr)
    if inputs == "noise":
        X_tr = data_rng.random(X_tr.shape)
    X_tr, X_te = jnp.asarray(X_tr, dtype), jnp.asarray(X_te, dtype)
    y_tr, y_te = jnp.asarray(y_tr, jnp.int32), jnp.asarray(y_te, jnp.int32)

    batch_size = min(int(batch_size), X_tr.shape[0])
    batches = minibatch_schedule((X_tr, y_tr), batch_size, num_epochs)
    T = int(batches[0].shape[0])
    if optimizer == "sgd":
        lr = 0.1 if learning_rate is None else learning_rate
        opt = optax.sgd(optax.cosine_decay_schedule(lr, T), momentum=0.9)
    else:
        lr = 3e-3 if learning_rate is None else learning_rate
        opt = optax.adam(optax.cosine_decay_schedule(lr, T), eps_root=1e-8)

    sizes = (X_tr.shape[1], *([int(hidden)] * int(depth)), 10)
    params0 = mlp_init(jax.random.key(seed), sizes, dtype)

    def loss_fn(params, batch):
        return cross_entropy(mlp_apply, params, batch)

    train_fn = make_train_fn(loss_fn, opt, batches, checkpoint=checkpoint)
    config = dict(
        hidden=int(hidden),
        depth=int(depth),
        seed=int(seed),
        optimizer=optimizer,
        num_epochs=int(num_epochs),
        batch_size=batch_size,
        learning_rate=lr,
        num_steps=T,
        labels=labels,
        inputs=inputs,
        dtype=jnp.dtype(dtype).name,
    )
    return DigitsMLP(
        train_fn, params0, mlp_apply, loss_fn, opt, X_tr, y_tr, X_te, y_te, batches, config
    )


# --------------------------------------------------------------------------------------
# Linear regression: the closed-form oracle
# --------------------------------------------------------------------------------------


def momentum_gd_singular_values(eigenvalues, eta: float, num_steps: int, momentum: float = 0.0):
    r"""Per-eigenmode factor of the training Jacobian of (heavy-ball) GD on a quadratic.

    For ``optax.sgd(eta, momentum=beta)`` (``m <- beta m + g``; ``w <- w - eta m``, ``m_0 = 0``)
    on a quadratic with Hessian eigenvalue ``lam``, each mode follows the linear recurrence
    ``(w, m) <- A (w, m)`` with ``A = [[1 - eta lam, -eta beta], [lam, beta]]`` and
    ``J = sum_k (A_k^T)_{00} q_k q_k^T``. Returns the signed factors ``(A_k^T)_{00}``; the
    singular values are their absolute values. With ``beta = 0`` this is ``(1 - eta lam)^T``.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    A = np.zeros((lam.size, 2, 2))
    A[:, 0, 0] = 1 - eta * lam
    A[:, 0, 1] = -eta * momentum
    A[:, 1, 0] = lam
    A[:, 1, 1] = momentum
    M = np.broadcast_to(np.eye(2), A.shape).copy()
    with np.errstate(over="ignore", invalid="ignore"):  # diverging modes may overflow to inf
        for _ in range(int(num_steps)):
            M = A @ M
    return M[:, 0, 0]


@dataclasses.dataclass(frozen=True)
class LinearRegression:
    r"""Full-batch GD on least squares with a known spectrum.

    ``Sigma = X^T X / n = W diag(eigenvalues) W^T`` with ``W`` (P, min(n, P)) orthonormal; the
    training Jacobian is ``I + W diag(factors - 1) W^T`` with ``factors`` from
    :func:`momentum_gd_singular_values`: ``P - n`` singular values exactly 1 when ``n < P``.
    """

    train_fn: TrainFn
    params0: jax.Array
    X: jax.Array
    y: jax.Array
    eigenvalues: np.ndarray
    eigenvectors: jax.Array
    factors: np.ndarray
    eta: float
    momentum: float
    num_steps: int

    @property
    def singular_values(self) -> np.ndarray:
        """All P singular values of J, descending (closed form)."""
        P = self.X.shape[1]
        s = np.concatenate([np.abs(self.factors), np.ones(P - self.factors.size)])
        return np.sort(s)[::-1]

    def dense(self) -> np.ndarray:
        """J as a dense (P, P) float64 array (small P only)."""
        W = np.asarray(self.eigenvectors, dtype=np.float64)
        return np.eye(W.shape[0]) + (W * (self.factors - 1.0)) @ W.T


def linear_regression(
    key: jax.Array,
    n: int,
    P: int,
    *,
    eta: float,
    num_steps: int,
    eigenvalues: Any = None,
    momentum: float = 0.0,
    dtype: Any = None,
) -> LinearRegression:
    r"""Least squares ``|X w - y|^2 / (2n)`` trained by full-batch GD: an exact oracle at any P.

    ``X = sqrt(n) Q diag(sqrt(eigenvalues)) W^T`` with random orthonormal columns ``Q``
    (n, r) and ``W`` (P, r), ``r = min(n, P)``, so ``Sigma``'s eigenvalues are exactly
    ``eigenvalues`` (``r`` of them; default: log-spaced in [1e-3, 1] / eta) and, when
    ``n < P``, ``P - n`` zeros (singular values of ``J`` exactly 1).
    """
    n, P = int(n), int(P)
    if n < 1 or P < 1:
        raise ValueError(f"need n >= 1 and P >= 1, got n={n}, P={P}.")
    r = min(n, P)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if eigenvalues is None:
        eigenvalues = np.logspace(-3, 0, r) / eta
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.shape != (r,) or np.any(lam < 0):
        raise ValueError(f"eigenvalues must be min(n, P) = {r} non-negative numbers.")
    kq, kw, ky, kp = jax.random.split(key, 4)
    Q, _ = jnp.linalg.qr(jax.random.normal(kq, (n, r), dtype))
    W, _ = jnp.linalg.qr(jax.random.normal(kw, (P, r), dtype))
    X = (jnp.sqrt(n) * Q * jnp.sqrt(jnp.asarray(lam, dtype))[None, :]) @ W.T
    y = jax.random.normal(ky, (n,), dtype)
    params0 = jax.random.normal(kp, (P,), dtype)

    def loss_fn(w, batch):
        Xb, yb = batch
        return 0.5 * jnp.mean((Xb @ w - yb) ** 2)

    opt = optax.sgd(eta, momentum=momentum if momentum else None)
    train_fn = make_train_fn(loss_fn, opt, full_batch_schedule((X, y), num_steps))
    factors = momentum_gd_singular_values(lam, eta, num_steps, momentum)
    return LinearRegression(
        train_fn, params0, X, y, lam, W, factors, float(eta), float(momentum), int(num_steps)
    )
