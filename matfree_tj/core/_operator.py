r"""Matrix-free linear operators.

A :class:`LinearOperator` is a small immutable pytree holding a pair of pure functions
``mv: (n,) -> (m,)`` and ``rmv: (m,) -> (n,)`` together with the static shape and dtype.
Everything else (block products, dense materialisation, composition such as ``J - I`` or
``J^T J``, conversion to scipy) is built from that pair.

Block products vmap over columns in chunks of ``chunk_size`` so memory stays bounded, and
optionally split the columns across the devices of a :class:`jax.sharding.Mesh`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "LinearOperator",
    "add_identity",
    "gram",
    "transpose",
    "materialise",
]


def _as_array(x: Any, what: str, expected: str) -> jax.Array:
    """``x`` as an array, or a clear error for a parameter pytree (dict, module, tuple of
    arrays) passed where a flat vector belongs."""
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{what}: expected {expected}, got a {type(x).__name__} that is not an array "
            f"({e}). Flatten parameter pytrees first: "
            "vec, unravel = jax.flatten_util.ravel_pytree(tree)."
        ) from None


def _check_signature(fn: Callable, n_in: int, n_out: int, dtype: Any, what: str) -> None:
    """Trace ``fn`` abstractly (no compile, no compute) and check it maps ``(n_in,)`` to
    ``(n_out,)`` in ``dtype``. A function that cannot be traced abstractly is left to fail at
    its first product, with its own error."""
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct((n_in,), dtype))
    except Exception:  # noqa: BLE001 - e.g. host callbacks needing values; checked at first use
        return
    got = (tuple(getattr(out, "shape", ())), getattr(out, "dtype", type(out).__name__))
    if got != ((n_out,), jnp.dtype(dtype)):
        raise TypeError(
            f"LinearOperator: {what} maps a ({n_in},) {jnp.dtype(dtype).name} vector to "
            f"shape {got[0]} dtype {got[1]}, but the operator declares ({n_out},) "
            f"{jnp.dtype(dtype).name}. Make {what} return the declared shape and dtype "
            "(e.g. cast with .astype), or declare the shape/dtype it returns."
        )


def _check_vector(x: Any, n: int, dtype: Any, what: str) -> jax.Array:
    x = _as_array(x, what, f"a vector of shape ({n},)")
    if x.ndim != 1 or x.shape[0] != n:
        raise ValueError(
            f"{what}: expected a vector of shape ({n},), got shape {tuple(x.shape)}. "
            "Flatten parameter pytrees with jax.flatten_util.ravel_pytree first."
        )
    if x.dtype != dtype:
        raise TypeError(
            f"{what}: expected dtype {jnp.dtype(dtype).name}, got {x.dtype.name}. "
            f"Cast it first, e.g. x.astype({jnp.dtype(dtype).name!r})."
        )
    return x


def _check_block(x: Any, n: int, dtype: Any, what: str) -> jax.Array:
    x = _as_array(x, what, f"a block of shape ({n}, k)")
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(
            f"{what}: expected a block of shape ({n}, k), got shape {tuple(x.shape)}. "
            "Columns are the vectors to multiply."
        )
    if x.dtype != dtype:
        raise TypeError(
            f"{what}: expected dtype {jnp.dtype(dtype).name}, got {x.dtype.name}. "
            f"Cast it first, e.g. x.astype({jnp.dtype(dtype).name!r})."
        )
    return x


def _finite_or_raise(y: jax.Array, what: str) -> jax.Array:
    msg = (
        f"{what} produced NaN or inf. The training run or its derivative is not finite: "
        "check for divergence (smaller learning rate), Adam with eps_root=0 (use eps_root>0, "
        "e.g. 1e-8), or non-finite inputs. Pass check_finite=False to get the raw values."
    )
    if isinstance(y, jax.core.Tracer):  # under jit/vmap: a runtime check that raises on the host
        return eqx.error_if(y, ~jnp.all(jnp.isfinite(y)), msg)
    if not bool(_all_finite(y)):
        raise FloatingPointError(msg)
    return y


@jax.jit
def _all_finite(y: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(y))


def _compiled(fn: Callable) -> bool:
    """Whether ``fn`` is already a compiled product (a ``jax.jit`` function, or a callable
    that says so with ``compiled = True``)."""
    return hasattr(fn, "lower") or getattr(fn, "compiled", False) is True


def _chunked_vmap(fn: Callable, X: jax.Array, chunk_size: int) -> jax.Array:
    """Apply ``fn: (n,) -> (m,)`` to every column of ``X: (n, k)``, ``chunk_size`` at a time."""
    n, k = X.shape
    c = max(1, min(chunk_size, k))
    num_chunks = -(-k // c)
    pad = num_chunks * c - k
    Xt = jnp.pad(X.T, ((0, pad), (0, 0))).reshape(num_chunks, c, n)
    Y = jax.lax.map(jax.vmap(fn), Xt)  # (num_chunks, c, m)
    return Y.reshape(num_chunks * c, -1)[:k].T


# Compiled block products, one per (product function, chunk size, mesh). Without this an eager
# ``op.matmat(V)`` re-traces and re-compiles ``vmap(fn)`` on every call (measured: 6.6 s of
# compile per call on the reference model, 21x a training run per column at T = 100). Keyed
# weakly on ``fn`` so an operator's cached linearisation is freed with the operator.
_BLOCK_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_block(fn: Callable, chunk_size: int, mesh: Mesh | None, X: jax.Array) -> Callable:
    """A jitted ``X -> _block_apply(fn, X, ...)``, compiled once per shape of ``X``.

    Under a trace (``X`` a tracer) the plain function is returned: the outer ``jit`` compiles
    it once, and ``fn`` may close over that trace's values, which must not be cached.
    """
    if isinstance(X, jax.core.Tracer):
        return lambda Y: _block_apply(fn, Y, chunk_size, mesh)
    try:
        per_fn = _BLOCK_CACHE.setdefault(fn, {})
    except TypeError:  # fn cannot be weakly referenced: compile per call as before
        return lambda X: _block_apply(fn, X, chunk_size, mesh)
    key = (chunk_size, mesh)
    if key not in per_fn:
        ref = weakref.ref(fn)  # the compiled function must not keep fn alive
        per_fn[key] = jax.jit(lambda X: _block_apply(ref(), X, chunk_size, mesh))
    return per_fn[key]


def _block_apply(fn: Callable, X: jax.Array, chunk_size: int, mesh: Mesh | None) -> jax.Array:
    """Columns of ``X`` through ``fn``: chunked, and split across ``mesh`` devices if given."""
    if mesh is None:
        return _chunked_vmap(fn, X, chunk_size)
    axis = mesh.axis_names[0]
    num_dev = mesh.shape[axis]
    k = X.shape[1]
    pad = (-k) % num_dev
    Xp = jnp.pad(X, ((0, 0), (0, pad)))
    spec = PartitionSpec(None, axis)
    explicit = any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ()))
    if explicit:
        # jax.make_mesh gives Explicit axes: shard_map then needs the input laid out as its
        # in_specs say, and the sharded output cannot be sliced to k columns in place (with
        # Auto axes both happen by themselves)
        Xp = jax.sharding.reshard(Xp, NamedSharding(mesh, spec))
    local = jax.shard_map(
        lambda Xl: _chunked_vmap(fn, Xl, chunk_size),
        mesh=mesh,
        in_specs=spec,
        out_specs=spec,
        check_vma=False,
    )
    Y = local(Xp)
    if explicit:
        Y = jax.sharding.reshard(Y, NamedSharding(mesh, PartitionSpec()))
    return Y[:, :k]


class LinearOperator(eqx.Module):
    r"""A linear map :math:`A \in \mathbb{R}^{m \times n}` given by its products.

    Parameters
    ----------
    mv
        Pure function ``v: (n,) -> A v: (m,)``. Must be traceable by JAX.
    rmv
        Pure function ``u: (m,) -> A^T u: (n,)``.
    shape
        ``(m, n)``.
    dtype
        dtype of the vectors in and out.
    chunk_size
        Columns per vmapped chunk in :meth:`matmat` / :meth:`rmatmat` (bounds memory).
    mesh
        Optional device mesh; block products split their columns across its first axis.
    check_finite
        If True, products that produce NaN/inf raise (works under ``jit`` via ``eqx.error_if``).

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> A = jnp.arange(6.0).reshape(2, 3)
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, (2, 3), A.dtype)
    >>> op.mv(jnp.ones(3))
    Array([ 3., 12.], dtype=float32)
    """

    mv_fn: Callable = eqx.field(static=True)
    rmv_fn: Callable = eqx.field(static=True)
    shape: tuple[int, int] = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True, default=64)
    mesh: Mesh | None = eqx.field(static=True, default=None)
    check_finite: bool = eqx.field(static=True, default=True)

    def __init__(self, mv, rmv, shape, dtype, *, chunk_size=64, mesh=None, check_finite=True):
        if not (callable(mv) and callable(rmv)):
            raise TypeError("LinearOperator(mv, rmv, shape, dtype): mv and rmv must be callables.")
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (m, n) with m, n >= 1, got {shape}.")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        # Products are compiled once per operator (jax.jit caches by function): eager callers
        # (the Lanczos driver, residual checks, scipy) then reuse one executable, and inside
        # another jit a jitted function is simply inlined.
        self.mv_fn = mv if _compiled(mv) else jax.jit(mv)
        self.rmv_fn = rmv if _compiled(rmv) else jax.jit(rmv)
        self.shape = shape
        self.dtype = jnp.dtype(dtype)
        # The solvers call the raw products; a function returning another shape or dtype than
        # declared would fail deep inside them (or run on in the wrong precision): check once.
        if mv is not _through_base:
            _check_signature(self.mv_fn, shape[1], shape[0], self.dtype, "mv")
            _check_signature(self.rmv_fn, shape[0], shape[1], self.dtype, "rmv")
        self.chunk_size = int(chunk_size)
        self.mesh = mesh
        self.check_finite = bool(check_finite)

    # -- single products ---------------------------------------------------------------
    def mv(self, v: jax.Array) -> jax.Array:
        """``A v`` for ``v`` of shape ``(n,)``."""
        v = _check_vector(v, self.shape[1], self.dtype, "mv")
        y = self.mv_fn(v)
        return _finite_or_raise(y, "mv") if self.check_finite else y

    def rmv(self, u: jax.Array) -> jax.Array:
        """``A^T u`` for ``u`` of shape ``(m,)``."""
        u = _check_vector(u, self.shape[0], self.dtype, "rmv")
        y = self.rmv_fn(u)
        return _finite_or_raise(y, "rmv") if self.check_finite else y

    # -- block products ----------------------------------------------------------------
    def matmat(self, V: jax.Array) -> jax.Array:
        """``A V`` for ``V`` of shape ``(n, k)``: vmapped in chunks, sharded over ``mesh``."""
        V = _check_block(V, self.shape[1], self.dtype, "matmat")
        if V.shape[1] == 0:
            return jnp.zeros((self.shape[0], 0), self.dtype)
        Y = _compiled_block(self.mv_fn, self.chunk_size, self.mesh, V)(V)
        return _finite_or_raise(Y, "matmat") if self.check_finite else Y

    def rmatmat(self, U: jax.Array) -> jax.Array:
        """``A^T U`` for ``U`` of shape ``(m, k)``."""
        U = _check_block(U, self.shape[0], self.dtype, "rmatmat")
        if U.shape[1] == 0:
            return jnp.zeros((self.shape[1], 0), self.dtype)
        Y = _compiled_block(self.rmv_fn, self.chunk_size, self.mesh, U)(U)
        return _finite_or_raise(Y, "rmatmat") if self.check_finite else Y

    @property
    def T(self) -> LinearOperator:
        """The transposed operator (swaps ``mv`` and ``rmv``)."""
        return transpose(self)

    # -- conversions -------------------------------------------------------------------
    def to_dense(self) -> jax.Array:
        """Materialise ``A`` as an ``(m, n)`` array by chunked forward products.

        Costs ``n`` products (``ceil(n / chunk_size)`` vmapped chunks); memory is the
        output plus one chunk. Use only on small problems (the checking oracle).
        """
        return materialise(self)

    def to_scipy(self):
        """A :class:`scipy.sparse.linalg.LinearOperator` view (float64 numpy in and out).

        The operator's own products are called (compiled once per operator, with their checks:
        a non-finite product raises ``FloatingPointError`` here too); vectors are cast to the
        operator dtype on the way in.
        """
        import scipy.sparse.linalg as spla

        mv, rmv, mm, rmm = self.mv, self.rmv, self.matmat, self.rmatmat
        dt = self.dtype

        def wrap(f):
            def g(x):
                x = np.asarray(x)
                squeeze = x.ndim == 2 and x.shape[1] == 1
                x = x[:, 0] if squeeze else x
                y = np.asarray(f(jnp.asarray(x, dtype=dt)), dtype=np.float64)
                return y[:, None] if squeeze else y

            return g

        return spla.LinearOperator(
            shape=self.shape,
            matvec=wrap(mv),
            rmatvec=wrap(rmv),
            matmat=wrap(mm),
            rmatmat=wrap(rmm),
            dtype=np.float64,
        )


def product_fns(op: LinearOperator) -> tuple[Callable, Callable]:
    """``(mv, rmv)`` of ``op`` as plain functions of one vector, for building derived
    operators: the compiled ``mv_fn`` / ``rmv_fn`` (no per-call checks) unless a subclass
    computes its products in its own methods (:class:`Projected`, :class:`Swapped`), whose
    methods are then used."""
    cls = type(op)
    if cls.mv is LinearOperator.mv and cls.rmv is LinearOperator.rmv:
        return op.mv_fn, op.rmv_fn
    return (lambda v: op.mv(v)), (lambda u: op.rmv(u))


def _through_base(x):  # pragma: no cover - the wrappers below override every product
    raise NotImplementedError("This operator computes its products through its base operator.")


def _init_through(op: LinearOperator, base: LinearOperator, shape: tuple) -> None:
    """Initialise a wrapper whose own methods compute every product through ``base``."""
    LinearOperator.__init__(
        op,
        _through_base,
        _through_base,
        shape,
        base.dtype,
        chunk_size=base.chunk_size,
        check_finite=base.check_finite,
    )


class Projected(LinearOperator):
    r"""``(I - U_l U_l^T) A (I - V_r V_r^T)`` for orthonormal columns ``U_l`` ``(m, a)`` and
    ``V_r`` ``(n, b)`` (either may have zero columns): ``A`` with known singular triplets
    deflated. If ``A V_r = U_l S`` exactly, the other singular triplets of ``A`` are those of
    this operator, and the deflated directions become zeros.

    The bases are pytree leaves (not closed over), so a new deflation reuses the solvers'
    compiled kernels. Products go through the base operator's methods (so it composes with any
    subclass); one product of ``A`` each, plus ``O((a + b) n)`` flops.
    """

    base: LinearOperator
    Ul: jax.Array
    Vr: jax.Array

    def __init__(self, base: LinearOperator, Ul: jax.Array | None, Vr: jax.Array | None):
        _init_through(self, base, base.shape)
        m, n = base.shape
        self.base = base
        self.Ul = jnp.zeros((m, 0), base.dtype) if Ul is None else jnp.asarray(Ul, base.dtype)
        self.Vr = jnp.zeros((n, 0), base.dtype) if Vr is None else jnp.asarray(Vr, base.dtype)

    @staticmethod
    def _off(B, x):
        c = jnp.matmul(B.T, x, precision=jax.lax.Precision.HIGHEST)
        return x - jnp.matmul(B, c, precision=jax.lax.Precision.HIGHEST)

    def mv(self, v):
        return self._off(self.Ul, self.base.mv(self._off(self.Vr, v)))

    def rmv(self, u):
        return self._off(self.Vr, self.base.rmv(self._off(self.Ul, u)))

    def matmat(self, V):
        return self._off(self.Ul, self.base.matmat(self._off(self.Vr, V)))

    def rmatmat(self, U):
        return self._off(self.Vr, self.base.rmatmat(self._off(self.Ul, U)))


class Raised(LinearOperator):
    r"""``A + U_l diag(d) V_r^T`` for orthonormal columns ``U_l``, ``V_r`` ``(., a)``: with
    ``A V_r = U_l S`` it moves those singular values from ``s_i`` to ``s_i + d_i`` and leaves the
    others. Used to push found small singular values out of the way (``d = c - s`` for a large
    ``c``) when looking for smaller ones that were missed; deflating them to zero, as
    :class:`Projected` does, would make them the smallest instead. One product of ``A`` each.
    """

    base: LinearOperator
    Ul: jax.Array
    Vr: jax.Array
    d: jax.Array

    def __init__(self, base: LinearOperator, Ul: jax.Array, Vr: jax.Array, d: jax.Array):
        _init_through(self, base, base.shape)
        self.base = base
        self.Ul = jnp.asarray(Ul, base.dtype)
        self.Vr = jnp.asarray(Vr, base.dtype)
        self.d = jnp.asarray(d, base.dtype)

    @staticmethod
    def _lift(B, C, d, x):  # B diag(d) C^T x, for a vector or a block
        c = jnp.matmul(C.T, x, precision=jax.lax.Precision.HIGHEST)
        c = d * c if x.ndim == 1 else d[:, None] * c
        return jnp.matmul(B, c, precision=jax.lax.Precision.HIGHEST)

    def mv(self, v):
        return self.base.mv(v) + self._lift(self.Ul, self.Vr, self.d, v)

    def rmv(self, u):
        return self.base.rmv(u) + self._lift(self.Vr, self.Ul, self.d, u)

    def matmat(self, V):
        return self.base.matmat(V) + self._lift(self.Ul, self.Vr, self.d, V)

    def rmatmat(self, U):
        return self.base.rmatmat(U) + self._lift(self.Vr, self.Ul, self.d, U)


class Swapped(LinearOperator):
    """``A^T`` through the base operator's methods (``mv`` is ``A.rmv``, and so on)."""

    base: LinearOperator

    def __init__(self, base: LinearOperator):
        _init_through(self, base, base.shape[::-1])
        self.base = base

    def mv(self, v):
        return self.base.rmv(v)

    def rmv(self, u):
        return self.base.mv(u)

    def matmat(self, V):
        return self.base.rmatmat(V)

    def rmatmat(self, U):
        return self.base.matmat(U)


def transpose(op: LinearOperator) -> LinearOperator:
    """``A^T`` as an operator."""
    m, n = op.shape
    mv, rmv = product_fns(op)
    return LinearOperator(
        rmv,
        mv,
        (n, m),
        op.dtype,
        chunk_size=op.chunk_size,
        mesh=op.mesh,
        check_finite=op.check_finite,
    )


def add_identity(op: LinearOperator, alpha: float = -1.0) -> LinearOperator:
    r"""``A + alpha I`` for square ``A`` (``alpha=-1`` gives ``J - I``, exposing the bulk).

    One product of ``A`` per product; nothing is materialised.
    """
    m, n = op.shape
    if m != n:
        raise ValueError(f"add_identity needs a square operator, got shape {op.shape}.")
    a = float(alpha)
    mv, rmv = product_fns(op)
    return LinearOperator(
        lambda v: mv(v) + a * v,
        lambda u: rmv(u) + a * u,
        op.shape,
        op.dtype,
        chunk_size=op.chunk_size,
        mesh=op.mesh,
        check_finite=op.check_finite,
    )


def gram(op: LinearOperator, side: str = "right") -> LinearOperator:
    r"""``A^T A`` (``side="right"``, ``n x n``) or ``A A^T`` (``side="left"``, ``m x m``).

    Symmetric; each product costs one ``mv`` and one ``rmv``.
    """
    m, n = op.shape
    mv, rmv = product_fns(op)
    if side == "right":
        f = lambda v: rmv(mv(v))  # noqa: E731
        shape = (n, n)
    elif side == "left":
        f = lambda u: mv(rmv(u))  # noqa: E731
        shape = (m, m)
    else:
        raise ValueError(f"side must be 'right' (A^T A) or 'left' (A A^T), got {side!r}.")
    return LinearOperator(
        f,
        f,
        shape,
        op.dtype,
        chunk_size=op.chunk_size,
        mesh=op.mesh,
        check_finite=op.check_finite,
    )


def materialise(op: LinearOperator) -> jax.Array:
    """Dense ``(m, n)`` matrix of ``op``, built column chunk by column chunk (forward mode)."""
    m, n = op.shape
    c = max(1, min(op.chunk_size, n))
    num_chunks = -(-n // c)
    mv, _ = product_fns(op)

    @jax.jit
    def build():
        def chunk(i):
            idx = i * c + jnp.arange(c)
            E = (idx[:, None] == jnp.arange(n)[None, :]).astype(op.dtype)  # (c, n) unit rows
            return jax.vmap(mv)(E)  # (c, m)

        cols = jax.lax.map(chunk, jnp.arange(num_chunks))
        return cols.reshape(num_chunks * c, m)[:n].T

    A = build()
    return _finite_or_raise(A, "to_dense") if op.check_finite else A
