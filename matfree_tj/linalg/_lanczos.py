r"""Thick-restarted Golub-Kahan-Lanczos: top and bottom singular triplets, matrix-free.

The restarted driver runs cycles of the kernel in :mod:`._gkl` (bases ``U_m, V_{m+1}`` with
:math:`A V_m = U_m R_m`, :math:`A^T U_m = V_m R_m^T + f e_m^T`), takes the Ritz triplets of the
small :math:`R_m` (:mod:`._restart`) and, until the ``k`` wanted ones are estimated converged
(:math:`\|A^T U_m x_i - s_i V_m y_i\| = \beta |e_m^T x_i|`), restarts thickly: it keeps the
``keep`` wanted Ritz vectors plus :math:`v_{m+1}` and continues (Baglama & Reichel 2005; Wu &
Simon 2000), so memory stays ``(2m + 1) P``. The bases are preallocated ``(m, P)`` arrays
extended in place (donated) by two small compiled half-step kernels per step, with the
operator's own products called between them from Python: the products (a training run's JVP
and VJP) are compiled once per operator and shared by every cycle, restart, residual check and
solver, instead of being compiled into each solver kernel (seconds each on CPU).

Convergence flags come from residual norms recomputed with fresh operator products at the end
(``2k`` products, :mod:`._certify`), never from the recurrence; with ``verify=True`` a search on
a deflated operator looks for values the Krylov space missed.

The bottom end (:func:`bottom_singular`) is the same machinery keeping the *smallest* Ritz
vectors at each restart. Working on :math:`A` (not :math:`A^T A`) resolves a small singular
value to absolute accuracy :math:`\sim\epsilon\|A\|` once the Krylov space holds its
singular subspace; how fast that happens depends on gaps relative to :math:`\|A\|^2`: every
value that is small at that scale needs a Ritz value of its own before the smallest converges,
and a thick restart keeps only ``keep`` directions, so the restarts stall when there are more
(a dense cluster of tiny values, 1e-9 .. 1e-3 in the paper's MLP). The driver then grows the
basis (doubling, up to ``max_basis``). Harmonic extraction (:func:`._restart.harmonic_ritz`)
is an option. Flags are per value and certified: ``converged[i]`` implies an exact singular
value within ``residuals[i] / sqrt(2)`` of ``s[i]``; values below the floor ``atol`` are
certified only as lying within it of zero (``status="below_resolution"``).

``block_size > 1`` runs the same half-step kernels on blocks of ``b`` columns: block products
(``op.matmat`` / ``op.rmatmat``), the same column-by-column orthogonalisation, residual
estimate (``||D x_i||``) and thick restarts.

References
----------
Golub & Kahan, "Calculating the singular values and pseudo-inverse of a matrix", SIAM J. Numer.
Anal. B 2 (1965). Baglama & Reichel, "Augmented implicitly restarted Lanczos bidiagonalization
methods", SIAM J. Sci. Comput. 27 (2005). Wu & Simon, "Thick-restart Lanczos method for large
symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22 (2000).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator, Transposed
from ._certify import finalise, find_missed
from ._checks import check_common, check_int, check_tol, check_v0, run_guarded
from ._gkl import _rows_as_columns, gkl_cycle_eager, mm
from ._precision import product_eps
from ._randomized import randomized_svd
from ._restart import (
    default_keep,
    harmonic_restart,
    harmonic_ritz,
    residual_block,
    ritz,
    thick_restart,
)
from ._results import SingularTriplets, Status
from ._resume import load_cycle, load_triplets, save_cycle, save_triplets, tick

__all__ = ["top_singular", "bottom_singular"]


def _ext_columns(Vt, m):
    """The ``b`` residual rows of ``Vt`` (after ``m``) as ``(N, b)`` columns."""
    return _rows_as_columns(Vt, jnp.asarray(m), Vt.shape[0] - m)


def _lanczos_svd(
    op,
    k,
    *,
    key,
    which,
    tol,
    atol,
    num_basis,
    keep,
    max_products,
    v0,
    block_size=1,
    progress=None,
    stop_below=None,
    checkpoint=None,
    max_basis=None,
    harmonic=False,
    stats=None,
):
    """The restarted driver on validated arguments: cycles of ``num_basis`` steps, thick
    restarts keeping ``keep`` Ritz vectors, until the recurrence estimates of the ``k`` wanted
    residuals are a tenth of their tolerance, the basis is complete, or ``max_products`` would
    be exceeded; then :func:`finalise`. ``stop_below``: stop as soon as the top Ritz value plus
    its estimate is below it (the missed-value search only needs that). ``max_basis``: when a
    cycle fails to cut the worst wanted residual estimate tenfold (relative to its
    tolerance), the basis grows (doubles) up to this size (default: no growth).
    ``harmonic``: restart on harmonic triplets (bottom end of a square operator only).
    ``stats``: a dict that receives the final basis size (``"num_basis"``). Cost: ``2 num_basis``
    products, ``2 (num_basis - keep)`` per restart (plus ``b`` for a harmonic one), ``2k`` for
    the final residuals.
    ``checkpoint``: a :class:`~._resume.RunStore` (view); the state is saved after every
    restart and the result at the end, and a saved state is continued from."""
    M, N = op.shape
    dtype = op.dtype
    r = min(M, N)
    m = num_basis
    eps = product_eps(op)  # the products' precision sets the floor, not the working dtype
    k_start, k_loop = jax.random.split(key)
    seed0 = float(jax.random.uniform(k_loop, (), minval=0.0, maxval=100.0))
    if v0 is None:
        v0 = jax.random.normal(k_start, (N,), dtype)
    else:
        v0 = check_v0(v0, N, dtype)
    nv = float(jnp.linalg.norm(v0))
    if not (math.isfinite(nv) and nv > 0):
        raise ValueError("v0 must be a finite nonzero vector.")
    b = block_size
    Ut = jnp.zeros((m, M), dtype)
    if b == 1:
        Vt = jnp.zeros((m + 1, N), dtype).at[0].set(v0 / nv)
    else:
        # first block: v0 and b - 1 random directions, orthonormalised
        V0 = jax.random.normal(k_start, (N, b), dtype).at[:, 0].set(v0 / nv)
        V0, _ = jnp.linalg.qr(V0)
        Vt = jnp.zeros((m + b, N), dtype).at[:b].set(V0.T)
    R = jnp.zeros((m, m), dtype)
    start = 0
    num_products = 0
    anorm = 0.0
    cycle = 0
    stage = None
    worst_prev = math.inf  # the worst wanted residual estimate of the previous cycle
    if checkpoint is not None:
        if harmonic:
            raise ValueError(
                "extraction='harmonic' does not resume yet (its cycles alternate between A and "
                "A^T); use the default extraction='ritz' with a checkpoint"
            )
        stage = checkpoint.stage(
            "lanczos", shape=op.shape, dtype=str(dtype), k=k, which=which, m=m, keep=keep, b=b,
            tol=tol, atol=atol, max_products=max_products, stop_below=stop_below,
        )  # fmt: skip
        done = load_triplets(stage)
        if done is not None:
            _say(progress, f"lanczos ({which}): finished before, {done.num_products} products")
            if stats is not None:  # the basis it ended with (the missed-value search starts there)
                basis = stage.load("basis")
                stats["num_basis"] = int(basis["__meta__"]["num_basis"]) if basis else m
            return done
        saved = load_cycle(stage, dtype)
        if saved is not None:  # continue bit-identically after the last saved restart
            Ut, Vt, R, c = saved
            start, num_products, anorm, cycle = (
                c["start"], c["num_products"], c["anorm"], c["cycle"],
            )  # fmt: skip
            m = int(R.shape[0])  # the basis may have grown before the save
            worst_prev = float(c.get("worst_prev", math.inf))
            _say(progress, f"lanczos ({which}): resuming at cycle {cycle}, {num_products} products")
    status = Status.MAX_PRODUCTS
    order_of = (lambda n: np.arange(n)) if which == "largest" else (lambda n: np.arange(n)[::-1])
    early = {}

    def stop(end, R_, C):
        """Block cycles: are the wanted triplets converged in the basis so far (``end``)?
        A block Krylov space grows ``b`` columns a step, so checking only at the end of a
        cycle of ``m`` wastes up to ``2 (m - keep)`` products; the SVD of the small
        ``R[:end, :end]`` costs no products."""
        if end < k + b:
            return False
        X_, S_, Y_ = ritz(np.asarray(R_)[:end, :end])
        idx_ = order_of(end)[:k]
        # A^T U x - s V y = V_new C (E_end^T x): only the last b rows of x couple
        est_ = np.linalg.norm(np.asarray(C, np.float64) @ X_[end - b :, idx_], axis=0)
        a_ = atol if atol is not None else 100 * eps * max(anorm, float(S_[0]))
        if np.all(est_ <= 0.1 * (tol * S_[idx_] + a_)):
            early.update(end=end, X=X_, S=S_, Y=Y_, est=est_)
            return True
        return False

    # harmonic=True (bottom end): restarts on harmonic triplets (_restart.harmonic_restart);
    # each such restart hands the next cycle to the transposed operator, and ``flipped`` says
    # which one the bases belong to.
    harmonic = bool(harmonic) and which == "smallest" and M == N
    max_basis = m if max_basis is None else max(m, int(max_basis))
    extraction = "ritz"
    ops = (op, Transposed(op)) if harmonic else (op, op)
    flipped = False
    k_res = jax.random.fold_in(k_loop, 1)
    while True:
        cur = ops[int(flipped)]
        seed = seed0 + 1000.0 * cycle
        # D: the residual block's coefficients, fresh each cycle (the kept Ritz vectors couple
        # to the new directions through R's arrow column, not through D)
        D = jnp.zeros((b, m), dtype)
        Ut, Vt, R, D, finite, _ = run_guarded(
            gkl_cycle_eager, cur, Ut, Vt, R, D, start, float(seed), True, stop if b > 1 else None
        )
        num_products += 2 * ((early["end"] if early else m) - start)
        if not bool(finite):
            raise FloatingPointError(
                "A Lanczos step produced NaN or inf (the operator returned non-finite values)."
            )
        if early:  # a block cycle ended early: its wanted triplets are converged
            m = early["end"]
            X, S, Y = early["X"], early["S"], early["Y"]
            anorm = max(anorm, float(S[0]))
            if progress is not None:
                progress(
                    f"lanczos ({which}) cycle {cycle}: {num_products} products, {k}/{k} "
                    f"estimated converged after {m} basis vectors (block size {b})"
                )
            status = Status.CONVERGED
            order = order_of(m)
            break
        X, S, Y = ritz(R)
        anorm = max(anorm, float(S[0]))
        order = np.arange(m) if which == "largest" else np.arange(m)[::-1]
        # ||A^T U x_i - s_i V y_i|| = ||D x_i|| (b = 1: beta |e_m^T x_i|)
        est = np.linalg.norm(np.asarray(D, np.float64) @ X[:, order[:k]], axis=0)
        a = atol if atol is not None else 100 * eps * anorm
        extraction = "ritz"
        # The recurrence estimate ignores rounding in A v - s u; require a margin below the
        # target so that the final check from fresh products rarely disagrees.
        done = bool(np.all(est <= 0.1 * (tol * S[order[:k]] + a))) or m >= r
        if harmonic and not done:
            # harmonic triplets: b products give their residuals, and the restart needs them
            step_cost = 2 * (m - keep) + b
            if num_products + step_cost + 2 * k > max_products:
                break
            Xh, Sh, Yh = harmonic_ritz(R, D)
            x_ext = Vt[m] if b == 1 else _ext_columns(Vt, m)
            k_res, k_q = jax.random.split(k_res)
            E, Q = residual_block(Ut, cur.apply("mv" if b == 1 else "matmat", x_ext), k_q)
            num_products += b
            E = np.asarray(E, np.float64).reshape(M, b)
            ho = np.arange(m)[::-1]
            est_h = np.linalg.norm(E @ Yh[m:, ho[:k]], axis=0)
            if np.all(est_h <= 0.1 * (tol * Sh[ho[:k]] + a)) or np.sum(est_h) < np.sum(est):
                extraction, est = "harmonic", est_h
            done = bool(
                np.all(est <= 0.1 * (tol * (Sh if extraction == "harmonic" else S)[ho[:k]] + a))
            )
        sk = Sh if extraction == "harmonic" else S
        sk_wanted = sk[order[:k]]
        if progress is not None:
            tick(progress, f"lanczos ({which})", num_products, None)
            ndone = int(np.sum(est <= tol * sk[order[:k]] + a))
            progress(
                f"lanczos ({which}) cycle {cycle}: {num_products} products, {ndone}/{k} "
                f"estimated converged, s in [{sk[order[k - 1]]:.4g}, {sk[order[0]]:.4g}]"
            )
        if done:
            status = Status.CONVERGED
            break
        if stop_below is not None and S[order[0]] + est[0] < stop_below:
            break  # the caller only needs to know that the top value lies below stop_below
        if harmonic:
            idx = np.arange(m)[::-1][:keep]
            Ut, Vt, R = harmonic_restart(
                Q, Ut, Vt, jnp.asarray(Xh), jnp.asarray(Yh), jnp.asarray(Sh), jnp.asarray(idx)
            )
            flipped = not flipped
        else:
            step_cost = 2 * (m - keep)
            if num_products + step_cost + 2 * k > max_products:
                break
            idx = order[:keep]
            Ut, Vt, R = thick_restart(
                Ut, Vt, jnp.asarray(X), jnp.asarray(Y), jnp.asarray(S), jnp.asarray(idx)
            )
        start = keep
        cycle += 1
        # A restarted Krylov space keeps only ``keep`` directions; when more small values
        # than that are unresolved (indistinguishable from each other at the scale of
        # ||A||^2) the restarts stall, and only a longer unrestarted stretch resolves them:
        # grow the basis unless a cycle cut the worst wanted estimate tenfold (a factor 2
        # instead cost 556 more products on the P = 5000 oracle, the same on two others).
        worst = float(np.max(est / (tol * np.abs(sk_wanted) + a)))
        if m < max_basis and worst > 0.1 * worst_prev:
            room = (max_products - num_products - 2 * k - b) // 2 + keep
            m_new = min(max_basis, 2 * m, room)
            m_new = b * (m_new // b) if b > 1 else m_new
            if m_new > m:
                Ut = jnp.zeros((m_new, M), dtype).at[:m].set(Ut)
                Vt = jnp.zeros((m_new + b, N), dtype).at[: m + b].set(Vt)
                R = jnp.zeros((m_new, m_new), dtype).at[:m, :m].set(R)
                if progress is not None:
                    progress(f"lanczos ({which}): restarts stalled; basis {m} -> {m_new}")
                m = m_new
        worst_prev = worst
        save_cycle(
            stage, Ut, Vt, R, start=start, num_products=num_products, anorm=anorm, cycle=cycle,
            worst_prev=worst_prev,
        )  # fmt: skip
    idx = order[:k]
    if extraction == "harmonic":
        U = mm(jnp.asarray(Xh[:, idx], dtype).T, Ut).T
        V = mm(jnp.asarray(Yh[:, idx], dtype).T, Vt).T
        S = Sh
    else:
        U = mm(jnp.asarray(X[:, idx], dtype).T, Ut[:m]).T
        V = mm(jnp.asarray(Y[:, idx], dtype).T, Vt[:m]).T
    if flipped:  # the bases belong to A^T: its left vectors are A's right ones
        U, V = V, U
    if stats is not None:
        stats["num_basis"] = m
    if stage is not None:
        stage.save("basis", {}, num_basis=int(m))
    res = finalise(
        op,
        U,
        V,
        S[idx],
        tol=tol,
        atol_rel=100,
        anorm=anorm,
        which=which,
        method="lanczos",
        num_products=num_products,
        status=status,
        num_restarts=cycle,
        atol=atol,
        block=b,
    )
    return save_triplets(stage, res)


def _say(progress, msg):
    if progress is not None:
        progress(msg)


def top_singular(
    op: AbstractOperator,
    k: int,
    *,
    key: jax.Array | None = None,
    method: str = "lanczos",
    tol: float = 1e-10,
    atol: float | None = None,
    num_basis: int | None = None,
    keep: int | None = None,
    max_products: int | None = None,
    v0: jax.Array | None = None,
    block_size: int | str | None = None,
    progress: Callable[[str], None] | None = None,
    verify: bool = True,
    checkpoint: Any = None,
    **opts: Any,
) -> SingularTriplets:
    r"""The ``k`` largest singular triplets of ``op`` (descending).

    ``method="lanczos"`` (default): thick-restarted Golub-Kahan-Lanczos bidiagonalisation with
    full reorthogonalisation (twice) in a basis of ``num_basis`` vectors. ``method="randomized"``:
    the randomized SVD of Halko, Martinsson & Tropp (see
    :func:`matfree_tj.linalg.randomized_svd` for its options, passed through ``**opts``).

    Each cycle projects :math:`A` onto Krylov bases, :math:`R = U^T A V`, and takes the SVD
    of the small :math:`R`; the ``keep`` largest Ritz vectors are kept at a restart. A triplet is
    converged when its residual, recomputed from the operator,
    :math:`r_i = (\|A v_i - s_i u_i\|^2 + \|A^T u_i - s_i v_i\|^2)^{1/2}`, satisfies
    :math:`r_i \le tol \cdot s_i + atol`; then some exact singular value lies within
    :math:`r_i/\sqrt2` of :math:`s_i` (and within :math:`r_i^2/gap` for isolated values).

    Parameters
    ----------
    op
        The operator (any shape).
    k
        Number of triplets, ``1 <= k < min(shape)``.
    key
        PRNG key for the start vector (required).
    method
        ``"lanczos"`` or ``"randomized"``.
    tol, atol
        Relative and absolute residual tolerance (``atol`` defaults to
        ``100 eps_p ||A||``, the floor set by rounding, with ``eps_p`` the machine epsilon
        of the precision the *products* are computed in; see Notes).
    num_basis
        Krylov basis size ``m`` (default ``min(P, max(2k + 20, 40))``); memory
        ``(2m + 1) P`` numbers.
    keep
        Ritz vectors kept at a thick restart (default ``k + (m - k) // 2``).
    max_products
        Budget of operator products (default ``max(50 m, 2000)``), final residual check
        (``2k``) included; when spent, the unconverged triplets are flagged so.
    v0
        Optional start vector.
    block_size
        Columns per block product. Lanczos: ``b > 1`` runs block Golub-Kahan (the same
        half-step kernels on ``b`` columns): every product is a block product of ``b`` columns
        (``op.matmat`` / ``op.rmatmat``), which on a training Jacobian shares one primal run
        among the columns; the final residual check runs in blocks of ``b`` too. A block cycle
        stops as soon as its wanted triplets are estimated converged (checked after every
        block step), so no cycle overshoots. Block Krylov spaces still need more column
        products than a single-vector one for the same accuracy (top-50 of the reference MLP's
        spectrum, without the residual check: 442 for ``b = 1``, 622 / 798 / 1022 / 1214 for
        ``b`` = 8 / 16 / 32 / 64), so a block pays off only when a column costs that
        much less inside a block: on a GPU, where a block of 64-256 columns costs about one
        product, it is several times faster; on a CPU (a column ~0.54 of a single product in a
        64-block) it is not. ``"auto"`` times one single product and one 64-column block
        product (counted in ``num_products``) and takes the ``b`` in 1, 8, 16, 32, 64 (up to
        ``max(8, 1.3 k)``) with the least (measured products ratio) x (per-column cost,
        interpolated in ``log b``).
        ``None`` (default): ``1`` on the CPU backend, ``"auto"`` on an accelerator.
        ``num_basis`` (default for ``b > 1``: ``max(2k + 20 + 4b, k + 8b)``) is rounded to a
        multiple of ``b``; ``keep`` defaults to ``k + b``.
        Randomized: the block of the adaptive range finder (default ``k + oversample``).
    progress
        Optional callable receiving one line per restart cycle (products so far, triplets
        estimated converged) -- for long runs. Lanczos only.
    verify
        Lanczos: after convergence, check that no singular value above ``s_k`` was missed
        (a single-vector Krylov space holds one copy of a repeated value) by a short Lanczos
        run on the operator with the found triplets deflated, and take in any value it
        certifies above ``s_k`` (then check again). Costs one small run per round (typically
        40-150 products, counted in ``num_products``); ``status="unverified"`` if the budget
        runs out first. ``False`` skips it: every flagged value is then still a true singular
        value, but not necessarily among the top ``k``.
    checkpoint
        Optional :class:`~matfree_tj.linalg.RunStore` (or a view of one): the driver's state
        (bases, projected matrix, counters) is saved atomically after every restart cycle and
        the triplets when done; a run given a store that holds a saved state continues from it
        and returns the same numbers as an uninterrupted run (identical: the remaining cycles
        see the same inputs), repeating at most the cycle that was running. Lanczos only.
        Cost: ``(2m + b) P`` numbers written per cycle.

    Returns
    -------
    SingularTriplets
        ``s, U, V, residuals, converged, num_products, status``.

    Cost: ``2 m`` products for the first cycle, ``2 (m - keep)`` per restart, ``2k`` for the
    residual check; ``O(P m)`` flops per step for the reorthogonalisation.

    Notes
    -----
    Precision. The solver's own arithmetic (bases, Gram-Schmidt, Ritz extraction) runs in the
    operator's dtype or float32, whichever is wider: a bfloat16 or float16 operator's products
    get their input cast down and their result cast up, and the triplets come back in float32.
    The tolerance floor follows the products, not the solver: ``eps_p`` is the largest machine
    epsilon among the operator's dtype, the operators it wraps and the floating arrays it holds
    (a float32 Jacobian of a loop with bfloat16 parameter leaves gets bfloat16's). When the
    products are narrower than the solver, each residual includes their rounding,
    :math:`\sqrt 2 \epsilon_p \|A\|`, so a flag never rests on accuracy the products lack;
    with bfloat16 (:math:`\epsilon_p = 2^{-7}`) values are certified to about a percent of
    :math:`\|A\|`. For a training Jacobian with float32 master weights and bfloat16 compute,
    ``J`` is the derivative of the loop as JAX computes it, with respect to the float32
    parameters, and its products are no more accurate than the bfloat16 passes (see
    :mod:`matfree_tj.linalg._precision`).

    References
    ----------
    Golub & Kahan (1965); Baglama & Reichel, SIAM J. Sci. Comput. 27 (2005);
    Halko, Martinsson & Tropp, SIAM Review 53 (2011).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, matfree_tj as mtj
    >>> A = jnp.diag(jnp.arange(1.0, 101.0))
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)
    >>> res = mtj.top_singular(op, 3, key=jax.random.key(0), tol=1e-5)
    >>> [round(float(x), 3) for x in res.s]
    [100.0, 99.0, 98.0]
    """
    if method == "randomized":
        if num_basis is not None or keep is not None or v0 is not None or checkpoint is not None:
            raise TypeError("num_basis, keep, v0 and checkpoint are options of method='lanczos'.")
        return randomized_svd(
            op,
            k,
            key=key,
            tol=tol,
            atol=atol,
            max_products=max_products,
            block_size=block_size,
            **opts,
        )
    if method != "lanczos":
        raise ValueError(f"method must be 'lanczos' or 'randomized', got {method!r}.")
    if opts:
        raise TypeError(f"top_singular(method='lanczos') got unknown options {sorted(opts)}.")
    op, key, k, tol, m = check_common(
        op,
        k,
        key,
        "top_singular",
        square=False,
        tol=tol,
        num_basis=num_basis,
        default_basis=lambda k: max(2 * k + 20, 40),
    )
    extra = 0
    if block_size is None:
        block_size = 1 if jax.default_backend() == "cpu" else "auto"
    if isinstance(block_size, str):
        if block_size != "auto":
            raise ValueError(f"block_size must be an integer or 'auto', got {block_size!r}.")
        block_size, extra, why = choose_block_size(op, k)
        if progress is not None:
            progress(f"block_size='auto': {block_size} ({why})")
    if num_basis is None and not isinstance(block_size, bool) and block_size > 1:
        b = int(block_size)
        r = min(op.shape)
        m = min(r - b, max(2 * k + 20 + 4 * b, k + 8 * b))
        m = max(m, k + b)
        keep = k + b if keep is None else keep
    res = _run(
        op,
        k,
        key=key,
        which="largest",
        tol=tol,
        atol=atol,
        m=m,
        keep=keep,
        max_products=max_products,
        v0=v0,
        block_size=block_size,
        progress=progress,
        verify=bool(verify),
        checkpoint=checkpoint,
    )
    return dataclasses.replace(res, num_products=res.num_products + extra) if extra else res


# Column products for the top-50 of the reference MLP's exact spectrum (the digits MLP,
# P = 4810), relative to b = 1, without the residual check (Lanczos and the missed-value
# search): the price of a block Krylov space in products (measured with this driver and its
# block defaults; benchmarks/README.md, "Block Krylov top-k").
_BLOCK_PRODUCT_RATIO = {1: 1.0, 8: 1.41, 16: 1.81, 32: 2.31, 64: 2.75}


def choose_block_size(op: AbstractOperator, k: int, probe: int = 64):
    """``(b, num_products_spent, reason)``: the block size with the least expected time,
    (products ratio for ``b``) x (per-column cost of a ``b``-column block product), from one
    timed single product and one timed ``probe``-column block product (each after a
    compiling call; ``2 + 2 probe`` column products, returned so the caller counts them).
    The per-column cost at other ``b`` is interpolated linearly in ``log b``; candidates are
    1, 8, 16, 32, 64 up to ``max(8, 1.3 k)`` (the range the products ratios were measured in)."""
    import time

    N = op.shape[1]
    probe = max(2, min(probe, min(op.shape) // 2))
    x = jnp.ones((N,), op.dtype) / math.sqrt(N)
    X = jnp.tile(x[:, None], (1, probe))

    def timed(kind, arg):
        jax.block_until_ready(op.apply(kind, arg))  # compile (or cache hit)
        t0 = time.perf_counter()
        jax.block_until_ready(op.apply(kind, arg))
        return time.perf_counter() - t0

    c1 = timed("mv", x)
    cb = timed("matmat", X) / probe
    best, best_cost = 1, c1
    for b, ratio in _BLOCK_PRODUCT_RATIO.items():
        # the ratios were measured for b up to ~1.3 k; a block much wider than k spends most
        # of its columns on values nobody asked for (quick reference model, k = 10, b = 64:
        # 940 products against 142)
        if b == 1 or b > probe or b > max(8, 1.3 * k) or k + b > min(op.shape) - b:
            continue
        frac = math.log(b) / math.log(probe)
        cost = ratio * math.exp((1 - frac) * math.log(c1) + frac * math.log(max(cb, 1e-12)))
        if cost < best_cost:
            best, best_cost = b, cost
    why = (
        f"one column {c1 * 1e3:.3g} ms alone, {cb * 1e3:.3g} ms in a {probe}-column block; "
        f"expected time relative to b = 1: {best_cost / c1:.2f}"
    )
    return best, 2 + 2 * probe, why


def _run(
    op,
    k,
    *,
    key,
    which,
    tol,
    atol,
    m,
    keep,
    max_products,
    v0,
    block_size=1,
    progress=None,
    verify=False,
    checkpoint=None,
    max_basis=None,
    harmonic=False,
):
    M, N = op.shape
    if M < N:
        # Wide: run on A^T (tall), whose right Krylov basis can become complete, and swap
        # the vectors back (the residuals are symmetric in U and V).
        if v0 is not None:
            v0 = check_v0(v0, N, op.dtype)
            v0 = op.mv(v0)
        res = _run(
            Transposed(op),
            k,
            key=key,
            which=which,
            tol=tol,
            atol=atol,
            m=m,
            keep=keep,
            max_products=max_products,
            v0=v0,
            block_size=block_size,
            progress=progress,
            verify=verify,
            checkpoint=checkpoint,
            max_basis=max_basis,
            harmonic=harmonic,
        )
        return dataclasses.replace(res, U=res.V, V=res.U)
    b = check_int("block_size", block_size, 1, max(1, min(op.shape) // 2), "min(shape) // 2")
    if b > 1:
        # whole blocks only: round the basis down to a multiple of b and leave room for the
        # b residual directions
        r = min(op.shape)
        if m + b > r:
            m = r - b
        m = b * (m // b)
        if m < k + b:
            raise ValueError(
                f"With block_size={b} the basis (num_basis rounded down to a multiple of b, at "
                f"most min(shape) - b = {r - b}) must hold k + b = {k + b} vectors; got {m}. "
                "Increase num_basis or use a smaller block_size."
            )
        keep0 = (
            default_keep(k, m)
            if keep is None
            else check_int("keep", keep, k, m - 1, "num_basis - 1")
        )
        keep = m - b * max(1, (m - keep0) // b)  # >= min(keep0, m - b) >= k
    else:
        if keep is None:
            keep = default_keep(k, m)
        keep = check_int("keep", keep, k, m - 1, "num_basis - 1")
    if m == min(op.shape):
        keep = min(keep, m - 1)
    if max_products is None:
        max_products = max(50 * m, 2000)
    max_products = check_int("max_products", max_products, 2 * m + 2 * k, 10**12)
    if atol is not None:
        atol = check_tol("atol", atol)
    if max_basis is not None:
        max_basis = b * (min(max_basis, min(op.shape) - (b if b > 1 else 0)) // b)
    k_run, k_check = jax.random.split(key)
    stats = {}
    res = _lanczos_svd(
        op,
        k,
        key=k_run,
        which=which,
        tol=tol,
        atol=atol,
        num_basis=m,
        keep=keep,
        max_products=max_products,
        v0=v0,
        block_size=b,
        progress=progress,
        checkpoint=checkpoint,
        max_basis=max_basis,
        stats=stats,
        harmonic=harmonic,
    )
    if verify and res.status == Status.CONVERGED and k < min(op.shape):
        res = find_missed(
            op,
            res,
            solve=functools.partial(_lanczos_svd, checkpoint=checkpoint),
            which=which,
            key=k_check,
            tol=tol,
            atol=atol,
            max_products=max_products,
            progress=progress,
            max_basis=None if max_basis is None else stats["num_basis"],
        )
    return res


def bottom_singular(
    op: AbstractOperator,
    k: int,
    *,
    key: jax.Array | None = None,
    tol: float = 1e-8,
    atol: float | None = None,
    num_basis: int | None = None,
    keep: int | None = None,
    max_products: int | None = None,
    v0: jax.Array | None = None,
    block_size: int = 1,
    progress: Callable[[str], None] | None = None,
    verify: bool = True,
    checkpoint: Any = None,
    max_basis: int | None = None,
    extraction: str = "ritz",
) -> SingularTriplets:
    r"""The ``k`` smallest singular triplets of a square ``op`` (ascending), with honest flags.

    Thick-restarted Golub-Kahan-Lanczos that keeps the ``keep`` *smallest* Ritz vectors at each
    restart. Working with :math:`A` itself (not :math:`A^T A`) resolves a small singular value
    to absolute accuracy about :math:`\epsilon \|A\|` instead of :math:`\sqrt{\epsilon}\|A\|`,
    so in float64 values near ``1e-9`` are found to about six digits once the Krylov space has
    captured their singular subspace. In float32 they are not: products rounded to float32
    carry about :math:`\epsilon_{32}\|A\| \approx 1.2 \cdot 10^{-7} \|A\|`, and a value
    below that is certified only as lying in an interval that contains zero (measured on a
    60 x 60 matrix with singular values 1e-9 and 1..10: float32 gives 4.7e-8 with residual
    1.4e-6, float64 9.9999996e-10 with residual 4.0e-15; ``tests/test_precision.py``).

    Why restarts stall, and the growing basis. A restarted Krylov method converges to the
    smallest value only once every singular value that is small *at the scale of*
    :math:`\|A\|^2` (the polynomial filter cannot tell them apart from zero) is resolved by
    a Ritz value of its own; a thick restart keeps only ``keep`` directions, so when more
    small values than that are unresolved, the restarts stall (measured: 0/5 in 3,970
    products on a P = 800 matrix with 150 distinct values in [1e-9, 110] and 8 below 1e-11,
    basis 80; with growth, 5/5 certified in 1,264 products plus 652 for ``verify``). The
    driver therefore doubles the basis whenever a restart cycle fails to cut the worst
    wanted residual tenfold, up to ``max_basis``; once the basis exceeds the number of
    distinct small values, one more cycle resolves them (an unrestarted Krylov space of
    dimension ``d`` holds an operator with ``d`` distinct singular values exactly). Products
    then scale with the number of singular values that must be resolved, not with ``P``:
    measured on oracles with ``d`` distinct values (49 to 401, P = 200 to 5,000), ``3.5 d``
    to ``8 d`` products to certify, plus about twice the final basis for ``verify``. An
    operator whose small values form a continuum (a trained network's bottom end) needs a
    basis comparable to the number of values below about :math:`\|A\| / m`, which can approach ``P``
    (the reference MLP, P = 4810, in float64: 0/10 flagged in 4,130 products with the basis
    grown to 1,000; its Ritz values reached 4.7e-4 against a smallest value near 2e-9).
    Harmonic extraction (``extraction="harmonic"``; Baglama & Reichel 2005, as irlba's
    ``smallest=TRUE``) changes which vectors a restart keeps, not this capacity limit: on our
    oracles it took the same products as the Ritz extraction on two and 25% more on the third
    (products to convergence). At a fixed basis too small for the problem (120 vectors, no
    growth) neither certified any of the five smallest within 4,000 products.

    Resolution limit. Products rounded to :math:`\epsilon_p` (the products' precision)
    carry errors of about :math:`\epsilon_p \|A\|`, so no residual certifies a value below
    the floor ``atol`` (default :math:`100\,\epsilon_p\|A\|`: :math:`2.2 \cdot 10^{-14}
    \sigma_1` in float64, :math:`1.2 \cdot 10^{-5}\sigma_1` in float32) to relative
    accuracy. Such a value, when flagged, is certified only as a singular value within about
    ``atol`` of zero; ``res.below_floor`` marks it, ``res.accuracy()`` records ``"floor"``
    and ``"below_floor"``, and when every flag is set but some value is below the floor the
    status is ``"below_resolution"`` instead of ``"converged"``. Values above the floor are
    reachable, within the budget, when the basis can grow past the number of distinct small
    values (above); otherwise their flags stay unset and the status is ``"max_products"``.
    In float64 GKL on :math:`A` (not :math:`A^T A`) often resolves values below the floor
    as well (1e-14 to 20% with :math:`\sigma_1 = 110` in our test), but nothing certifies
    that. In float32 (floor :math:`1.3 \cdot 10^{-3}` for :math:`\sigma_1 = 110`) the
    same cluster (true values 1e-9 to 4e-8 after rounding the matrix) came back as 5e-14 to
    2e-7 with residuals up to 1.2e-4: every one flagged, and every one marked below the
    floor (``"below_resolution"``).

    Flags are per value and certified: ``converged[i]`` is set only if the residual
    recomputed from the operator satisfies :math:`r_i \le tol \cdot s_i + atol`, which
    guarantees an exact singular value within :math:`r_i/\sqrt 2` of ``s[i]``. Values
    flagged unconverged are upper estimates (Ritz values are Rayleigh-Ritz values of
    :math:`A^T A`) and should not be trusted. A single-vector Krylov space can miss a value
    entirely (copies of a repeated value, tight clusters); ``verify=True`` then checks for
    smaller values that were missed, as :func:`top_singular` does for larger ones.

    Parameters
    ----------
    op
        Square operator (``P x P``).
    k
        Number of triplets, ``1 <= k < P``.
    key
        PRNG key (required).
    tol, atol
        Relative and absolute residual tolerance.
    num_basis
        Basis size ``m`` (default ``min(P, max(4k + 40, 80))``: larger helps the bottom end).
    keep
        Ritz vectors kept at a restart (default ``k + (m - k) // 2``).
    max_products
        Product budget (default ``max(50 m, 2000, 8 max_basis)``: room for the basis to
        grow to ``max_basis`` and for ``verify``).
    v0
        Optional start vector.
    block_size
        Block products of ``b`` columns, as in :func:`top_singular`.
    progress
        Optional callable receiving one line per restart cycle, as in :func:`top_singular`.
    max_basis
        Largest basis the driver may grow to when restarts stall (default: ``P``, at most
        1000 vectors and 256 MB of bases, ``(2m + 1) P`` numbers); ``num_basis`` disables
        growth.
    extraction
        ``"ritz"`` (default) or ``"harmonic"``: which triplets a restart keeps. Harmonic
        triplets :math:`u = U_m x`, :math:`v = V_{m+1}\tilde y` from the SVD of
        :math:`[R_m^T; \beta e_m^T]` satisfy :math:`A^T u = s v` exactly; each restart
        costs one extra product and hands the next cycle to :math:`A^T`.
    verify
        After convergence, look for a value below ``s_k`` that the Krylov space missed: a
        Lanczos run for the smallest triplet of ``A`` with the found values raised to
        ``2 ||A||`` (:class:`~matfree_tj.core.Raised`); a value certified below ``s_k``
        joins the result and the check repeats. The bottom end converges slowly, so this run
        can cost as much as the first; if it does not converge within ``max_products``,
        ``status="unverified"`` (the flags stay: each flagged value is still a true singular
        value). ``False`` skips it.
    checkpoint
        Optional :class:`~matfree_tj.linalg.RunStore`: save after every restart cycle and
        resume, as in :func:`top_singular`.
        value). ``False`` skips it. The search starts with the basis size the main run ended
        with.

    Returns
    -------
    SingularTriplets
        ``s`` ascending; fields as :func:`top_singular`; ``status`` also
        ``"below_resolution"`` (see the resolution limit above).

    Cost: as :func:`top_singular` while the basis stays at ``num_basis``; a grown basis
    ``m`` costs ``2 (m - keep)`` products per cycle and memory ``(2m + 1) P``.

    References
    ----------
    Baglama & Reichel, "Augmented implicitly restarted Lanczos bidiagonalization methods",
    SIAM J. Sci. Comput. 27 (2005).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, matfree_tj as mtj
    >>> A = jnp.diag(jnp.arange(1.0, 51.0))
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)
    >>> res = mtj.bottom_singular(op, 2, key=jax.random.key(0), tol=1e-4)
    >>> [round(float(x), 3) for x in res.s], bool(res.converged.all())
    ([1.0, 2.0], True)
    """
    op, key, k, tol, m = check_common(
        op,
        k,
        key,
        "bottom_singular",
        square=True,
        tol=tol,
        num_basis=num_basis,
        default_basis=lambda k: max(4 * k + 40, 80),
    )
    r = min(op.shape)
    if max_basis is None:
        # memory (2m + 1) P numbers: at most 256 MB of bases, and 1000 vectors (beyond that
        # the reorthogonalisation, O(P m^2) per cycle, approaches a dense SVD's cost)
        itemsize = jnp.dtype(op.dtype).itemsize
        max_basis = min(r, max(m, min(1000, 2**28 // (2 * r * itemsize))))
    else:
        max_basis = check_int("max_basis", max_basis, m, r, "P (the operator's size)")
    if max_products is None:
        # room to grow: the doublings cost about 4 max_basis, verify about 2 max_basis more
        max_products = max(50 * m, 2000, 8 * max_basis)
    if extraction not in ("ritz", "harmonic"):
        raise ValueError(f"extraction must be 'ritz' or 'harmonic', got {extraction!r}.")
    res = _run(
        op,
        k,
        key=key,
        which="smallest",
        tol=tol,
        atol=atol,
        m=m,
        keep=keep,
        max_products=max_products,
        v0=v0,
        block_size=block_size,
        progress=progress,
        verify=verify,
        checkpoint=checkpoint,
        max_basis=max_basis,
        harmonic=extraction == "harmonic",
    )
    if res.status == Status.CONVERGED and bool(np.any(res.below_floor)):
        res = dataclasses.replace(res, status=Status.BELOW_RESOLUTION)
    return res
