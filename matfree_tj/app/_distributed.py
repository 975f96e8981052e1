r"""``matfree-tj spectrum`` across processes: the options, their checks and the start-up.

``--coordinator HOST:PORT --num-processes N --process-id I`` (or ``--coordinator auto`` on a
SLURM or Open MPI cluster) starts :func:`jax.distributed.initialize` before anything else
touches JAX; the training Jacobian then gets a mesh over the devices of all processes
(:func:`matfree_tj.global_mesh`), so block products split their columns and the SLQ stage
its probes across the processes. Every process runs the same command with the same key and
takes the same host-side decisions from replicated results; process 0 alone prints and
writes the outputs.
"""

from __future__ import annotations

import argparse
import warnings

__all__ = ["add_arguments", "start", "is_writer", "mesh"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a run across processes (and the block size that lets Lanczos use it)."""
    g = p.add_argument_group(
        "runs across processes (jax.distributed)",
        "Start the same command on every process (one per host or per GPU), changing only "
        "--process-id; block products and SLQ probes are split across all their devices, and "
        "process 0 prints and writes the outputs.",
    )
    g.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT|auto",
        help="address of process 0 (a port free on its host), or auto: detect the coordinator, "
        "the number of processes and this process's id from the cluster (SLURM, Open MPI)",
    )
    g.add_argument(
        "--num-processes", type=int, default=None, metavar="N", help="processes in the run"
    )
    g.add_argument(
        "--process-id", type=int, default=None, metavar="I", help="this process, 0 .. N-1"
    )
    g.add_argument(
        "--block-size",
        type=int,
        default=1,
        metavar="B",
        help="top-k Lanczos in blocks of B columns (default 1: single-vector products, which "
        "one device computes; B > 1: block products, split across the devices)",
    )


def _check(args, parser) -> None:
    if args.block_size < 1:
        parser.error(f"--block-size: expected a positive integer, got {args.block_size}")
    coord, n, i = args.coordinator, args.num_processes, args.process_id
    if coord is None:
        if n is not None or i is not None:
            parser.error(
                "--num-processes and --process-id need --coordinator HOST:PORT (the address "
                "of process 0)"
            )
        return
    if args.backend == "dense":
        parser.error(
            "--coordinator: the dense backend does not split across processes (every process "
            "would materialise the whole J); use --backend matrix-free"
        )
    if coord == "auto":
        if n is not None or i is not None:
            parser.error(
                "--coordinator auto detects --num-processes and --process-id from the cluster; "
                "give all three explicitly or none of the last two"
            )
        return
    host, sep, port = coord.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        parser.error(
            f"--coordinator: expected HOST:PORT with a port in 1..65535 (e.g. "
            f"node0:12345) or auto, got {coord!r}"
        )
    if n is None or i is None:
        parser.error(
            "--coordinator HOST:PORT needs --num-processes N and --process-id I (or use "
            "--coordinator auto on a SLURM / Open MPI cluster)"
        )
    if n < 1:
        parser.error(f"--num-processes: expected a positive integer, got {n}")
    if not 0 <= i < n:
        parser.error(f"--process-id: expected 0 <= I < --num-processes = {n}, got {i}")


def start(args, parser) -> None:
    """Check the options, then :func:`jax.distributed.initialize` when ``--coordinator`` is
    given: before any JAX computation, as JAX requires."""
    if not hasattr(args, "coordinator"):  # a command without these options
        return
    _check(args, parser)
    if args.coordinator is None:
        return
    import jax

    try:
        if args.coordinator == "auto":
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(
                args.coordinator, num_processes=args.num_processes, process_id=args.process_id
            )
    except (RuntimeError, ValueError) as e:
        parser.error(
            f"--coordinator {args.coordinator}: jax.distributed.initialize failed ({e}). Check "
            "that every process got the same --coordinator and --num-processes, that process 0 "
            "runs and its port is reachable"
            + (" (auto needs SLURM or Open MPI variables)" if args.coordinator == "auto" else "")
        )
    if jax.process_index() != 0:
        # every process computes the same numbers, so the same warnings: process 0 shows them
        warnings.simplefilter("ignore")


def is_writer(args) -> bool:
    """True on the process that prints and writes: process 0 of a distributed run, the only
    process otherwise (then JAX is not touched)."""
    if getattr(args, "coordinator", None) is None:
        return True
    import jax

    return jax.process_index() == 0


def mesh(args):
    """The global mesh over every process's devices for a distributed run, else ``None``."""
    if getattr(args, "coordinator", None) is None:
        return None
    from ..core import global_mesh

    return global_mesh()
