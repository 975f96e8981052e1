r"""Matrix-free linear operators as pytrees.

An operator is a small immutable pytree (an :class:`equinox.Module`): the *data* it needs (a
matrix, the primal run of a training loop and its cached linearisation, a deflation basis, a
shift) are pytree leaves, the *code* is the class. Every concrete operator implements two
traceable products, ``_mv: (n,) -> (m,)`` and ``_rmv: (m,) -> (n,)``; block products, dense
materialisation, conversion to scipy and the input checks come from :class:`AbstractOperator`.

Compilation (lineax's pattern). The eager products of a *leaf* operator (one that computes its
products itself: :class:`LinearOperator`, :class:`MatrixOperator`, the training Jacobian) run
through module-level ``jax.jit`` functions that take the operator as an argument: its leaves are
arguments (never embedded constants), and its static structure is the cache key, so two
operators of the same structure share one executable. *Derived* operators (``J - I``,
``J^T J``, a transpose, a deflation) are small classes holding the base operator as a field;
their products call the base's compiled products and add cheap compiled glue, so deriving an
operator from a training Jacobian compiles nothing new. Inside a trace (a solver kernel) the
same calls simply inline.

Block products vmap over columns in chunks of ``chunk_size`` so memory stays bounded, and
optionally split the columns across the devices of a :class:`jax.sharding.Mesh`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ._distributed import split_rows
from ._memory import check_fits

__all__ = [
    "AbstractOperator",
    "LinearOperator",
    "MatrixOperator",
    "materialise",
    "products_cache_size",
]

_HI = jax.lax.Precision.HIGHEST


def _mm(a, b):
    return jnp.matmul(a, b, precision=_HI)


# --------------------------------------------------------------------------------------
# Input checks (Python, before any compute)
# --------------------------------------------------------------------------------------


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


def _check_input(x: Any, n: int, dtype: Any, what: str, *, block: bool) -> jax.Array:
    expected = f"a block of shape ({n}, k)" if block else f"a vector of shape ({n},)"
    x = _as_array(x, what, expected)
    if x.ndim != (2 if block else 1) or x.shape[0] != n:
        hint = (
            "Columns are the vectors to multiply."
            if block
            else "Flatten parameter pytrees with jax.flatten_util.ravel_pytree first."
        )
        raise ValueError(f"{what}: expected {expected}, got shape {tuple(x.shape)}. {hint}")
    if x.dtype != dtype:
        raise TypeError(
            f"{what}: expected dtype {jnp.dtype(dtype).name}, got {x.dtype.name}. "
            f"Cast it first, e.g. x.astype({jnp.dtype(dtype).name!r})."
        )
    return x


@jax.jit
def _all_finite(y: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(y))


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


def _check_settings(shape: Any, chunk_size: Any) -> tuple[tuple[int, int], int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (m, n) with m, n >= 1, got {shape}.")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    return shape, int(chunk_size)


# --------------------------------------------------------------------------------------
# Block products: chunked vmap, optionally sharded over a mesh
# --------------------------------------------------------------------------------------


def _chunked_vmap(fn, X: jax.Array, chunk_size: int) -> jax.Array:
    """Apply ``fn: (n,) -> (m,)`` to every column of ``X: (n, k)``, ``chunk_size`` at a time."""
    n, k = X.shape
    c = max(1, min(chunk_size, k))
    num_chunks = -(-k // c)
    pad = num_chunks * c - k
    Xt = jnp.pad(X.T, ((0, pad), (0, 0))).reshape(num_chunks, c, n)
    Y = jax.lax.map(jax.vmap(fn), Xt)  # (num_chunks, c, m)
    return Y.reshape(num_chunks * c, -1)[:k].T


def _block_apply(fn, X: jax.Array, chunk_size: int, mesh: Mesh | None) -> jax.Array:
    """Columns of ``X`` through ``fn``: chunked, and split across ``mesh`` devices if given
    (every device, on every process of a ``jax.distributed`` run, gets the whole result)."""
    if mesh is None:
        return _chunked_vmap(fn, X, chunk_size)
    return split_rows(lambda Xl: _chunked_vmap(fn, Xl.T, chunk_size).T, mesh, X.T).T


# The compiled products of every leaf operator: one executable per operator *structure* (class,
# static fields, leaf shapes), the operator's leaves passed as arguments. ``products_cache_size``
# reads their caches (JAX's own count of compiled entries), which tests use to check that
# derived operators and solvers compile no new products.
# ``eqx.filter_jit``: an operator may hold non-array leaves (a closure-converted function's jaxpr).
_PRODUCTS = {
    "mv": eqx.filter_jit(lambda op, x: op._mv(x)),
    "rmv": eqx.filter_jit(lambda op, x: op._rmv(x)),
    "matmat": eqx.filter_jit(lambda op, x: op._matmat(x)),
    "rmatmat": eqx.filter_jit(lambda op, x: op._rmatmat(x)),
}


def products_cache_size() -> int:
    """Number of compiled product executables so far (all leaf operators, all four kinds),
    as JAX's own jit caches count them."""
    return sum(f._cached._cache_size() for f in _PRODUCTS.values())


class AbstractOperator(eqx.Module):
    r"""A linear map :math:`A \in \mathbb{R}^{m \times n}` given by its products.

    Subclasses implement the traceable ``_mv`` and ``_rmv`` (and may override the block
    versions ``_matmat`` / ``_rmatmat``). The public methods check their input, run the
    compiled product and, with ``check_finite``, raise on NaN/inf.

    Attributes
    ----------
    shape
        ``(m, n)``.
    dtype
        dtype of the vectors in and out.
    chunk_size
        Columns per vmapped chunk of a block product (bounds memory).
    mesh
        Optional device mesh; block products split their columns across its first axis.
    check_finite
        Products that produce NaN/inf raise (under ``jit`` through ``eqx.error_if``).
    """

    shape: tuple[int, int] = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True)
    mesh: Mesh | None = eqx.field(static=True)
    check_finite: bool = eqx.field(static=True)

    # Leaf operators compile their own products; derived ones compose their base's.
    compiles_products: ClassVar[bool] = True

    # Hashed by identity, like a function (an eqx.Module hashes its leaves, and arrays are not
    # hashable): ``jax.jit(op.mv)`` and jitted functions closing over an operator then work.
    def __hash__(self) -> int:
        return id(self)

    @abc.abstractmethod
    def _mv(self, v: jax.Array) -> jax.Array:
        """``A v``, traceable, no checks."""

    @abc.abstractmethod
    def _rmv(self, u: jax.Array) -> jax.Array:
        """``A^T u``, traceable, no checks."""

    def _matmat(self, V: jax.Array) -> jax.Array:
        return _block_apply(self._mv, V, self.chunk_size, self.mesh)

    def _rmatmat(self, U: jax.Array) -> jax.Array:
        return _block_apply(self._rmv, U, self.chunk_size, self.mesh)

    def apply(self, kind: str, x: jax.Array) -> jax.Array:
        """The raw product ``kind`` (``"mv"``, ``"rmv"``, ``"matmat"``, ``"rmatmat"``) of ``x``:
        compiled, without the input and finiteness checks of :meth:`mv` and friends. For
        solvers whose vectors come from their own bases (each check is a host round trip)."""
        if self.compiles_products:
            return _PRODUCTS[kind](self, x)
        return getattr(self, "_" + kind)(x)

    def _checked(self, kind: str, x: Any) -> jax.Array:
        block = kind in ("matmat", "rmatmat")
        n = self.shape[1] if kind in ("mv", "matmat") else self.shape[0]
        x = _check_input(x, n, self.dtype, kind, block=block)
        if block and x.shape[1] == 0:  # no columns: nothing to compute
            rows = self.shape[0] if kind == "matmat" else self.shape[1]
            return jnp.zeros((rows, 0), self.dtype)
        y = self.apply(kind, x)
        return _finite_or_raise(y, kind) if self.check_finite else y

    # -- products ------------------------------------------------------------------------
    def mv(self, v: jax.Array) -> jax.Array:
        """``A v`` for ``v`` of shape ``(n,)``."""
        return self._checked("mv", v)

    def rmv(self, u: jax.Array) -> jax.Array:
        """``A^T u`` for ``u`` of shape ``(m,)``."""
        return self._checked("rmv", u)

    def matmat(self, V: jax.Array) -> jax.Array:
        """``A V`` for ``V`` of shape ``(n, k)``: vmapped in chunks, sharded over ``mesh``."""
        return self._checked("matmat", V)

    def rmatmat(self, U: jax.Array) -> jax.Array:
        """``A^T U`` for ``U`` of shape ``(m, k)``."""
        return self._checked("rmatmat", U)

    @property
    def T(self) -> AbstractOperator:
        """The transposed operator."""
        from ._derived import transpose  # derived operators build on this module

        return transpose(self)

    # -- conversions -----------------------------------------------------------------------
    def to_dense(self) -> jax.Array:
        """Materialise ``A`` as an ``(m, n)`` array by chunked forward products.

        Costs ``n`` products (``ceil(n / chunk_size)`` vmapped chunks); memory is the
        output plus one chunk. Use only on small problems (the checking oracle).
        """
        return materialise(self)

    def to_scipy(self):
        """A :class:`scipy.sparse.linalg.LinearOperator` view (float64 numpy in and out).

        The operator's own products are called (compiled once, with their checks: a
        non-finite product raises ``FloatingPointError`` here too); vectors are cast to the
        operator dtype on the way in.
        """
        import scipy.sparse.linalg as spla

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
            matvec=wrap(self.mv),
            rmatvec=wrap(self.rmv),
            matmat=wrap(self.matmat),
            rmatmat=wrap(self.rmatmat),
            dtype=np.float64,
        )


# --------------------------------------------------------------------------------------
# Leaf operators
# --------------------------------------------------------------------------------------


class _Converted(eqx.Module):
    """A function of one vector as its jaxpr (static: the code) and the arrays it closes over
    (leaves: the data). Calling it evaluates the jaxpr, so the original Python function is not
    kept alive, and the operator holding it is a valid ``jax.jit`` argument."""

    jaxpr: Any = eqx.field(static=True)
    consts: list

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.core.eval_jaxpr(self.jaxpr, self.consts, x)[0]


def _convert(fn: Any, n_in: int, n_out: int, dtype: Any, what: str) -> _Converted:
    """``fn`` traced once into a :class:`_Converted` (closure conversion: the arrays it closes
    over become leaves), after checking that it maps ``(n_in,)`` to ``(n_out,)`` in ``dtype``."""
    try:
        closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct((n_in,), dtype))
    except Exception as e:  # noqa: BLE001 - re-raised with what to do
        raise TypeError(
            f"LinearOperator: {what} cannot be traced by JAX on a ({n_in},) "
            f"{jnp.dtype(dtype).name} vector ({type(e).__name__}: {e}). Products must be pure "
            "JAX functions (use jax.pure_callback for host code)."
        ) from e
    outs = closed.out_avals
    got = (
        (tuple(outs[0].shape), outs[0].dtype)
        if len(outs) == 1
        else (f"{len(outs)} outputs", "(not one array)")
    )
    if got != ((n_out,), jnp.dtype(dtype)):
        raise TypeError(
            f"LinearOperator: {what} maps a ({n_in},) {jnp.dtype(dtype).name} vector to "
            f"shape {got[0]} dtype {got[1]}, but the operator declares ({n_out},) "
            f"{jnp.dtype(dtype).name}. Make {what} return the declared shape and dtype "
            "(e.g. cast with .astype), or declare the shape/dtype it returns."
        )
    return _Converted(closed.jaxpr, list(closed.consts))


class LinearOperator(AbstractOperator):
    r"""A linear map given by a pair of product functions.

    Parameters
    ----------
    mv
        Pure function ``v: (n,) -> A v: (m,)``. Must be traceable by JAX. It is traced once,
        here; the arrays it closes over become leaves of the operator (closure conversion),
        not compiled constants. Each ``LinearOperator`` compiles its own products (its traced
        code is new); a :class:`MatrixOperator`, a training Jacobian and derived operators
        share compiled products across operators of one structure.
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
        If True, products that produce NaN/inf raise (works under ``jit``).

    Cost: construction traces ``mv`` and ``rmv`` once each (abstractly, no compute); the
    first product of each kind compiles it.

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> A = jnp.arange(6.0).reshape(2, 3)
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, (2, 3), A.dtype)
    >>> op.mv(jnp.ones(3)).tolist()
    [3.0, 12.0]
    """

    mv_fn: Any
    rmv_fn: Any

    def __init__(self, mv, rmv, shape, dtype, *, chunk_size=64, mesh=None, check_finite=True):
        if not (callable(mv) and callable(rmv)):
            raise TypeError("LinearOperator(mv, rmv, shape, dtype): mv and rmv must be callables.")
        self.shape, self.chunk_size = _check_settings(shape, chunk_size)
        self.dtype = jnp.dtype(dtype)
        self.mesh = mesh
        self.check_finite = bool(check_finite)
        m, n = self.shape
        self.mv_fn = _convert(mv, n, m, self.dtype, "mv")
        self.rmv_fn = _convert(rmv, m, n, self.dtype, "rmv")

    def _mv(self, v):
        return self.mv_fn(v)

    def _rmv(self, u):
        return self.rmv_fn(u)


class MatrixOperator(AbstractOperator):
    r"""A dense matrix as an operator; the matrix is a leaf, so all matrix operators of one
    shape and dtype share their compiled products (and the solvers' kernels).

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> mtj.MatrixOperator(jnp.diag(jnp.array([2.0, 3.0]))).rmv(jnp.ones(2)).tolist()
    [2.0, 3.0]
    """

    A: jax.Array

    def __init__(self, A, *, chunk_size=64, mesh=None, check_finite=True):
        A = _as_array(A, "MatrixOperator", "a 2-d array")
        if A.ndim != 2:
            raise ValueError(f"MatrixOperator needs a 2-d array, got shape {A.shape}.")
        self.shape, self.chunk_size = _check_settings(A.shape, chunk_size)
        self.dtype = A.dtype
        self.mesh = mesh
        self.check_finite = bool(check_finite)
        self.A = A

    def _mv(self, v):
        return _mm(self.A, v)

    def _rmv(self, u):
        return _mm(self.A.T, u)

    def _matmat(self, V):
        return _mm(self.A, V) if self.mesh is None else super()._matmat(V)

    def _rmatmat(self, U):
        return _mm(self.A.T, U) if self.mesh is None else super()._rmatmat(U)

    def to_dense(self) -> jax.Array:
        return self.A


def _materialise(op: AbstractOperator) -> jax.Array:
    m, n = op.shape
    c = max(1, min(op.chunk_size, n))
    num_chunks = -(-n // c)

    def chunk(i):
        idx = i * c + jnp.arange(c)
        E = (idx[:, None] == jnp.arange(n)[None, :]).astype(op.dtype)  # (c, n) unit rows
        return jax.vmap(op._mv)(E)  # (c, m)

    cols = jax.lax.map(chunk, jnp.arange(num_chunks))
    return cols.reshape(num_chunks * c, m)[:n].T


_materialise_jit = eqx.filter_jit(_materialise)


def materialise(op: AbstractOperator) -> jax.Array:
    """Dense ``(m, n)`` matrix of ``op``, built column chunk by column chunk (forward mode).

    Costs ``n`` products; compiled once per operator structure (the operator is an argument).
    Refuses (:class:`~matfree_tj.core.MemoryBudgetError`, nothing allocated) when the
    ``m n`` numbers would not fit in the memory available.
    """
    if isinstance(op, MatrixOperator):
        return op.A
    m, n = op.shape
    itemsize = jnp.dtype(op.dtype).itemsize
    # the matrix plus one chunk of unit vectors and their images, before anything is allocated
    check_fits(
        (m * n + op.chunk_size * (m + n)) * itemsize,
        f"to_dense() of a {m} x {n} {jnp.dtype(op.dtype).name} operator",
        device=jax.devices()[0],
    )
    A = _materialise_jit(op)
    return _finite_or_raise(A, "to_dense") if op.check_finite else A
