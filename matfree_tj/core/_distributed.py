r"""Runs across processes: one global device mesh, work split along its first axis.

With :func:`jax.distributed.initialize` every process runs the same program (JAX's
multi-controller model) and :func:`jax.devices` lists the devices of *all* processes. A
:class:`~jax.sharding.Mesh` over them is *global*: a computation laid out on it runs its
shards on every process at once and exchanges data through the backend's collectives (gloo
or MPI on CPU, NCCL on GPU). matfree_tj splits two kinds of work over such a mesh:

* block products (:meth:`AbstractOperator.matmat`: columns split, ``core/_operator.py``);
* independent rows of a batch -- the probes of stochastic Lanczos quadrature -- through
  :func:`split_rows` here.

Both return their result *replicated* on every device of the mesh, so host code that follows
(a Ritz extraction, a convergence test, a count) sees the same numbers on every process and
takes the same decisions: nothing else has to be coordinated as long as every process is
given the same key and options.

Reference: JAX, "Multi-process environments" (jax.readthedocs.io/en/latest/multi_process.html).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["global_mesh", "least_over_processes", "mesh_size", "split_rows"]


def global_mesh(axis_name: str = "batch") -> Mesh:
    """A one-axis mesh over every device of every process (``jax.devices()``).

    Call :func:`jax.distributed.initialize` first on each process when running on several;
    on one process this is a mesh over its local devices. Pass it as ``mesh=`` to
    :func:`matfree_tj.training_jacobian` (or any operator): block products then split their
    columns, and SLQ its probes, across all the devices. Its axis is Auto (JAX lays out
    what is not split), so results are plain arrays; an Explicit mesh (``jax.make_mesh``'s
    default) works as well and is used the same way.

    Examples
    --------
    >>> import jax, matfree_tj as mtj
    >>> mesh = mtj.global_mesh()
    >>> mesh.devices.size == jax.device_count()
    True
    """
    return jax.make_mesh((jax.device_count(),), (axis_name,), axis_types=(AxisType.Auto,))


def mesh_size(mesh: Mesh | None) -> int:
    """Devices along the mesh's first axis (1 without a mesh).

    Examples
    --------
    >>> from matfree_tj.core import mesh_size
    >>> mesh_size(None)
    1
    """
    return 1 if mesh is None else int(mesh.shape[mesh.axis_names[0]])


def _auto(mesh: Mesh) -> Mesh:
    """The same devices and axis names with Auto axes. ``jax.make_mesh`` gives Explicit axes,
    whose arrays carry the mesh in their type; such a result then cannot meet a plain array in
    an eager operation (``dynamic_update_slice`` refuses the mix), which the solvers do. Laid
    out on Auto axes, the work is split the same way and the results are plain arrays."""
    if not any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def split_rows(fn: Callable, mesh: Mesh, *xs: jax.Array):
    """``fn(*xs)`` with the leading axis of every ``xs`` split across ``mesh``'s first axis.

    ``fn`` must treat rows independently (a ``lax.map`` or ``vmap`` over them). The rows are
    padded to a multiple of the number of devices by repeating the last row (a valid input,
    so the padding computes nothing non-finite), each device runs ``fn`` on its share, and
    the outputs (pytree of arrays with that leading axis) come back replicated on every
    device -- on every process -- with the padding removed. Traceable: call it inside
    ``jax.jit``. Explicit mesh axes (``jax.make_mesh``) are used as Auto ones, so the
    outputs are plain arrays.

    Parameters
    ----------
    fn
        Function of the row blocks ``(*xs)``, returning arrays with the same leading axis.
    mesh
        The device mesh; its first axis takes the rows.
    *xs
        Arrays with a common leading length ``n``.

    Returns
    -------
    The outputs of ``fn`` for all ``n`` rows, replicated across the mesh.

    Cost: ``ceil(n / D) * D`` rows of work for ``D`` devices (the padding is computed and
    dropped), ``ceil(n / D)`` per device; one gather of the outputs.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from matfree_tj.core import global_mesh, split_rows
    >>> f = jax.jit(lambda x: split_rows(lambda r: 2 * r, global_mesh(), x))
    >>> f(jnp.arange(5.0)).tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
    """
    mesh = _auto(mesh)
    axis = mesh.axis_names[0]
    n = xs[0].shape[0]
    pad = (-n) % mesh_size(mesh)

    def padded(x):
        if pad == 0:
            return x
        return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)

    spec = PartitionSpec(axis)
    out = jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(
        *(padded(x) for x in xs)
    )
    full = NamedSharding(mesh, PartitionSpec())  # replicated: every process can read it
    return jax.tree_util.tree_map(lambda y: jax.lax.with_sharding_constraint(y, full)[:n], out)


def least_over_processes(value: int) -> int:
    """The smallest of ``value`` over all processes (itself on one process). For host-side
    choices that must agree everywhere, such as a memory budget on hosts of different size.
    Every process must call it (a collective).

    Examples
    --------
    >>> from matfree_tj.core import least_over_processes
    >>> least_over_processes(7)  # one process: itself
    7
    """
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    values = multihost_utils.process_allgather(np.asarray(int(value), np.int64))
    return int(np.min(values))
