"""Progress on stderr for the command line: log lines, and a bar on a terminal.

The solvers report through ``progress``: called with one line per restart cycle or stage,
and, when the object has it, ``update(label, done, total, unit)`` with the counts
(:func:`matfree_tj.linalg._resume.tick`). :class:`Progress` prints the lines with the seconds
since the start; on a terminal it also draws a bar of the current stage with the count, the
rate and (when the total is known) an ETA -- tqdm's when tqdm is installed (``pip install
'matfree-tj[progress]'``), else a one-line ``\\r`` bar of its own. Not on a terminal (a log
file, CI): the lines only. ``quiet``: nothing.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return (f"{h}:" if h else "") + f"{rest // 60:02d}:{rest % 60:02d}"


_INTERRUPTED = False


def _on_sigint(signum, frame) -> None:
    global _INTERRUPTED
    _INTERRUPTED = True
    raise KeyboardInterrupt


def catch_interrupts() -> None:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt as usual and is also remembered: a signal that
    lands while JAX runs a Python callback from C++ can have its KeyboardInterrupt swallowed
    there, so every progress line and update re-raises it (the solvers report after every
    restart cycle and probe, so the run stops at the next one, its state saved)."""
    import signal
    import threading

    global _INTERRUPTED
    _INTERRUPTED = False  # a new command (in-process callers run several)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def _check_interrupt() -> None:
    if _INTERRUPTED:
        raise KeyboardInterrupt


class Progress:
    """Progress lines and a terminal bar on ``stream`` (default stderr).

    Examples
    --------
    >>> import io
    >>> from matfree_tj.app._progress import Progress
    >>> p = Progress(stream=io.StringIO())
    >>> p("top 10 singular triplets"); p.update("SLQ probes", 2, 10, "probes")
    >>> p.stream.getvalue().endswith("top 10 singular triplets\\n")  # no bar: not a terminal
    True
    """

    def __init__(self, *, quiet: bool = False, stream: IO[str] | None = None, bar: Any = None):
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.t0 = time.perf_counter()
        isatty = getattr(self.stream, "isatty", None)
        self.bar = (not quiet and bool(isatty and isatty())) if bar is None else bool(bar)
        self._label: str | None = None
        self._tqdm: Any = None
        self._start = (0.0, 0)  # time and count when the current stage's bar began
        self._drawn = False
        self._last = 0

    def __call__(self, msg: str) -> None:
        _check_interrupt()
        if self.quiet:
            return
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        if self._tqdm is not None:
            self._tqdm.write(line, file=self.stream)
            return
        if self._drawn:  # clear the bar, print the line; the next update redraws the bar
            self.stream.write("\r\033[K")
            self._drawn = False
        print(line, file=self.stream, flush=True)

    def update(self, label: str, done: int, total: int | None, unit: str = "products") -> None:
        """The current stage has ``done`` of ``total`` (``None``: unknown) ``unit``."""
        _check_interrupt()
        if not self.bar:
            return
        if label != self._label or done < self._last:  # a new stage (or a new solve of one)
            self.close()
            self._label = label
            self._start = (time.perf_counter(), done)
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(  # the rate counts from here: the first count is initial
                    total=total,
                    initial=done,
                    desc=label,
                    unit=f" {unit}",
                    file=self.stream,
                    leave=False,
                )
        self._last = done
        if self._tqdm is not None:
            self._tqdm.update(done - self._tqdm.n)
            return
        t, d0 = self._start
        elapsed = time.perf_counter() - t
        rate = (done - d0) / elapsed if elapsed > 0 and done > d0 else None
        text = f"{label}: {done}" + (f"/{total}" if total else "") + f" {unit}"
        if rate is not None:
            text += f", {rate:.3g}/s"
            if total:
                text += f", ETA {_clock((total - done) / rate)}"
        if total:
            width = 20
            full = int(width * min(done / total, 1.0))
            text = f"[{'#' * full}{'.' * (width - full)}] " + text
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the current bar (before a final message or on an interrupt)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
        self._label = None
