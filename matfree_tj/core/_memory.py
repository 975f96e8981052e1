r"""Memory guards: refuse a dense computation that cannot fit, before allocating anything.

A dense training Jacobian is ``P^2`` numbers (15 GB in float32 at ``P = 61,706``; four terabytes
at ``P = 10^6``). Without a guard the operating system kills the process part-way through
(minutes of products lost, no message); with it the user gets the estimate, what is available,
and the matrix-free command to run instead.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["MemoryBudgetError", "available_bytes", "check_fits"]

_MATRIX_FREE_HINT = (
    "Use the matrix-free solvers instead (mtj.top_singular, mtj.region_counts, "
    "analysis.spectrum_summary; on the command line: matfree-tj spectrum --backend matrix-free)."
)


class MemoryBudgetError(MemoryError):
    """A dense computation would not fit in the memory available; nothing was allocated."""


def _host_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: Any = None) -> int | None:
    """Free memory of ``device`` (an accelerator's ``bytes_limit - bytes_in_use``) or of the
    host; ``None`` when it cannot be read (the guard then lets the computation run)."""
    if device is not None and getattr(device, "platform", "cpu") != "cpu":
        try:
            stats = device.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        except Exception:  # noqa: BLE001 - memory_stats is optional per backend
            pass
    return _host_available()


def check_fits(nbytes: int, what: str, *, device: Any = None, limit: int | None = None) -> None:
    """Raise :class:`MemoryBudgetError` if ``nbytes`` exceeds the memory available (or
    ``limit`` if given), naming the estimate, the memory available and the matrix-free route.

    Examples
    --------
    >>> from matfree_tj.core._memory import check_fits
    >>> check_fits(10**6, "a small matrix")  # fits: returns None
    >>> try:
    ...     check_fits(4 * 10**12, "a dense J", limit=10**9)
    ... except MemoryError as e:
    ...     print(str(e)[:60])
    a dense J needs about 4000.0 GB, but 1.0 GB are available. U
    """
    avail = available_bytes(device) if limit is None else int(limit)
    if avail is None or nbytes <= avail:
        return
    raise MemoryBudgetError(
        f"{what} needs about {nbytes / 1e9:.1f} GB, but {avail / 1e9:.1f} GB are available. "
        f"{_MATRIX_FREE_HINT}"
    )
