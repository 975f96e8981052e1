r"""Precision policy of the solvers: the working dtype, and the precision the products carry.

Two precisions meet in a solver. The *working* precision is that of its own arithmetic: Krylov
bases, Gram-Schmidt, projections, Ritz extraction, QR. The *product* precision is that in which
the operator computes :math:`A v` and :math:`A^T u`. They differ for a narrow operator (bfloat16,
float16), and for one whose vectors are declared wide but whose products pass through narrow
data (a training Jacobian with bfloat16 parameter leaves, a function closing over a bfloat16
matrix).

Policy (``widen`` and ``product_eps``):

* The working dtype is at least float32. A bfloat16 or float16 operator is wrapped in
  :class:`Widened`: each product casts its input down to the operator's dtype, calls the
  operator's own compiled product, and casts the result up. Everything else runs in float32.
  (Running the solvers in bfloat16 is hopeless: with 8 significant bits a basis of a few dozen
  vectors is not orthogonal to two digits, and LAPACK has no bfloat16 QR or SVD.)
* Every tolerance floor and error allowance uses ``product_eps``: the largest machine epsilon
  among the operator's dtype and the floating arrays it holds (its pytree leaves, the wrapped
  operator's included). A product cannot be more accurate than the narrowest data it is
  computed from, so this is never optimistic; it can be pessimistic for an operator that holds
  narrow data it does not use in its products.

What the flags then mean: a product rounded to a dtype with epsilon :math:`\epsilon_p` carries
an error of about :math:`\epsilon_p \|A\|` (rounding its input and its output), which no
solver can remove; so the default absolute tolerance is :math:`100 \epsilon_p \|A\|` and, when
the products are narrower than the working precision, each reported residual includes the
allowance :math:`\sqrt 2\, \epsilon_p \|A\|` for the two products it is computed from. With
bfloat16 products (:math:`\epsilon_p = 2^{-7}`), singular values are therefore certified to
about one percent of :math:`\|A\|`, never better.

Mixed precision in training. For a training Jacobian, ``J`` is the derivative of the training
map *as JAX computes it*: the JVP/VJP of the program as written, in the dtypes it is written in.
With float32 master weights and bfloat16 compute (parameters cast to bfloat16 inside the loss),
``J`` is taken with respect to the float32 parameters, but every product passes through the
bfloat16 forward and backward passes, so it is accurate to about :math:`\epsilon_{bf16} = 2^{-7}`
relative to :math:`\|J\|` per step of the loop at best (the errors of ``T`` steps can compound);
with mixed bfloat16/float32 parameter leaves the flat vector is float32, the products are as
accurate as the bfloat16 leaves allow, and ``product_eps`` sees those leaves and sets the floors
accordingly. Neither case certifies small singular values (the stable end) below about
:math:`\epsilon_{bf16} \|J\|`: for those, train and differentiate in float32 or float64.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractOperator

__all__ = [
    "Widened",
    "widen",
    "product_eps",
    "working_dtype",
    "narrow_products",
    "product_error",
]


def working_dtype(dtype) -> np.dtype:
    """The solvers' arithmetic dtype for an operator of ``dtype``: at least float32."""
    return np.dtype(jnp.promote_types(dtype, jnp.float32))


class Widened(AbstractOperator):
    r"""A narrow (bfloat16, float16) operator seen in float32: each product casts its input to
    the base's dtype, calls the base's own compiled product and casts the result up.

    The base's products are unchanged (compiled once per base, as always); the casts are small
    compiled glue. Rounding the input to the base dtype is part of the product's error, which
    the solvers' tolerances account for (:func:`product_eps`).
    """

    base: AbstractOperator
    compiles_products: ClassVar[bool] = False

    def __init__(self, base: AbstractOperator):
        self.base = base
        self.shape = base.shape
        self.dtype = working_dtype(base.dtype)
        self.chunk_size = base.chunk_size
        self.mesh = base.mesh
        self.check_finite = base.check_finite

    def _through(self, kind, x):
        y = self.base.apply(kind, x.astype(self.base.dtype))
        return y.astype(self.dtype)

    def _mv(self, v):
        return self._through("mv", v)

    def _rmv(self, u):
        return self._through("rmv", u)

    def _matmat(self, V):
        return self._through("matmat", V)

    def _rmatmat(self, U):
        return self._through("rmatmat", U)


def widen(op: AbstractOperator) -> AbstractOperator:
    """``op`` itself if its dtype is float32 or wider, else ``Widened(op)``."""
    if np.dtype(op.dtype).itemsize >= 4:
        return op
    return Widened(op)


def _operators(op: AbstractOperator):
    """``op`` and the operators it wraps (fields that are operators, recursively)."""
    yield op
    for field in dataclasses.fields(op):
        value = getattr(op, field.name, None)
        if isinstance(value, AbstractOperator):
            yield from _operators(value)


def product_eps(op: AbstractOperator) -> float:
    """Machine epsilon of the precision ``op``'s products are computed in: the largest among
    its dtype, the dtypes of the operators it wraps (a :class:`Widened` base's included) and
    the dtypes of the floating arrays it holds."""
    dtypes = [o.dtype for o in _operators(op)]
    dtypes += [getattr(x, "dtype", None) for x in jax.tree_util.tree_leaves(op)]
    return max(
        float(jnp.finfo(dt).eps)
        for dt in dtypes
        if dt is not None and jnp.issubdtype(dt, jnp.floating)
    )


def narrow_products(op: AbstractOperator) -> bool:
    """True when ``op``'s products are computed in a precision narrower than its dtype."""
    return product_eps(op) > float(jnp.finfo(op.dtype).eps)


def product_error(op: AbstractOperator, anorm: float) -> float:
    r"""Rounding of a pair of products (one ``mv``, one ``rmv``) not seen by the working
    precision: :math:`\sqrt 2\, \epsilon_p \|A\|` when the products are narrower than the
    operator's (working) dtype, else 0. A product rounded to :math:`\epsilon_p` on its input
    and its output carries an error of about :math:`\epsilon_p \|A\|` (twice the unit
    roundoff); a model, not a bound, for products that round more often (a bfloat16 training
    loop), which is why the default tolerances keep a factor 100 above it."""
    if not narrow_products(op):
        return 0.0
    return float(np.sqrt(2.0) * product_eps(op) * float(anorm))
