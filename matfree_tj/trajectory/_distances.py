r"""Bhattacharyya distances between models seen as predictive distributions, chunked over pairs.

Two kinds (Mao et al., PNAS 2024; Quinn et al. 2019):

* categorical: ``m`` models' class probabilities on ``N`` inputs, ``(m, N, C)``;
  :math:`D_{uv} = -\frac1N \sum_n \log \sum_c \sqrt{p_u(c|x_n)\, p_v(c|x_n)}`;
* gaussian: means ``(m, N)`` or ``(m, N, d)`` with a shared isotropic ``sigma``;
  :math:`D_{uv} = \frac{1}{8\sigma^2 N} \sum_n |f_u(x_n) - f_v(x_n)|^2`.

The pairs are computed in square tiles of ``r x r`` pairs (``r^2 ~ chunk_size``), inside one
compiled loop: memory is the output plus one tile's intermediate, ``O(chunk_size N C)`` numbers.
The categorical coefficient :math:`\sum_c \sqrt{p_u p_v}` of a tile is one batched matrix
product of the square roots (``HIGHEST`` precision); the gaussian distance is the sum of squared
*differences* (never :math:`|f_u|^2 + |f_v|^2 - 2 f_u\cdot f_v`, which cancels for nearby
checkpoints of one trajectory).

Underflow. With probabilities (``log=False``) a coefficient below the smallest positive normal
float (``finfo.tiny``: the two distributions have, in the dtype, disjoint support on an input)
is clamped to ``tiny``, i.e. that input contributes ``-log(tiny)/N`` (708/N in float64, 87/N in
float32) instead of infinity, and an :class:`UnderflowWarning` says how many (pair, input) terms
were clamped. With log-probabilities (``log=True``, the safe route) the coefficient is computed
as :math:`\exp(\frac{M_u + M_v}{2}) \sum_c e^{(\ell_u - M_u)/2} e^{(\ell_v - M_v)/2}`
(:math:`M` the per-input maximum log-probability), a matrix product of numbers in (0, 1]; a
tile whose scaled sums fall below ``C tiny / eps`` (where lost terms could matter) is recomputed
exactly as a log-sum-exp, so log-probabilities far below ``log(tiny)`` stay exact; only truly
disjoint supports (``-inf`` log-probabilities) are clamped and reported.

Rounding. Each row is normalised first (it may deviate from 1 by ``sqrt(eps)``), so ``D`` is the
distance of the normalised distributions. For near pairs (``BC > 1/2``, e.g. neighbouring
checkpoints) :math:`\log BC = \log(1 - H^2)` is computed from the squared Hellinger distance
:math:`H^2 = \frac12\sum_c (\sqrt{p_u} - \sqrt{p_v})^2` of *differences*: ``1 - BC`` from the
matrix product would carry an absolute error ~``eps`` (all of a float32 distance of 1e-8). The
relative error is then ~``eps / |sqrt(p_u) - sqrt(p_v)|``; identical models are at distance 0.
The categorical coefficient is at most 1 (Cauchy-Schwarz); rounding can push it a few
ulps above, which would give a distance of about ``-eps``: distances are clipped at 0. With
``b=None`` the matrix is exactly symmetric (only the tiles ``i <= j`` are computed, the lower
triangle is their transpose) with an exactly zero diagonal.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator, check_fits

__all__ = ["bhattacharyya_distances", "DistanceOperator", "UnderflowWarning"]

_HI = jax.lax.Precision.HIGHEST
_KINDS = ("categorical", "gaussian")
# default tile: its largest intermediate (r x r x N x C numbers) about 2**23 numbers
_TILE_NUMBERS = 2**23


class UnderflowWarning(RuntimeWarning):
    """Some Bhattacharyya coefficients were zero in the dtype (disjoint supports) and were
    clamped at ``finfo.tiny``: those distances are finite lower bounds, not exact values."""


# --------------------------------------------------------------------------------------
# Validation (Python and small jitted reductions, before any pairwise work)
# --------------------------------------------------------------------------------------


def _as_float(x: Any, name: str) -> jax.Array:
    try:
        x = jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected an array, got {type(x).__name__} ({e}).") from None
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name}: expected a floating-point array, got dtype {x.dtype.name}. "
            "Cast it first, e.g. x.astype(jnp.float32)."
        )
    if jnp.finfo(x.dtype).bits < 32:  # bf16 / f16: sums of N terms need more digits
        x = x.astype(jnp.float32)
    return x


@jax.jit
def _stats_prob(p):
    s = jnp.sum(p, axis=-1)
    return jnp.all(jnp.isfinite(p)), jnp.min(p), jnp.max(jnp.abs(s - 1))


@jax.jit
def _stats_log(lp):
    lse = jax.nn.logsumexp(lp, axis=-1)
    ok = ~jnp.any(jnp.isnan(lp) | (lp == jnp.inf))
    return ok, jnp.max(lp), jnp.max(jnp.abs(lse))


@jax.jit
def _stats_finite(f):
    return jnp.all(jnp.isfinite(f))


def _check_points(x: Any, name: str, kind: str, log: bool) -> jax.Array:
    """Validated ``(m, N, C)`` (categorical) or ``(m, N, d)`` (gaussian) float array."""
    x = _as_float(x, name)
    if kind == "gaussian":
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim != 3 or min(x.shape) < 1:
            raise ValueError(
                f"{name}: gaussian means must have shape (m, N) or (m, N, d) with every size "
                f">= 1, got {tuple(x.shape)}."
            )
        if not bool(_stats_finite(x)):
            raise ValueError(f"{name}: the means contain NaN or inf.")
        return x
    if x.ndim != 3 or min(x.shape) < 1:
        raise ValueError(
            f"{name}: categorical predictions must have shape (m, N, C) (m models, N inputs, "
            f"C classes), got {tuple(x.shape)}. For one model add the axis: p[None]."
        )
    tol = math.sqrt(float(jnp.finfo(x.dtype).eps))
    if log:
        ok, top, err = (float(v) for v in _stats_log(x))
        if not ok:
            raise ValueError(f"{name}: the log-probabilities contain NaN or +inf.")
        if top > tol:
            raise ValueError(
                f"{name}: log-probabilities must be <= 0, got a maximum of {top:.3g}. "
                "Pass log-softmax outputs (jax.nn.log_softmax), not logits."
            )
    else:
        ok, low, err = (float(v) for v in _stats_prob(x))
        if not ok:
            raise ValueError(
                f"{name}: the probabilities contain NaN or inf. Compute them with "
                "jax.nn.log_softmax and pass log=True for the numerically safe route."
            )
        if low < 0:
            raise ValueError(f"{name}: probabilities must be >= 0, got a minimum of {low:.3g}.")
    if err > tol:
        what = "exp(log-probabilities)" if log else "probabilities"
        raise ValueError(
            f"{name}: the {what} over the last axis (C = {x.shape[-1]} classes) must sum to 1 "
            f"for every model and input; the largest deviation is {err:.3g} (allowed "
            f"{tol:.1e} = sqrt(eps) for {x.dtype.name}). Normalise with softmax, or pass "
            f"{'probabilities with log=False' if log else 'log-probabilities with log=True'} "
            "if that is what the array holds."
        )
    return x


def _check_kind(kind: str, sigma: Any, log: bool) -> float | None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'categorical' or 'gaussian', got {kind!r}.")
    if kind == "categorical":
        if sigma is not None:
            raise TypeError("sigma is an option of kind='gaussian' only.")
        return None
    if log:
        raise TypeError("log=True applies to kind='categorical' (log-probabilities) only.")
    if sigma is None:
        raise TypeError(
            "kind='gaussian' needs the shared noise scale: pass sigma=... (> 0), e.g. the "
            "residual standard deviation of the outputs."
        )
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(
            f"sigma must be one number (the shared isotropic standard deviation), got {sigma!r}."
        ) from None
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}.")
    return s


def _tile_side(chunk_size: Any, n: int, c: int, m_max: int) -> int:
    if chunk_size is None:
        pairs = max(1, _TILE_NUMBERS // (n * c))
    else:
        if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(
            chunk_size, (int, np.integer)
        ):
            raise TypeError(f"chunk_size (pairs per tile) must be an integer, got {chunk_size!r}.")
        pairs = int(chunk_size)
        if pairs < 1:
            raise ValueError(f"chunk_size (pairs per tile) must be >= 1, got {chunk_size}.")
    return max(1, min(math.isqrt(pairs), m_max))


# --------------------------------------------------------------------------------------
# Per-point features and one tile of pairs
# --------------------------------------------------------------------------------------


def _features(x: jax.Array, kind: str, log: bool, sigma: float | None) -> tuple:
    """What a tile needs of each point, computed once (O(m N C))."""
    if kind == "gaussian":
        n = x.shape[1]
        return (x.reshape(x.shape[0], -1) / jnp.sqrt(jnp.asarray(8.0 * sigma**2 * n, x.dtype)),)
    # each row normalised exactly (it sums to 1 within sqrt(eps), checked): the identity
    # 1 - BC = H^2 below then holds to rounding
    if not log:
        r = jnp.sqrt(x)
        return (r / jnp.sqrt(jnp.sum(x, axis=-1, keepdims=True)),)
    x = x - jax.nn.logsumexp(x, axis=-1, keepdims=True)
    top = jnp.max(x, axis=-1)  # finite: each row sums to 1
    return (jnp.exp(0.5 * (x - top[..., None])), top, x)


def _pad_blocks(feats: tuple, r: int) -> tuple:
    """Rows padded to a multiple of ``r`` (copies of the last row: valid points, no NaN) and
    reshaped to ``(num_blocks, r, ...)``."""
    m = feats[0].shape[0]
    pad = (-m) % r
    out = []
    for f in feats:
        if pad:
            f = jnp.concatenate([f, jnp.repeat(f[-1:], pad, axis=0)], axis=0)
        out.append(f.reshape((f.shape[0] // r, r) + f.shape[1:]))
    return tuple(out)


def _tile(kind: str, log: bool, fa: tuple, fb: tuple):
    """Distances ``(r, r')`` of one tile, and the number of clamped terms per pair."""
    if kind == "gaussian":
        diff = fa[0][:, None, :] - fb[0][None, :, :]
        d = jnp.sum(diff * diff, axis=-1)
        return d, jnp.zeros(d.shape, d.dtype)
    bc = jnp.einsum("unc,vnc->uvn", fa[0], fb[0], precision=_HI)
    fi = jnp.finfo(bc.dtype)
    if not log:
        under = bc < fi.tiny
        logbc = jnp.log(jnp.maximum(bc, fi.tiny))
    else:
        _, ta, la = fa
        _, tb, lb = fb
        c = la.shape[-1]
        # below this scaled sum, terms lost to underflow (each < tiny) could exceed eps relative
        thresh = c * fi.tiny / fi.eps

        def fast(_):
            return 0.5 * (ta[:, None, :] + tb[None, :, :]) + jnp.log(jnp.maximum(bc, fi.tiny))

        def exact(_):
            return jax.nn.logsumexp(0.5 * (la[:, None] + lb[None, :]), axis=-1)

        logbc = jax.lax.cond(jnp.any(bc < thresh), exact, fast, None)
        under = jnp.isneginf(logbc)
        logbc = jnp.where(under, jnp.log(fi.tiny), logbc)
    # Near pairs (BC > 1/2, all of a trajectory's neighbours): log BC = log1p(-H^2) with the
    # squared Hellinger distance H^2 = 1/2 sum_c (sqrt p_u - sqrt p_v)^2 from differences, not
    # 1 - BC, which cancels: BC's rounding (~eps) would swamp distances below ~eps / rtol.
    ra = fa[0] if not log else fa[0] * jnp.exp(0.5 * fa[1])[..., None]
    rb = fb[0] if not log else fb[0] * jnp.exp(0.5 * fb[1])[..., None]
    diff = ra[:, None] - rb[None, :]
    h2 = 0.5 * jnp.sum(diff * diff, axis=-1)
    logbc = jnp.where(h2 < 0.5, jnp.log1p(-jnp.minimum(h2, 0.5)), logbc)
    d = jnp.maximum(-jnp.mean(logbc, axis=-1), 0.0)  # BC <= 1 up to rounding
    return d, jnp.sum(under, axis=-1).astype(d.dtype)


# --------------------------------------------------------------------------------------
# The full (or cross) matrix
# --------------------------------------------------------------------------------------


def _matrix_impl(fa, fb, pi, pj, *, kind, log, r, sym, m, mb):
    na, nb = fa[0].shape[0] * r, fb[0].shape[0] * r
    dtype = fa[0].dtype
    ar = jnp.arange(r)

    def body(p, carry):
        D, count = carry
        i, j = pi[p], pj[p]
        t, under = _tile(kind, log, tuple(f[i] for f in fa), tuple(f[j] for f in fb))
        rows, cols = i * r + ar, j * r + ar
        mask = (rows < m)[:, None] & (cols < mb)[None, :]
        if sym:
            mask &= rows[:, None] < cols[None, :]
        count = count + jnp.sum(jnp.where(mask, under, 0))
        return jax.lax.dynamic_update_slice(D, t, (i * r, j * r)), count

    D, count = jax.lax.fori_loop(
        0, pi.shape[0], body, (jnp.zeros((na, nb), dtype), jnp.zeros((), dtype))
    )
    if sym:  # the upper triangle and its mirror: exactly symmetric, exactly zero diagonal
        D = D[:m, :m]
        u = jnp.arange(m)
        D = jnp.where(u[:, None] < u[None, :], D, jnp.where(u[:, None] > u[None, :], D.T, 0))
    else:
        D = D[:m, :mb]
    return D, count


_matrix = jax.jit(_matrix_impl, static_argnames=("kind", "log", "r", "sym", "m", "mb"))


def _tile_pairs(nra: int, nrb: int, sym: bool) -> tuple[jax.Array, jax.Array]:
    if sym:
        i, j = np.triu_indices(nra)
    else:
        i, j = (x.ravel() for x in np.meshgrid(np.arange(nra), np.arange(nrb), indexing="ij"))
    return jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)


def _warn_clamped(count: float, total: int, log: bool) -> None:
    if count > 0:
        hint = (
            "These inputs have disjoint support (log-probability -inf) for those pairs."
            if log
            else "Pass log-probabilities (jax.nn.log_softmax outputs) with log=True: the "
            "coefficient is then computed in log space and only exactly disjoint supports "
            "are clamped."
        )
        warnings.warn(
            f"{int(count)} of {total} (pair, input) Bhattacharyya coefficients were zero in the "
            f"dtype and were clamped at finfo.tiny (each adds -log(tiny)/N to its distance, "
            f"a finite lower bound for an infinite one). {hint}",
            UnderflowWarning,
            stacklevel=3,
        )


def bhattacharyya_distances(
    a: Any,
    b: Any = None,
    *,
    kind: str = "categorical",
    sigma: float | None = None,
    log: bool = False,
    chunk_size: int | None = None,
) -> jax.Array:
    r"""Bhattacharyya distances between the predictive distributions of ``m`` models.

    .. math::
        D_{uv} = -\frac1N \sum_{n=1}^N \log \sum_{c=1}^C \sqrt{p_u(c|x_n)\,p_v(c|x_n)}
        \quad\text{(categorical)},\qquad
        D_{uv} = \frac{1}{8\sigma^2 N}\sum_{n=1}^N |f_u(x_n) - f_v(x_n)|^2
        \quad\text{(gaussian)}.

    Parameters
    ----------
    a
        Categorical: ``(m, N, C)`` class probabilities (``log=False``) or log-probabilities
        (``log=True``) of ``m`` models on the same ``N`` inputs; each ``(model, input)`` row must
        sum to 1 within ``sqrt(eps)``. Gaussian: means ``(m, N)`` or ``(m, N, d)``. Floating
        point; float16 / bfloat16 are computed in float32.
    b
        Optional second set ``(m', N, C)`` / ``(m', N[, d])``: the ``(m, m')`` cross distances.
    kind
        ``"categorical"`` or ``"gaussian"``.
    sigma
        Gaussian only (required, ``> 0``): the shared isotropic standard deviation.
    log
        Categorical only: ``a`` (and ``b``) hold log-probabilities. The numerically safe route
        (see the module notes on underflow).
    chunk_size
        Pairs per tile (the tile is ``r x r`` with ``r = isqrt(chunk_size)``); memory per tile
        ``O(chunk_size N C)`` numbers. Default: a tile of about ``2**23`` numbers.

    Returns
    -------
    jax.Array
        ``(m, m)`` (exactly symmetric, zero diagonal) or ``(m, m')``, ``>= 0``, in the input's
        dtype (at least float32).

    Cost: ``m^2 N C / 2`` multiply-adds for the coefficients, as many squared differences
    for the near pairs' Hellinger distances (module notes), and ``m^2 N / 2`` logarithms
    (``m m' N C`` and ``m m' N`` with ``b``); with ``log=True`` a tile that needs the exact
    log-sum-exp adds ``r^2 N C`` exponentials. One compile per shape and tile size; memory
    the output (plus one transient copy while the triangle is mirrored) and one tile.
    Coefficients that underflow are clamped at ``finfo.tiny`` and reported by an
    :class:`UnderflowWarning` (never a silent ``inf``).

    References
    ----------
    Bhattacharyya (1943); Quinn, Clement, De Bernardis, Niemack, Sethna, "Visualizing probabilistic
    models and data with Intensive Principal Component Analysis", PNAS 116 (2019); Mao et al.,
    "The training process of many deep networks explores the same low-dimensional manifold",
    PNAS 121 (2024).

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> p = jnp.array([[[0.5, 0.5]], [[0.9, 0.1]]])  # 2 models, 1 input, 2 classes
    >>> D = mtj.bhattacharyya_distances(p)
    >>> round(float(D[0, 1]), 6), float(D[1, 1])
    (0.111572, 0.0)
    """
    log = bool(log)
    s = _check_kind(kind, sigma, log)
    a = _check_points(a, "a", kind, log)
    sym = b is None
    if not sym:
        b = _check_points(b, "b", kind, log)
        if b.shape[1:] != a.shape[1:]:
            raise ValueError(
                f"b must hold the same inputs (and classes / output dimensions) as a: a has "
                f"shape {tuple(a.shape)}, b {tuple(b.shape)} (only the first axis may differ)."
            )
        dt = jnp.promote_types(a.dtype, b.dtype)
        a, b = a.astype(dt), b.astype(dt)
    else:
        b = a
    m, mb = a.shape[0], b.shape[0]
    n, c = a.shape[1], a.shape[2]
    r = _tile_side(chunk_size, n, c, max(m, mb))
    check_fits(
        (2 * m * mb + r * r * n * c + 3 * (m + mb) * n * c) * a.dtype.itemsize,
        f"bhattacharyya_distances of {m} x {mb} models on {n} inputs",
    )
    fa = _pad_blocks(_features(a, kind, log, s), r)
    fb = fa if sym else _pad_blocks(_features(b, kind, log, s), r)
    pi, pj = _tile_pairs(fa[0].shape[0], fb[0].shape[0], sym)
    D, count = _matrix(fa, fb, pi, pj, kind=kind, log=log, r=r, sym=sym, m=m, mb=mb)
    if kind == "categorical":
        _warn_clamped(float(count), (m * (m - 1) // 2 if sym else m * mb) * n, log)
    return D


# --------------------------------------------------------------------------------------
# The distance matrix as an operator: D @ v without storing D
# --------------------------------------------------------------------------------------


class DistanceOperator(AbstractOperator):
    r"""The ``(m, m)`` Bhattacharyya distance matrix of ``m`` models as an operator: every
    product recomputes the distances tile by tile and never stores ``D``.

    Build it with :meth:`from_predictions`. A product (``mv`` or a block ``matmat`` of ``k``
    columns) costs one pass over the ``m (m - 1) / 2`` pairs, ``m^2 N C / 2`` multiply-adds (and
    as many squared differences) and ``m^2 N / 2`` logarithms (the cost of computing ``D`` once with
    :func:`bhattacharyya_distances`), plus ``2 m^2 k``; memory ``O(m N C + chunk_size N C +
    m k)``. A Lanczos solve of ``p`` products therefore costs ``p`` distance matrices: use it
    only when the ``m^2`` numbers of ``D`` do not fit (``m`` beyond ~50,000 in 20 GB of
    float64); below that, compute ``D`` once and pass the array (the InPCA operator still never
    forms ``W``). The products use the same tiles as :func:`bhattacharyya_distances` (the
    strict upper triangle, mirrored), so the operator is exactly symmetric with a zero diagonal
    and its entries are exactly those of the array.

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> f = jnp.array([[0.0], [1.0], [3.0]])
    >>> op = mtj.DistanceOperator.from_predictions(f, kind="gaussian", sigma=0.5)
    >>> op.mv(jnp.array([1.0, 0.0, 0.0])).tolist()
    [0.0, 0.5, 4.5]
    """

    feats: tuple
    kind: str = eqx.field(static=True)
    log: bool = eqx.field(static=True)
    tile: int = eqx.field(static=True)
    num_inputs: int = eqx.field(static=True)

    def __init__(self, feats, *, kind, log, tile, m, num_inputs, dtype, check_finite=True):
        self.feats = feats
        self.kind, self.log, self.tile = kind, log, tile
        self.num_inputs = num_inputs
        self.shape = (m, m)
        self.dtype = jnp.dtype(dtype)
        self.chunk_size = 64
        self.mesh = None
        self.check_finite = bool(check_finite)

    @classmethod
    def from_predictions(
        cls,
        a: Any,
        *,
        kind: str = "categorical",
        sigma: float | None = None,
        log: bool = False,
        chunk_size: int | None = None,
    ) -> DistanceOperator:
        """The distance operator of the predictions ``a`` (arguments as
        :func:`bhattacharyya_distances`); validates ``a`` and computes the per-point features
        once (``O(m N C)`` memory)."""
        log = bool(log)
        s = _check_kind(kind, sigma, log)
        a = _check_points(a, "a", kind, log)
        m, n, c = a.shape
        r = _tile_side(chunk_size, n, c, m)
        return cls(
            _pad_blocks(_features(a, kind, log, s), r),
            kind=kind,
            log=log,
            tile=r,
            m=m,
            num_inputs=n,
            dtype=a.dtype,
        )

    def _upper_tiles(self, init, fn):
        """Fold ``fn(carry, t, keep, i, j)`` over the tiles ``i <= j`` of the strict upper
        triangle (``keep``: the pairs ``u < v < m`` of the tile; ``t``: its distances, 0 outside
        ``keep``): the same tiles, hence the same numbers, as :func:`bhattacharyya_distances`,
        each computed once."""
        m, r = self.shape[0], self.tile
        nr = self.feats[0].shape[0]
        pi, pj = (jnp.asarray(x, jnp.int32) for x in np.triu_indices(nr))
        ar = jnp.arange(r)

        def body(p, carry):
            i, j = pi[p], pj[p]
            t, _ = _tile(self.kind, self.log, *(tuple(f[b] for f in self.feats) for b in (i, j)))
            rows, cols = i * r + ar, j * r + ar
            keep = (rows[:, None] < cols[None, :]) & (cols < m)[None, :]
            return fn(carry, jnp.where(keep, t, 0), keep, i, j)

        return jax.lax.fori_loop(0, pi.shape[0], body, init)

    def _matmat(self, V):
        m, r = self.shape[0], self.tile
        nr = self.feats[0].shape[0]
        Vb = jnp.pad(V, ((0, nr * r - m), (0, 0))).reshape(nr, r, -1)

        def fn(Y, t, keep, i, j):
            # D = U + U^T with U the strict upper triangle: row block i gets t V_j, row block
            # j gets t^T V_i (a diagonal tile's t is its strict upper part, so both are needed)
            Y = Y.at[i].add(jnp.matmul(t, Vb[j], precision=_HI))
            return Y.at[j].add(jnp.matmul(t.T, Vb[i], precision=_HI))

        Y = self._upper_tiles(jnp.zeros_like(Vb), fn)
        return Y.reshape(nr * r, -1)[:m]

    def _mv(self, v):
        return self._matmat(v[:, None])[:, 0]

    # D = U + U^T is exactly symmetric: the transpose products are the products
    def _rmv(self, u):
        return self._mv(u)

    def _rmatmat(self, U):
        return self._matmat(U)

    def to_dense(self) -> jax.Array:
        """The ``(m, m)`` matrix, computed once by the tiled loop of
        :func:`bhattacharyya_distances` (exactly symmetric; memory guarded)."""
        m = self.shape[0]
        check_fits(2 * m * m * self.dtype.itemsize, f"DistanceOperator.to_dense() ({m} x {m})")
        nr = self.feats[0].shape[0]
        pi, pj = _tile_pairs(nr, nr, True)
        D, _ = _matrix(
            self.feats,
            self.feats,
            pi,
            pj,
            kind=self.kind,
            log=self.log,
            r=self.tile,
            sym=True,
            m=m,
            mb=m,
        )
        return D

    def centred_sq_norm(self, row_means: jax.Array, grand_mean: Any) -> float:
        r""":math:`\sum_{uv} (D_{uv} - r_u - r_v + g)^2` (``4 ||W||_F^2`` of the double-centred
        matrix) in one more pass over the pairs, without storing ``D``."""
        return float(
            _centred_sq_norm(
                self, jnp.asarray(row_means, self.dtype), jnp.asarray(grand_mean, self.dtype)
            )
        )


@eqx.filter_jit
def _centred_sq_norm(op: DistanceOperator, rmeans, g):
    m, r = op.shape[0], op.tile
    nr = op.feats[0].shape[0]
    rb = jnp.pad(rmeans, (0, nr * r - m)).reshape(nr, r)

    def fn(acc, t, keep, i, j):
        # the pairs u < v, each standing for (u, v) and (v, u)
        e = t - rb[i][:, None] - rb[j][None, :] + g
        return acc + 2 * jnp.sum(jnp.where(keep, e * e, 0))

    upper = op._upper_tiles(jnp.zeros((), rmeans.dtype), fn)
    return upper + jnp.sum(jnp.square(g - 2 * rmeans))  # the diagonal, D_uu = 0
