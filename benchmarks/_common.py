"""Shared helpers for the benchmarks: timing, peak memory, isolation, machine record, output.

Timing: ``time_call`` runs a function once to warm up (compilation), then ``repeat`` more
times, each ended by ``jax.block_until_ready``; it reports the first (cold) time and the
median / minimum of the warm ones.

Peak memory, two ways:

* ``compiled_memory(fn, *args)``: XLA's own accounting of a jitted function
  (``.lower(...).compile().memory_analysis()``: temporaries, arguments, outputs), exact and
  independent of machine load, but blind to anything outside that one computation.
* ``run_isolated(target, kwargs)``: the case runs in a fresh Python subprocess (nothing cached
  from earlier cases), which resets the kernel's peak-RSS counter (``/proc/self/clear_refs``)
  after its setup and reports the peak resident set (``VmHWM``) of the measured part. A case
  that runs past its time limit or is killed is recorded as such instead of stopping the run.

Every JSON result carries ``machine_info()``: date, CPU, cores, memory, versions, git commit
and the load averages before and after, so numbers taken on a busy machine say so.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
_MARK = "@@BENCH-RESULT@@"

GiB = 1024**3
MiB = 1024**2


# ---------------------------------------------------------------------------------------
# Machine record
# ---------------------------------------------------------------------------------------


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def _meminfo(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            lines = fh.readlines()
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return None


def available_memory() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable)."""
    v = _meminfo("MemAvailable")
    return v if v is not None else 8 * GiB


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.readlines()
        for line in lines:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except Exception:  # noqa: BLE001
        return None


def machine_info() -> dict:
    """Date, machine, versions and load: stored with every result."""
    import importlib.metadata as md

    def ver(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info = {
        "date": utc_now(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_gib": round((_meminfo("MemTotal") or 0) / GiB, 1),
        "python": platform.python_version(),
        "versions": {
            k: ver(k) for k in ("jax", "jaxlib", "numpy", "scipy", "optax", "equinox", "matfree-tj")
        },
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average_1_5_15": load_average(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import jax

        info["devices"] = [f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices()]
        info["jax_x64"] = bool(jax.config.jax_enable_x64)
    except Exception as e:  # noqa: BLE001
        info["devices"] = [f"unavailable: {e}"]
    return info


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def time_call(
    fn: Callable, *args: Any, warmup: int = 1, repeat: int = 3, max_seconds: float | None = None
) -> dict:
    """Cold time of the first call, then ``repeat`` warm calls (stops early past ``max_seconds``).

    Returns ``{"cold_s", "times_s", "median_s", "min_s", "result"}`` (the last call's output).
    """
    t0 = time.perf_counter()
    out = block(fn(*args))
    cold = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        out = block(fn(*args))
    times = []
    start = time.perf_counter()
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = block(fn(*args))
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return {
        "cold_s": cold,
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "result": out,
    }


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


# ---------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            lines = fh.readlines()
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return None


def current_rss() -> int | None:
    return _status("VmRSS")


def peak_rss() -> int | None:
    """Peak resident set of this process since start or since the last ``reset_peak_rss``."""
    v = _status("VmHWM")
    if v is None:  # pragma: no cover - non-Linux fallback
        import resource

        v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return v


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory() as pm: ...``: ``pm.peak`` (bytes) and ``pm.delta`` (peak - start RSS)."""

    def __enter__(self):
        import gc

        gc.collect()
        self.reset = reset_peak_rss()
        self.start = current_rss() or 0
        return self

    def __exit__(self, *exc):
        self.peak = peak_rss() or 0
        self.delta = max(0, self.peak - self.start) if self.reset else None
        return False

    def as_dict(self) -> dict:
        return {
            "rss_start_bytes": self.start,
            "rss_peak_bytes": self.peak,
            "rss_peak_above_start_bytes": self.delta,
            "peak_reset_ok": self.reset,
        }


def compiled_memory(fn: Callable, *args: Any) -> dict:
    """XLA's memory accounting of ``jax.jit(fn)(*args)`` (bytes), without running it."""
    import jax

    try:
        compiled = jax.jit(fn).lower(*args).compile()
        ma = compiled.memory_analysis()
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}
    if ma is None:
        return {"error": "memory_analysis() not available on this backend"}
    out = {}
    for name in (
        "temp_size_in_bytes",
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        out[name.replace("_size_in_bytes", "_bytes")] = int(getattr(ma, name, 0) or 0)
    return out


# ---------------------------------------------------------------------------------------
# Isolated cases
# ---------------------------------------------------------------------------------------


def run_isolated(
    target: str,
    kwargs: dict | None = None,
    *,
    timeout: float = 600,
    env: dict | None = None,
    verbose: bool = True,
    strict_memory: bool = False,
) -> dict:
    """Run ``module:function(**kwargs)`` in a fresh Python process and return its dict.

    The child adds ``lifetime_peak_rss_bytes``. Failures come back as
    ``{"status": "timeout" | "killed" | "error", ...}`` instead of raising.

    ``strict_memory``: run the child with a fixed 1 MiB mmap threshold, so large buffers are
    mmapped and given back to the kernel when freed and a reset peak-RSS counter sees every
    large allocation of the measured part. It slows allocation-heavy code (measured A/B on
    the idle 2-core machine, top-50 Lanczos at P = 19,210: +6% cold, +15-25% warm), so timed
    cases run with the default allocator, as users do, and only memory-focused cases ask for
    it.
    """
    kwargs = kwargs or {}
    cmd = [sys.executable, "-m", "benchmarks._common", target, json.dumps(kwargs)]
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    if strict_memory:
        full_env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1024 * 1024))
    else:
        full_env.pop("MALLOC_MMAP_THRESHOLD_", None)
    t0 = time.perf_counter()
    if verbose:
        print(f"  [{utc_now()[11:19]}] {target} {kwargs}", flush=True)
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        res = {
            "status": "timeout",
            "timeout_s": timeout,
            "why": f"did not finish within the {timeout:.0f} s limit of this case",
        }
        if verbose:
            print(f"    -> timeout after {timeout:.0f} s", flush=True)
        return res
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith(_MARK):
            res = json.loads(line[len(_MARK) :])
            res.setdefault("status", "ok")
            res["subprocess_wall_s"] = wall
            if verbose:
                print(f"    -> {res['status']} in {wall:.1f} s", flush=True)
            return res
    if proc.returncode in (-9, 137):
        res = {
            "status": "killed",
            "why": "killed by signal 9 (most likely out of memory)",
            "subprocess_wall_s": wall,
        }
    else:
        res = {
            "status": "error",
            "returncode": proc.returncode,
            "subprocess_wall_s": wall,
            "why": (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1][:500],
            "stderr_tail": proc.stderr[-3000:],
        }
    if verbose:
        print(f"    -> {res['status']}: {res['why']}", flush=True)
    return res


def _child_main(argv: Sequence[str]) -> None:
    import importlib

    target, kwargs = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    mod_name, fn_name = target.split(":")
    try:
        res = getattr(importlib.import_module(mod_name), fn_name)(**kwargs)
        res = dict(res)
        res.setdefault("status", "ok")
    except MemoryError as e:
        res = {"status": "error", "why": f"MemoryError: {e}"}
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}"
        res = {
            "status": "error",
            "why": msg.splitlines()[0][:500] if msg else type(e).__name__,
            "traceback": traceback.format_exc()[-3000:],
        }
    res["lifetime_peak_rss_bytes"] = _status("VmHWM")
    sys.stdout.write("\n" + _MARK + json.dumps(to_jsonable(res)) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else repr(x)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return to_jsonable(np.asarray(obj).tolist())
    return repr(obj)


def write_json(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_jsonable(payload), indent=1) + "\n")
    tmp.replace(path)
    print(f"  wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
    return path


def write_text(name: str, text: str, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(text)
    print(f"  wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
    return path


def fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "yes" if x else "no"
    try:
        return format(x, spec)
    except (TypeError, ValueError):
        return str(x)


def fmt_bytes(b: Any) -> str:
    if b is None or isinstance(b, str):
        return fmt(b)
    b = float(b)
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_s(t: Any) -> str:
    if t is None or isinstance(t, str):
        return fmt(t)
    t = float(t)
    if t < 1e-3:
        return f"{t * 1e6:.0f} us"
    if t < 1:
        return f"{t * 1e3:.3g} ms"
    return f"{t:.3g} s"


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, Callable | str]]) -> str:
    """``columns``: (key, header, formatter or format spec)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, f in columns:
            v = r.get(key)
            cells.append(f(v) if callable(f) else fmt(v, f))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def header_lines(info: dict, command: str) -> str:
    """Markdown lines stating machine, versions, date, load and the reproducing command."""
    v = info.get("versions", {})
    return (
        f"Machine: {info.get('cpu')} ({info.get('cpu_affinity')} cores usable), "
        f"{info.get('memory_total_gib')} GiB; devices {', '.join(info.get('devices', []))}. "
        f"jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, numpy {v.get('numpy')}, "
        f"scipy {v.get('scipy')}. "
        f"Date {info.get('date')}; load average (1/5/15 min) at start "
        f"{info.get('load_average_1_5_15')}, at end {info.get('load_average_end')}. "
        f"Commit {info.get('git_commit')}{' (dirty tree)' if info.get('git_dirty') else ''}.\n"
        f"Reproduce: `{command}`\n"
    )


def finish_info(info: dict) -> dict:
    info["load_average_end"] = load_average()
    info["date_end"] = utc_now()
    return info


def solvers_available() -> tuple[bool, str]:
    """Whether the spectral solvers (issue 3) are importable from matfree_tj."""
    try:
        import matfree_tj as mtj
    except Exception as e:  # noqa: BLE001
        return False, f"matfree_tj failed to import: {e}"
    missing = [
        n
        for n in ("top_singular", "bottom_singular", "singular_value_density", "region_counts")
        if not hasattr(mtj, n)
    ]
    if missing:
        return False, f"matfree_tj has no {', '.join(missing)} yet (solvers not merged)"
    return True, ""


if __name__ == "__main__":
    _child_main(sys.argv[1:])
