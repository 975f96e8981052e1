"""Shared test helpers: operators with known spectra and residual checks (no fixtures here)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import matfree_tj as mtj


def dense_operator(A, **kwargs) -> mtj.LinearOperator:
    """The linear map of a dense matrix ``A`` as a LinearOperator."""
    A = jnp.asarray(A)
    return mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype, **kwargs)


# A dense matrix held as a pytree leaf (not closed over): all of one shape and dtype share their
# compiled products and the solvers' kernels, which keeps the test suite fast.
DenseOperator = mtj.MatrixOperator


def matrix_with_spectrum(s, seed: int = 0, shape=None) -> np.ndarray:
    """A dense float64 matrix ``Q1 diag(s) Q2^T`` with random orthogonal factors."""
    s = np.asarray(s, dtype=np.float64)
    rng = np.random.default_rng(seed)
    m, n = shape if shape is not None else (s.size, s.size)
    Q1, _ = np.linalg.qr(rng.standard_normal((m, s.size)))
    Q2, _ = np.linalg.qr(rng.standard_normal((n, s.size)))
    return (Q1 * s) @ Q2.T


def lr_eigenvalues(n: int) -> np.ndarray:
    """Hessian eigenvalues (eta = 1, T = 4) giving chaotic, tiny, stable and near-bulk values.

    |1 - lam|^4: lam in [2.3, 2.7] -> chaotic 2.9..8.4 (25 well separated values); lam near 1 ->
    tiny values 0 .. 1e-4; lam in [0.15, 0.6] -> stable 0.03..0.52; lam in [1e-4, 0.02] ->
    0.92..0.9996 (inside the bulk [0.9, 1.1]). Nothing within 0.02 of the region edges.
    """
    chaotic = np.linspace(2.3, 2.7, 25)
    tiny = 1 + np.array([0.0, 0.01, -0.015, 0.02, 0.04, -0.05, 0.07, -0.08, 0.1])
    rest = n - chaotic.size - tiny.size
    if rest < 2:
        raise ValueError("n too small")
    stable = np.linspace(0.15, 0.6, rest // 3)
    near_bulk = np.linspace(1e-4, 0.02, rest - rest // 3)
    return np.concatenate([chaotic, tiny, stable, near_bulk])


LR_ETA, LR_STEPS = 1.0, 4


@functools.lru_cache(maxsize=4)
def make_lr(P: int, n: int, seed: int = 0):
    # cached across test modules (x64 must already be on: every module enables it first)
    return mtj.examples.linear_regression(
        jax.random.key(seed), n, P, eta=LR_ETA, num_steps=LR_STEPS, eigenvalues=lr_eigenvalues(n)
    )


def closed_form_operator(lr) -> mtj.LinearOperator:
    """J = I + W diag(f - 1) W^T from the closed form (the same map as the training Jacobian)."""
    W = jnp.asarray(lr.eigenvectors)
    d = jnp.asarray(lr.factors - 1.0, W.dtype)

    def mv(v):
        return v + W @ (d * (W.T @ v))

    P = W.shape[0]
    return mtj.LinearOperator(mv, mv, (P, P), W.dtype)


_LR_OPS: dict = {}


def lr_operator(P: int, n: int, seed: int = 0):
    """(lr, closed-form operator), cached so all test modules share one operator (and its
    compiled solver kernels)."""
    key = (P, n, seed)
    if key not in _LR_OPS:
        lr = make_lr(P, n, seed)
        _LR_OPS[key] = (lr, closed_form_operator(lr))
    return _LR_OPS[key]


def true_residuals(op, res, A=None) -> np.ndarray:
    """sqrt(||A v - s u||^2 + ||A^T u - s v||^2) per triplet, recomputed here in float64.

    With a dense ``A`` the products are numpy matmuls (no new compile of the operator)."""
    U = np.asarray(res.U, np.float64)
    V = np.asarray(res.V, np.float64)
    s = np.asarray(res.s, np.float64)
    if A is not None:
        AV, AtU = A @ V, A.T @ U
    else:
        AV = np.asarray(jax.vmap(op.mv, in_axes=1, out_axes=1)(jnp.asarray(res.V)), np.float64)
        AtU = np.asarray(jax.vmap(op.rmv, in_axes=1, out_axes=1)(jnp.asarray(res.U)), np.float64)
    r1 = np.linalg.norm(AV - U * s, axis=0)
    r2 = np.linalg.norm(AtU - V * s, axis=0)
    return np.sqrt(r1**2 + r2**2)


def nearest_true(s_est, s_true) -> np.ndarray:
    """Distance from each estimate to the nearest exact singular value."""
    s_true = np.asarray(s_true, np.float64)
    return np.min(np.abs(np.asarray(s_est, np.float64)[:, None] - s_true[None, :]), axis=1)


@functools.lru_cache(maxsize=1)
def small_mlp():
    """A small digits MLP in float64 (P = 610, 8 SGD steps): its training Jacobian, the dense
    matrix and its singular values (shared by all test modules; x64 must already be on)."""
    m = mtj.examples.digits_mlp(hidden=8, num_train=128, num_epochs=4, dtype=jnp.float64)
    J = mtj.training_jacobian(m.train_fn, m.params0, check_deterministic=False)
    Jd = np.asarray(J.to_dense(), np.float64)
    return J, Jd, mtj.dense_svd(Jd).s
