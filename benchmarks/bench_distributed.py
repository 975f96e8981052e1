"""Issue 16 section 2: products per second against the number of processes (jax.distributed).

For each process count N it starts N processes on this host (``localhost``, one CPU device each,
gloo collectives; or one GPU each with ``--platform gpu``), joins them with
``jax.distributed.initialize`` into one global mesh (``mtj.global_mesh()``) and, on the digits
MLP's training Jacobian with ``mesh=``, measures (warm: compiled first, then timed with
``block_until_ready``):

* block products ``J.matmat`` / ``J.rmatmat`` of ``--columns`` columns (split across the mesh);
* single products ``J.mv`` (not split: every process computes the same product);
* the SLQ stage, ``singular_value_density`` with ``--probes`` probes x ``--steps`` steps (probes
  split across the mesh).

Rates are operator products per second (a block product of c columns counts c). Process 0
reports; the table gives each rate and its ratio to one process. Wall-clock numbers mean
something only on an otherwise idle machine with at least N free cores (or N devices): the
machine record (load averages before and after) is stored with them.

Run: ``python -m benchmarks.bench_distributed --processes 1 2`` (writes
``benchmarks/results/distributed.{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from benchmarks import _common as C

_MARK = "@@DISTRIBUTED-RESULT@@"


def _worker(a) -> None:
    import jax

    if a.num_processes > 1:
        jax.distributed.initialize(
            f"localhost:{a.port}", num_processes=a.num_processes, process_id=a.process_id
        )
    import numpy as np

    import matfree_tj as mtj

    m = mtj.examples.digits_mlp(hidden=a.hidden, num_epochs=a.num_epochs)
    J = mtj.training_jacobian(m.train_fn, m.params0, mesh=mtj.global_mesh())
    P = J.shape[0]
    rng = np.random.default_rng(0)
    V = jax.numpy.asarray(rng.standard_normal((P, a.columns)), J.dtype)
    v = V[:, 0]

    def rate(fn, products):
        jax.block_until_ready(fn())  # compile and warm up
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        times.sort()
        return products / times[len(times) // 2]

    key = jax.random.key(0)
    slq_products = 2 * a.probes * a.steps
    out = {
        "processes": a.num_processes,
        "devices": jax.device_count(),
        "P": P,
        "matmat": rate(lambda: J.matmat(V), a.columns),
        "rmatmat": rate(lambda: J.rmatmat(V), a.columns),
        "mv": rate(lambda: J.mv(v), 1),
        "slq": rate(
            lambda: (
                mtj.singular_value_density(J, key=key, num_probes=a.probes, num_steps=a.steps).nodes
            ),
            slq_products,
        ),
    }
    if jax.process_index() == 0:
        print(_MARK + json.dumps(out), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(n: int, a) -> dict:
    port = _free_port()
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(C.ROOT), os.environ.get("PYTHONPATH", "")])
    )
    if a.platform == "cpu":
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = []
    for i in range(n):
        if a.platform == "gpu":
            env = dict(env, CUDA_VISIBLE_DEVICES=str(i))
        cmd = [sys.executable, "-m", "benchmarks.bench_distributed", "--worker"]
        cmd += ["--num-processes", str(n), "--process-id", str(i), "--port", str(port)]
        cmd += _shared_args(a)
        procs.append(
            subprocess.Popen(
                cmd, cwd=C.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=a.timeout))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        return {"processes": n, "error": f"timed out after {a.timeout}s"}
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            return {"processes": n, "error": err.strip().splitlines()[-1:] or ["failed"]}
    line = next(x for x in outs[0][0].splitlines() if x.startswith(_MARK))
    return json.loads(line[len(_MARK) :])


def _shared_args(a) -> list[str]:
    return [
        "--hidden", str(a.hidden), "--num-epochs", str(a.num_epochs), "--columns", str(a.columns),
        "--probes", str(a.probes), "--steps", str(a.steps), "--repeats", str(a.repeats),
    ]  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--hidden", type=int, default=64, help="digits MLP width (64: P = 4810)")
    p.add_argument("--num-epochs", type=int, default=2, help="training epochs (T = 25 per epoch)")
    p.add_argument("--columns", type=int, default=64, help="columns per block product")
    p.add_argument("--probes", type=int, default=8, help="SLQ probes")
    p.add_argument("--steps", type=int, default=40, help="Lanczos steps per SLQ probe")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is kept)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per process count")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        _worker(a)
        return
    info = C.machine_info()
    rows = [_run(n, a) for n in a.processes]
    base = next((r for r in rows if r.get("processes") == 1 and "error" not in r), None)
    for r in rows:
        for k in ("matmat", "rmatmat", "mv", "slq"):
            if base and k in r:
                r[k + "_x"] = r[k] / base[k]
    C.finish_info(info)
    command = "python -m benchmarks.bench_distributed " + " ".join(sys.argv[1:])
    cols = [("processes", "processes", "d"), ("P", "P", "d")]
    for k, name in (
        ("matmat", "matmat"),
        ("rmatmat", "rmatmat"),
        ("mv", "mv"),
        ("slq", "SLQ"),
    ):
        cols += [(k, f"{name} products/s", ".4g"), (k + "_x", "x 1 process", ".2f")]
    cols.append(("error", "error", lambda e: "" if e is None else str(e)))
    table = C.markdown_table(rows, cols)
    print(table)
    C.write_json("distributed", {"machine": info, "settings": vars(a), "rows": rows}, a.out)
    C.write_text("distributed.md", C.header_lines(info, command) + "\n" + table, a.out)


if __name__ == "__main__":
    main()
