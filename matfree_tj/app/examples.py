r"""Ready-made training runs: the paper's reference MLP, LeNet-5, a small transformer, and
closed-form linear regression.

``digits_mlp`` is the reference configuration of Belrose & Scherlis (2024): scikit-learn's
digits (8x8 images, features / 16, 1600 train / 197 test), an MLP 64 -> hidden (GELU) -> 10,
625 steps of minibatch SGD (batch 64, 25 epochs, fixed order) with momentum 0.9 and a cosine
schedule from 0.1, float32.

``lenet5_digits`` is LeNet-5 (P = 61,706) on the digits upsampled to 28x28, trained with SGD +
momentum: the model on which the paper's authors found the dense route out of reach.
``transformer`` is a small decoder-only transformer (pre-LayerNorm, causal attention, GELU MLP,
dropout) learning ``a + b mod p`` with AdamW, gradient clipping and a warmup-cosine schedule.

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
    "TrainingRun",
    "DigitsMLP",
    "digits_mlp",
    "lenet5_digits",
    "lenet5_init",
    "lenet5_apply",
    "transformer",
    "transformer_init",
    "transformer_apply",
    "load_digits_split",
    "LinearRegression",
    "linear_regression",
    "linear_apply",
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
class TrainingRun:
    """A ready-made training run: ``train_fn(params0) -> params_T`` and everything around it.

    ``apply(params, x)`` gives the logits of a batch of inputs, ``loss_fn(params, batch)`` the
    training loss, ``batches`` the schedule (leading axis: steps), ``config`` the settings
    (JSON-ready, with ``num_steps`` and ``dtype``).
    """

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

    #: what ``matfree-tj trajectory`` compares checkpoints by: class probabilities of ``apply``
    prediction_kind = "categorical"

    @property
    def num_params(self) -> int:
        return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.params0)))

    @property
    def probe_inputs(self) -> jax.Array:
        """The inputs on which trajectory geometry compares checkpoints: the test set."""
        return self.X_test

    def test_loss(self, params: dict) -> jax.Array:
        return cross_entropy(self.apply, params, (self.X_test, self.y_test))


@dataclasses.dataclass(frozen=True)
class DigitsMLP(TrainingRun):
    """The reference training run (:func:`digits_mlp`)."""


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
# LeNet-5 on the digits upsampled to 28x28
# --------------------------------------------------------------------------------------

_CONV = ("NHWC", "HWIO", "NHWC")


def _lecun(key: jax.Array, shape: tuple[int, ...], fan_in: int, dtype) -> jax.Array:
    """Truncated-normal kernel with std ``fan_in ** -0.5`` (as :func:`mlp_init`)."""
    w = jax.random.truncated_normal(key, -2.0, 2.0, shape) / 0.87962566103423978
    return (fan_in**-0.5 * w).astype(dtype)


def lenet5_init(key: jax.Array, num_classes: int = 10, dtype: Any = jnp.float32) -> dict:
    r"""LeNet-5 parameters for 28x28 single-channel inputs (kernels lecun-normal, biases zero).

    conv 6@5x5 ('same') -> pool 2 -> conv 16@5x5 (valid) -> pool 2 -> dense 400 -> 120 -> 84 ->
    ``num_classes``: :math:`P = 156 + 2416 + 48120 + 10164 + 85 \cdot \mathrm{num\_classes}`,
    61,706 with 10 classes.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from matfree_tj.app.examples import lenet5_init
    >>> shapes = jax.eval_shape(lambda: lenet5_init(jax.random.key(0)))
    >>> sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    61706
    """
    k = jax.random.split(key, 5)
    return {
        "conv1_w": _lecun(k[0], (5, 5, 1, 6), 25, dtype),
        "conv1_b": jnp.zeros((6,), dtype),
        "conv2_w": _lecun(k[1], (5, 5, 6, 16), 150, dtype),
        "conv2_b": jnp.zeros((16,), dtype),
        "fc1_w": _lecun(k[2], (400, 120), 400, dtype),
        "fc1_b": jnp.zeros((120,), dtype),
        "fc2_w": _lecun(k[3], (120, 84), 120, dtype),
        "fc2_b": jnp.zeros((84,), dtype),
        "fc3_w": _lecun(k[4], (84, num_classes), 84, dtype),
        "fc3_b": jnp.zeros((num_classes,), dtype),
    }


def _pool2(x: jax.Array, pool: str) -> jax.Array:
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return x.mean(axis=(2, 4)) if pool == "avg" else x.max(axis=(2, 4))


def lenet5_apply(params: dict, x: jax.Array, pool: str = "avg") -> jax.Array:
    """Logits of LeNet-5 (ReLU activations) on images ``x: (batch, 28, 28, 1)``."""
    hi = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: the products are differentiated to 1e-7
    h = jax.lax.conv_general_dilated(
        x, params["conv1_w"], (1, 1), "SAME", dimension_numbers=_CONV, precision=hi
    )
    h = _pool2(jax.nn.relu(h + params["conv1_b"]), pool)  # (b, 14, 14, 6)
    h = jax.lax.conv_general_dilated(
        h, params["conv2_w"], (1, 1), "VALID", dimension_numbers=_CONV, precision=hi
    )
    h = _pool2(jax.nn.relu(h + params["conv2_b"]), pool)  # (b, 5, 5, 16)
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(jnp.dot(h, params["fc1_w"], precision=hi) + params["fc1_b"])
    h = jax.nn.relu(jnp.dot(h, params["fc2_w"], precision=hi) + params["fc2_b"])
    return jnp.dot(h, params["fc3_w"], precision=hi) + params["fc3_b"]


def _digits_28(X: np.ndarray, dtype) -> jax.Array:
    """Digits features (n, 64) in [0, 1] as bilinearly upsampled images (n, 28, 28, 1)."""
    img = jnp.asarray(X.reshape(-1, 8, 8), dtype)
    return jax.image.resize(img, (img.shape[0], 28, 28), "bilinear")[..., None]


def lenet5_digits(
    seed: int = 0,
    *,
    num_epochs: int = 2,
    batch_size: int = 64,
    learning_rate: float = 0.05,
    momentum: float = 0.9,
    pool: str = "avg",
    num_train: int | None = None,
    dtype: Any = jnp.float32,
    checkpoint: str = "none",
    quick: bool = False,
) -> TrainingRun:
    r"""LeNet-5 (P = 61,706) on the digits upsampled to 28x28, trained by SGD + momentum.

    The architecture of the paper's authors' attempt on MNIST (two conv + pooling layers, three
    dense layers; :func:`lenet5_init`), on scikit-learn's digits (offline: 1600 train / 197
    test, features / 16, bilinear 8x8 -> 28x28), minibatch SGD with momentum and a cosine
    schedule, fixed batch order.

    Parameters
    ----------
    seed
        Initialisation seed (``jax.random.key(seed)``).
    num_epochs, batch_size
        The default 2 epochs of batch 64 are 50 steps (seconds on a 2-core CPU); raise
        ``num_epochs`` for a longer run (every product of J costs one pass over the steps).
    learning_rate, momentum
        Peak of the cosine schedule and the heavy-ball coefficient.
    pool
        ``"avg"`` (LeCun's subsampling, default) or ``"max"``.
    num_train
        Use only the first ``num_train`` training examples.
    dtype
        Parameter and data dtype (``jnp.float64`` needs ``jax_enable_x64``).
    checkpoint
        Reverse-mode layout of the training scan (see :func:`matfree_tj.make_train_fn`).
    quick
        128 training examples, batch 32, 1 epoch (4 steps): for smoke tests; P is unchanged.

    Examples
    --------
    >>> import matfree_tj as mtj
    >>> run = mtj.examples.lenet5_digits(quick=True)
    >>> run.num_params, run.config["num_steps"]
    (61706, 4)
    """
    if pool not in ("avg", "max"):
        raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}.")
    if quick:
        num_train, batch_size, num_epochs = 128, 32, 1
    X_tr, y_tr, X_te, y_te = load_digits_split()
    if num_train is not None:
        if not 1 <= num_train <= len(X_tr):
            raise ValueError(f"num_train must be in [1, {len(X_tr)}], got {num_train}.")
        X_tr, y_tr = X_tr[:num_train], y_tr[:num_train]
    X_tr, X_te = _digits_28(X_tr, dtype), _digits_28(X_te, dtype)
    y_tr, y_te = jnp.asarray(y_tr, jnp.int32), jnp.asarray(y_te, jnp.int32)
    batch_size = min(int(batch_size), X_tr.shape[0])
    batches = minibatch_schedule((X_tr, y_tr), batch_size, num_epochs)
    T = int(batches[0].shape[0])
    opt = optax.sgd(optax.cosine_decay_schedule(learning_rate, T), momentum=momentum)
    params0 = lenet5_init(jax.random.key(seed), 10, dtype)

    def apply(params, x):
        return lenet5_apply(params, x, pool)

    def loss_fn(params, batch):
        return cross_entropy(apply, params, batch)

    train_fn = make_train_fn(loss_fn, opt, batches, checkpoint=checkpoint)
    config = dict(
        model="lenet5_digits",
        seed=int(seed),
        optimizer="sgd",
        momentum=float(momentum),
        pool=pool,
        num_epochs=int(num_epochs),
        batch_size=batch_size,
        learning_rate=float(learning_rate),
        num_train=int(X_tr.shape[0]),
        num_steps=T,
        dtype=jnp.dtype(dtype).name,
    )
    return TrainingRun(
        train_fn, params0, apply, loss_fn, opt, X_tr, y_tr, X_te, y_te, batches, config
    )


# --------------------------------------------------------------------------------------
# A small decoder-only transformer on modular addition
# --------------------------------------------------------------------------------------


def transformer_init(
    key: jax.Array,
    modulus: int,
    *,
    d_model: int,
    num_layers: int,
    mlp_ratio: int = 4,
    seq_len: int = 3,
    dtype: Any = jnp.float32,
) -> dict:
    r"""Parameters of a pre-LayerNorm decoder-only transformer over ``modulus + 1`` tokens.

    Token and position embeddings; per layer LayerNorm, causal self-attention (``W_qkv``,
    ``W_o``), LayerNorm, GELU MLP (``mlp_ratio * d_model`` wide); a final LayerNorm and a head
    onto the ``modulus`` answers. :math:`P = (m + 1 + s) d + L (12 d^2 + 9 d) + 2 d + d m + m`
    for ``mlp_ratio = 4`` (``m`` the modulus, ``s`` the sequence length, ``L`` the layers).
    """
    d, h = int(d_model), int(mlp_ratio) * int(d_model)
    keys = iter(jax.random.split(key, 3 + 4 * int(num_layers)))
    params = {
        "tok": (0.02 * jax.random.normal(next(keys), (modulus + 1, d))).astype(dtype),
        "pos": (0.02 * jax.random.normal(next(keys), (seq_len, d))).astype(dtype),
        "layers": [],
        "ln_f": {"scale": jnp.ones((d,), dtype), "bias": jnp.zeros((d,), dtype)},
        "head_w": _lecun(next(keys), (d, modulus), d, dtype),
        "head_b": jnp.zeros((modulus,), dtype),
    }
    for _ in range(int(num_layers)):
        params["layers"].append(
            {
                "ln1": {"scale": jnp.ones((d,), dtype), "bias": jnp.zeros((d,), dtype)},
                "qkv": _lecun(next(keys), (d, 3 * d), d, dtype),
                "out": _lecun(next(keys), (d, d), d, dtype),
                "ln2": {"scale": jnp.ones((d,), dtype), "bias": jnp.zeros((d,), dtype)},
                "mlp_w1": _lecun(next(keys), (d, h), d, dtype),
                "mlp_b1": jnp.zeros((h,), dtype),
                "mlp_w2": _lecun(next(keys), (h, d), h, dtype),
                "mlp_b2": jnp.zeros((d,), dtype),
            }
        )
    return params


def _layer_norm(p: dict, x: jax.Array) -> jax.Array:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def transformer_apply(
    params: dict,
    tokens: jax.Array,
    *,
    num_heads: int,
    dropout: float = 0.0,
    key: jax.Array | None = None,
) -> jax.Array:
    """Logits over the answers at the last position of ``tokens: (batch, seq_len)``.

    With ``key`` (training), dropout of rate ``dropout`` on the attention weights and on each
    residual branch; without ``key`` (evaluation) no dropout.
    """
    hi = jax.lax.Precision.HIGHEST
    b, s = tokens.shape
    x = params["tok"][tokens] + params["pos"][:s]
    d = x.shape[-1]
    dh = d // num_heads
    causal = jnp.tril(jnp.ones((s, s), bool))
    keys = iter(jax.random.split(key, 3 * len(params["layers"]))) if key is not None else None
    for layer in params["layers"]:
        k_att, k_res1, k_res2 = (next(keys), next(keys), next(keys)) if keys else (None,) * 3
        qkv = jnp.dot(_layer_norm(layer["ln1"], x), layer["qkv"], precision=hi)
        q, k, v = (t.reshape(b, s, num_heads, dh) for t in jnp.split(qkv, 3, axis=-1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=hi) / jnp.sqrt(dh).astype(x.dtype)
        scores = jnp.where(causal, scores, jnp.finfo(x.dtype).min)
        att = _dropout(jax.nn.softmax(scores, axis=-1), dropout, k_att)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v, precision=hi).reshape(b, s, d)
        x = x + _dropout(jnp.dot(o, layer["out"], precision=hi), dropout, k_res1)
        m = jnp.dot(_layer_norm(layer["ln2"], x), layer["mlp_w1"], precision=hi)
        m = jnp.dot(jax.nn.gelu(m + layer["mlp_b1"]), layer["mlp_w2"], precision=hi)
        x = x + _dropout(m + layer["mlp_b2"], dropout, k_res2)
    x = _layer_norm(params["ln_f"], x[:, -1])
    return jnp.dot(x, params["head_w"], precision=hi) + params["head_b"]


def transformer(
    seed: int = 0,
    *,
    modulus: int = 97,
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    train_fraction: float = 0.5,
    num_steps: int = 1000,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    warmup_steps: int | None = None,
    weight_decay: float = 0.1,
    dropout: float = 0.1,
    dtype: Any = jnp.float32,
    checkpoint: str = "none",
    quick: bool = False,
) -> TrainingRun:
    r"""A small decoder-only transformer learning ``a + b mod p`` (P = 112,353 at the defaults).

    The sequences are ``a b =`` (tokens ``0..p-1`` and ``p`` for ``=``); the model predicts the
    answer at the last position. A fraction ``train_fraction`` of the ``p^2`` pairs (a fixed
    random split from ``seed``) is the training set, the rest the test set. Training:
    ``optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(warmup_cosine_decay_schedule,
    weight_decay=weight_decay, eps_root=1e-8))`` on minibatches reshuffled each epoch.

    Dropout is per-step randomness that is part of the training run: the key of step ``t`` is
    ``jax.random.fold_in(jax.random.key(seed + 1), t)`` (``make_train_fn(..., key=)``), so
    ``train_fn`` stays a deterministic function of ``params0`` and J includes every dropout mask.

    Parameters
    ----------
    seed
        Initialisation, split and shuffling seed.
    modulus
        ``p`` (the vocabulary is ``p + 1`` tokens, the answers ``p`` classes).
    d_model, num_layers, num_heads
        Width, depth and heads (``d_model`` divisible by ``num_heads``).
    train_fraction
        Fraction of the ``p^2`` pairs used for training.
    num_steps, batch_size
        Optimizer steps (each product of J costs one pass over them) and batch size. The
        default 1000 steps reach 95% training and 74% test accuracy at seed 0 (200 steps
        leave both near chance: modular addition is learnt late); for cheaper products wrap
        this function with fewer steps (``--problem mymodule:function`` on the CLI).
    learning_rate, warmup_steps, weight_decay
        Peak learning rate, linear warmup (default 10% of the steps), AdamW's decoupled decay.
    dropout
        Rate on the attention weights and on each residual branch (0: none).
    dtype
        Parameter dtype (``jnp.float64`` needs ``jax_enable_x64``).
    checkpoint
        Reverse-mode layout of the training scan (see :func:`matfree_tj.make_train_fn`).
    quick
        ``p = 23``, width 16, one layer, two heads, 20 steps of batch 32: P = 4,071, seconds.

    Examples
    --------
    >>> import matfree_tj as mtj
    >>> run = mtj.examples.transformer(quick=True)
    >>> run.num_params
    4071
    """
    if quick:
        modulus, d_model, num_layers, num_heads = 23, 16, 1, 2
        num_steps, batch_size = 20, 32
    if int(modulus) < 2 or int(d_model) % int(num_heads):
        raise ValueError(
            f"need modulus >= 2 and d_model divisible by num_heads, got modulus={modulus}, "
            f"d_model={d_model}, num_heads={num_heads}."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}.")
    p = int(modulus)
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    tokens = np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1).astype(np.int32)
    answers = ((a + b) % p).ravel().astype(np.int32)
    order = np.random.default_rng(seed).permutation(p * p)
    n_train = max(1, int(round(train_fraction * p * p)))
    tr, te = order[:n_train], order[n_train:]
    X_tr, y_tr = jnp.asarray(tokens[tr]), jnp.asarray(answers[tr])
    X_te, y_te = jnp.asarray(tokens[te]), jnp.asarray(answers[te])

    batch_size = min(int(batch_size), n_train)
    num_epochs = -(-int(num_steps) * batch_size // n_train) if n_train >= batch_size else 1
    sched = minibatch_schedule(
        (X_tr, y_tr), batch_size, max(num_epochs, 1), key=jax.random.key(seed)
    )
    batches = tuple(x[: int(num_steps)] for x in sched)
    T = int(batches[0].shape[0])

    warmup = max(1, T // 10) if warmup_steps is None else int(warmup_steps)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(T, warmup + 1))
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=weight_decay, eps_root=1e-8),
    )
    params0 = transformer_init(
        jax.random.key(seed), p, d_model=d_model, num_layers=num_layers, dtype=dtype
    )

    def apply(params, x):
        return transformer_apply(params, x, num_heads=num_heads)

    def loss_fn(params, batch, *, key):
        x, y = batch
        logits = transformer_apply(params, x, num_heads=num_heads, dropout=dropout, key=key)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    # per-step randomness: step t draws its dropout masks from fold_in(key(seed + 1), t)
    train_fn = make_train_fn(
        loss_fn, opt, batches, checkpoint=checkpoint, key=jax.random.key(seed + 1)
    )
    config = dict(
        model="transformer",
        seed=int(seed),
        modulus=p,
        d_model=int(d_model),
        num_layers=int(num_layers),
        num_heads=int(num_heads),
        train_fraction=float(train_fraction),
        optimizer="adamw",
        learning_rate=float(learning_rate),
        warmup_steps=warmup,
        weight_decay=float(weight_decay),
        dropout=float(dropout),
        batch_size=batch_size,
        num_steps=T,
        dtype=jnp.dtype(dtype).name,
    )
    return TrainingRun(
        train_fn, params0, apply, loss_fn, opt, X_tr, y_tr, X_te, y_te, batches, config
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
    apply: Callable[[jax.Array, jax.Array], jax.Array] = None  # linear_apply
    probe_inputs: Any = None
    prediction_kind: str = "gaussian"
    sigma: float = 1.0

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
        train_fn,
        params0,
        X,
        y,
        lam,
        W,
        factors,
        float(eta),
        float(momentum),
        int(num_steps),
        apply=linear_apply,
        probe_inputs=X,
    )


def linear_apply(w: jax.Array, x: jax.Array) -> jax.Array:
    """The linear model's predictions ``x @ w``."""
    return x @ w
