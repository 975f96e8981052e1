r"""Derived operators: small classes holding a base operator (and their data as leaves).

``A^T``, ``A + alpha I``, ``A^T A`` / ``A A^T``, a deflation ``(I - U U^T) A (I - V V^T)`` and
a low-rank raise ``A + U diag(d) V^T``. Their products call the base operator's compiled
products (:meth:`~matfree_tj.AbstractOperator.apply`) and add small compiled glue, so deriving
an operator compiles no new product: a training Jacobian's JVP and VJP are compiled once and
shared by ``J``, ``J - I``, ``J^T J`` and every deflation a solver builds.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from ._operator import AbstractOperator, _mm

__all__ = [
    "Transposed",
    "Shifted",
    "Gram",
    "Projected",
    "Raised",
    "transpose",
    "add_identity",
    "gram",
]


# --------------------------------------------------------------------------------------
# Derived operators: small classes around a base operator
# --------------------------------------------------------------------------------------


class _Derived(AbstractOperator):
    """An operator computing its products from ``base``'s compiled products plus glue."""

    base: AbstractOperator
    compiles_products: ClassVar[bool] = False

    def _init_from(self, base: AbstractOperator, shape: tuple[int, int]) -> None:
        if not isinstance(base, AbstractOperator):
            raise TypeError(
                f"expected a matfree_tj operator, got {type(base).__name__}. Wrap a matrix as "
                "mtj.MatrixOperator(A) or functions as mtj.LinearOperator(mv, rmv, shape, dtype)."
            )
        self.base = base
        self.shape = shape
        self.dtype = base.dtype
        self.chunk_size = base.chunk_size
        self.mesh = base.mesh
        self.check_finite = base.check_finite


class Transposed(_Derived):
    """``A^T``: ``mv`` is ``A``'s ``rmv`` and so on; costs nothing extra."""

    def __init__(self, base: AbstractOperator):
        self._init_from(base, tuple(base.shape[::-1]))

    def _mv(self, v):
        return self.base.apply("rmv", v)

    def _rmv(self, u):
        return self.base.apply("mv", u)

    def _matmat(self, V):
        return self.base.apply("rmatmat", V)

    def _rmatmat(self, U):
        return self.base.apply("matmat", U)


@jax.jit
def _axpy(a, x, y):
    return y + a * x


class Shifted(_Derived):
    r"""``A + alpha I`` for square ``A``; ``alpha`` is a leaf (a new shift compiles nothing)."""

    alpha: jax.Array

    def __init__(self, base: AbstractOperator, alpha: Any):
        self._init_from(base, base.shape)
        if base.shape[0] != base.shape[1]:
            raise ValueError(f"add_identity needs a square operator, got shape {base.shape}.")
        self.alpha = jnp.asarray(alpha, base.dtype)

    def _mv(self, v):
        return _axpy(self.alpha, v, self.base.apply("mv", v))

    def _rmv(self, u):
        return _axpy(self.alpha, u, self.base.apply("rmv", u))

    def _matmat(self, V):
        return _axpy(self.alpha, V, self.base.apply("matmat", V))

    def _rmatmat(self, U):
        return _axpy(self.alpha, U, self.base.apply("rmatmat", U))


class Gram(_Derived):
    r"""``A^T A`` (``side="right"``, ``n x n``) or ``A A^T`` (``side="left"``): symmetric,
    one ``mv`` and one ``rmv`` of ``A`` per product."""

    side: str = eqx.field(static=True)

    def __init__(self, base: AbstractOperator, side: str = "right"):
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' (A^T A) or 'left' (A A^T), got {side!r}.")
        n = base.shape[1] if side == "right" else base.shape[0]
        self._init_from(base, (n, n))
        self.side = side

    def _apply_twice(self, x, block: bool):
        # right: A^T (A x); left: A (A^T x)
        names = ("matmat", "rmatmat") if block else ("mv", "rmv")
        first, second = names if self.side == "right" else names[::-1]
        return self.base.apply(second, self.base.apply(first, x))

    def _mv(self, v):
        return self._apply_twice(v, False)

    _rmv = _mv

    def _matmat(self, V):
        return self._apply_twice(V, True)

    _rmatmat = _matmat


@jax.jit
def _project_off(B, x):
    return x - _mm(B, _mm(B.T, x))


@jax.jit
def _lift(B, C, d, x):  # B diag(d) C^T x, for a vector or a block
    c = _mm(C.T, x)
    return _mm(B, d * c if x.ndim == 1 else d[:, None] * c)


class Projected(_Derived):
    r"""``(I - U_l U_l^T) A (I - V_r V_r^T)`` for orthonormal columns ``U_l`` ``(m, a)`` and
    ``V_r`` ``(n, b)`` (either may have zero columns): ``A`` with known singular triplets
    deflated. If ``A V_r = U_l S`` exactly, the other singular triplets of ``A`` are those of
    this operator, and the deflated directions become zeros. The bases are leaves: a new
    deflation compiles nothing. One product of ``A`` each, plus ``O((a + b) n)`` flops.
    """

    Ul: jax.Array
    Vr: jax.Array

    def __init__(self, base: AbstractOperator, Ul: Any = None, Vr: Any = None):
        self._init_from(base, base.shape)
        m, n = base.shape
        self.Ul = jnp.zeros((m, 0), base.dtype) if Ul is None else jnp.asarray(Ul, base.dtype)
        self.Vr = jnp.zeros((n, 0), base.dtype) if Vr is None else jnp.asarray(Vr, base.dtype)

    def _through(self, kind, x, pre, post):
        return _project_off(post, self.base.apply(kind, _project_off(pre, x)))

    def _mv(self, v):
        return self._through("mv", v, self.Vr, self.Ul)

    def _rmv(self, u):
        return self._through("rmv", u, self.Ul, self.Vr)

    def _matmat(self, V):
        return self._through("matmat", V, self.Vr, self.Ul)

    def _rmatmat(self, U):
        return self._through("rmatmat", U, self.Ul, self.Vr)


class Raised(_Derived):
    r"""``A + U_l diag(d) V_r^T`` for orthonormal columns ``U_l``, ``V_r`` ``(., a)``: with
    ``A V_r = U_l S`` it moves those singular values from ``s_i`` to ``s_i + d_i`` and leaves the
    others. Used to push found small singular values out of the way (``d = c - s`` for a large
    ``c``) when looking for smaller ones that were missed; deflating them to zero, as
    :class:`Projected` does, would make them the smallest instead. One product of ``A`` each.
    """

    Ul: jax.Array
    Vr: jax.Array
    d: jax.Array

    def __init__(self, base: AbstractOperator, Ul: Any, Vr: Any, d: Any):
        self._init_from(base, base.shape)
        self.Ul = jnp.asarray(Ul, base.dtype)
        self.Vr = jnp.asarray(Vr, base.dtype)
        self.d = jnp.asarray(d, base.dtype)

    def _mv(self, v):
        return self.base.apply("mv", v) + _lift(self.Ul, self.Vr, self.d, v)

    def _rmv(self, u):
        return self.base.apply("rmv", u) + _lift(self.Vr, self.Ul, self.d, u)

    def _matmat(self, V):
        return self.base.apply("matmat", V) + _lift(self.Ul, self.Vr, self.d, V)

    def _rmatmat(self, U):
        return self.base.apply("rmatmat", U) + _lift(self.Vr, self.Ul, self.d, U)


# --------------------------------------------------------------------------------------
# Free functions
# --------------------------------------------------------------------------------------


def transpose(op: AbstractOperator) -> AbstractOperator:
    """``A^T`` as an operator (the transpose of a transpose is the original)."""
    return op.base if isinstance(op, Transposed) else Transposed(op)


def add_identity(op: AbstractOperator, alpha: float = -1.0) -> AbstractOperator:
    r"""``A + alpha I`` for square ``A`` (``alpha=-1`` gives ``J - I``, exposing the bulk).

    One product of ``A`` per product; nothing is materialised, nothing new is compiled.

    Examples
    --------
    >>> import jax.numpy as jnp, matfree_tj as mtj
    >>> op = mtj.add_identity(mtj.MatrixOperator(jnp.diag(jnp.array([1.0, 3.0]))), -1.0)
    >>> op.mv(jnp.ones(2)).tolist()
    [0.0, 2.0]
    """
    return Shifted(op, float(alpha))


def gram(op: AbstractOperator, side: str = "right") -> AbstractOperator:
    r"""``A^T A`` (``side="right"``, ``n x n``) or ``A A^T`` (``side="left"``, ``m x m``).

    Symmetric; each product costs one ``mv`` and one ``rmv`` of ``A``.
    """
    return Gram(op, side)
