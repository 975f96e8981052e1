"""Precision: narrow (bfloat16) operators, small P defaults, and what each dtype can certify.

The rule under test: a flag never claims more than the arithmetic can deliver. A value flagged
converged must have an exact singular value within ``residual / sqrt(2)`` of it (the symmetric
perturbation theorem on [[0, A], [A^T, 0]]), whatever the operator's dtype; and the default
tolerance floors come from the precision the *products* are computed in.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matfree_tj as mtj
from matfree_tj.linalg._precision import Widened, product_eps, widen

BF16_EPS = 2.0**-7  # jnp.finfo(jnp.bfloat16).eps: 8 significant bits (unit roundoff 2^-8)


def _bf16_diag():
    """The issue's example: diag(linspace(0.1, 2, 64)) in bfloat16, and its exact spectrum
    (the singular values of the stored bfloat16 matrix, in float64)."""
    A = jnp.diag(jnp.linspace(0.1, 2, 64)).astype(jnp.bfloat16)
    exact = np.sort(np.abs(np.diag(np.asarray(A, np.float64))))
    return A, exact


def _as_matrix(A):
    return mtj.MatrixOperator(A)


def _as_functions(A):
    return mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)


def _assert_flags_honest(res, exact):
    """Every flagged value has an exact singular value within its certified interval."""
    s = np.asarray(res.s, np.float64)
    half = np.asarray(res.residuals, np.float64) / math.sqrt(2)
    for si, hi, conv in zip(s, half, np.asarray(res.converged), strict=True):
        if conv:
            assert np.min(np.abs(exact - si)) <= hi, (si, hi)


@pytest.mark.parametrize("wrap", [_as_matrix, _as_functions], ids=["matrix", "functions"])
def test_bf16_operator_flags_never_lie(wrap):
    A, exact = _bf16_diag()
    op = wrap(A)
    assert product_eps(widen(op)) == BF16_EPS
    key = jax.random.key(0)
    top = mtj.top_singular(op, 3, key=key)
    bottom = mtj.bottom_singular(op, 2, key=key)
    rand = mtj.top_singular(op, 3, key=key, method="randomized")  # LAPACK has no bf16 QR
    for res in (top, bottom, rand):
        assert res.s.dtype == jnp.float32  # the solver's arithmetic ran in float32
        _assert_flags_honest(res, exact)
        # the default floor comes from the products' precision (100 eps_bf16 ||A||), not
        # from float32's; and each residual includes the products' own rounding
        assert res.atol >= 100 * BF16_EPS * 0.9 * exact[-1]
        assert np.all(np.asarray(res.residuals) >= math.sqrt(2) * BF16_EPS * 0.9 * exact[-1])
    # the wide solver arithmetic also makes the values right to the products' precision
    # (before: 768, 716, 668 and 1.2e-12, 0.60)
    np.testing.assert_allclose(top.s, exact[::-1][:3], atol=4 * BF16_EPS * exact[-1])
    np.testing.assert_allclose(bottom.s, exact[:2], atol=4 * BF16_EPS * exact[-1])


def test_bf16_tolerance_below_product_precision_certifies_nothing():
    """An atol that bfloat16 products cannot reach flags nothing (before: flags with
    residuals 10.8 and 2.25)."""
    A, exact = _bf16_diag()
    res = mtj.bottom_singular(_as_matrix(A), 2, key=jax.random.key(1), atol=1e-6)
    assert not np.any(np.asarray(res.converged))
    assert res.status != mtj.Status.CONVERGED


def test_bf16_region_counts_ranges_contain_the_true_counts():
    A, exact = _bf16_diag()
    true = {
        "chaotic": int(np.sum(exact > 1.1)),
        "bulk": int(np.sum((exact >= 0.9) & (exact <= 1.1))),
        "stable": int(np.sum(exact < 0.9)),
    }
    assert true == {"chaotic": 30, "bulk": 7, "stable": 27}
    rc = mtj.region_counts(_as_functions(A), key=jax.random.key(0), num_probes=4)
    for name, count in true.items():
        low, high = rc.interval(name)
        assert low <= count <= high, (name, low, count, high)
        # the range is wide by the products' rounding, not zero (before: 64/0/0, stderr 0)
        assert high - low > 0


def test_bf16_region_counts_say_when_the_bulk_is_below_the_precision():
    A, _ = _bf16_diag()
    with pytest.warns(mtj.ResolutionWarning, match="narrow precision"):
        rc = mtj.region_counts(
            _as_matrix(A), key=jax.random.key(0), lo=0.999, hi=1.001, num_probes=2
        )
    assert rc.interval("bulk")[0] == 0.0


def test_float32_operator_over_bf16_data_uses_the_bf16_floor():
    """Mixed precision: vectors declared float32, products through bfloat16 data (a closure,
    held as a leaf of the operator): the floor is bfloat16's."""
    A, exact = _bf16_diag()

    def make(A):
        def mv(v):
            return (A @ v.astype(jnp.bfloat16)).astype(jnp.float32)

        def rmv(u):
            return (A.T @ u.astype(jnp.bfloat16)).astype(jnp.float32)

        return mtj.LinearOperator(mv, rmv, A.shape, jnp.float32)

    op = make(A)
    assert product_eps(op) == BF16_EPS
    assert not isinstance(widen(op), Widened)  # already float32: nothing to widen
    res = mtj.top_singular(op, 2, key=jax.random.key(2))
    _assert_flags_honest(res, exact)
    assert res.atol >= 100 * BF16_EPS * 0.9 * exact[-1]


@pytest.mark.parametrize("P", [20, 5])
def test_small_P_defaults(P):
    """The SLQ defaults adapt to P < 80 (num_steps = min(80, P): a complete Krylov space,
    so the counts are exact up to rounding)."""
    s = np.linspace(0.5, 1.5, P)
    op = mtj.MatrixOperator(jnp.diag(jnp.asarray(s, jnp.float32)))
    d = mtj.singular_value_density(op, key=jax.random.key(0), num_probes=3)
    assert d.num_steps == P
    rc = mtj.region_counts(op, key=jax.random.key(0), num_probes=3)
    assert rc.num_steps == P
    true = {
        "chaotic": np.sum(s > 1.1),
        "bulk": np.sum((s >= 0.9) & (s <= 1.1)),
        "stable": np.sum(s < 0.9),
    }
    for name, count in true.items():
        assert abs(rc[name] - count) < 1e-3, (name, rc[name], count)


def test_small_P_errors_name_what_was_passed():
    op = mtj.MatrixOperator(jnp.eye(5))
    with pytest.raises(ValueError, match="got num_steps=6"):
        mtj.region_counts(op, key=jax.random.key(0), num_steps=6)
    with pytest.raises(ValueError, match="needs P >= 2"):
        mtj.singular_value_density(mtj.MatrixOperator(jnp.eye(1)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="use method='dense'"):
        mtj.region_counts(mtj.MatrixOperator(jnp.eye(1)), key=jax.random.key(0))


def _tiny_sigma_matrix(dtype):
    """60 x 60, singular values 1e-9 and linspace(1, 10, 59), random singular vectors; and
    the exact singular values of the matrix as stored in ``dtype`` (float64 SVD)."""
    rng = np.random.default_rng(0)
    Q1, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    Q2, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    s = np.concatenate([[1e-9], np.linspace(1.0, 10.0, 59)])
    A = ((Q1 * s) @ Q2.T).astype(dtype)
    return A, np.linalg.svd(A.astype(np.float64), compute_uv=False)


def test_stable_end_float32_vs_float64(x64):
    """What each dtype certifies at the stable end, sigma_min = 1e-9 with ||A|| = 10.

    float32: the products' rounding (~eps32 ||A|| = 1.2e-6) swamps the value, so the certified
    interval is about that wide and contains 0: 1e-9 is not distinguished from zero (measured:
    s = 4.7e-8, residual 1.4e-6). float64: certified to its residual bound, ~1e-14 absolute,
    six digits of 1e-9 (measured: s = 9.9999996e-10, residual 4.0e-15).
    """
    eps32 = float(np.finfo(np.float32).eps)
    A32, exact32 = _tiny_sigma_matrix(np.float32)
    r32 = mtj.bottom_singular(mtj.MatrixOperator(jnp.asarray(A32)), 1, key=jax.random.key(0))
    s32, half32 = float(r32.s[0]), float(r32.residuals[0]) / math.sqrt(2)
    assert abs(s32 - exact32[-1]) <= half32  # honest
    assert half32 >= 0.1 * eps32 * 10.0  # no certificate finer than ~eps32 ||A||
    assert s32 - half32 <= 0.0  # so 1e-9 cannot be told from 0

    A64, exact64 = _tiny_sigma_matrix(np.float64)
    r64 = mtj.bottom_singular(mtj.MatrixOperator(jnp.asarray(A64)), 1, key=jax.random.key(0))
    s64, half64 = float(r64.s[0]), float(r64.residuals[0]) / math.sqrt(2)
    assert bool(r64.converged[0])
    assert abs(s64 - exact64[-1]) <= half64
    assert float(r64.residuals[0]) <= r64.atol  # the default floor 100 eps64 ||A|| = 2.2e-13
    assert half64 <= 1e-3 * 1e-9  # at least three digits of 1e-9


def test_bf16_training_jacobian_top_values():
    """The issue's second case: a training Jacobian of a loop run in bfloat16 (before: top
    values ~80 times too large, one flagged converged). The reference is the same loop in
    float32, the J the bfloat16 program approximates; its values lie inside the bfloat16
    result's certified intervals (the products' rounding, sqrt(2) eps_bf16 ||J||, is part of
    each residual)."""
    import optax

    X = jax.random.normal(jax.random.key(0), (32, 8))
    y = jnp.sin(X[:, 0])

    def init(dtype):
        k1, k2 = jax.random.split(jax.random.key(1))
        return {
            "W1": (0.5 * jax.random.normal(k1, (8, 9))).astype(dtype),
            "W2": (0.5 * jax.random.normal(k2, (9,))).astype(dtype),
        }

    def loss(p, batch):
        Xb, yb = batch
        h = jnp.tanh(Xb.astype(p["W1"].dtype) @ p["W1"])
        return jnp.mean((h @ p["W2"] - yb.astype(h.dtype)) ** 2)

    train_fn = mtj.make_train_fn(loss, optax.sgd(0.1), mtj.full_batch_schedule((X, y), 20))
    ref = np.asarray(mtj.dense_svd(mtj.training_jacobian(train_fn, init(jnp.float32))).s)
    J = mtj.training_jacobian(train_fn, init(jnp.bfloat16))
    assert J.dtype == jnp.bfloat16
    res = mtj.top_singular(J, 3, key=jax.random.key(0))
    _assert_flags_honest(res, ref)
    np.testing.assert_allclose(res.s, ref[:3], atol=4 * BF16_EPS * ref[0])
