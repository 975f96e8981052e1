"""Peer libraries on the reference model (issue 15, section 4), each case in a fresh process.

* ``matfree`` (Kraemer): a fixed-depth Golub-Kahan bidiagonalisation,
  ``eig.svd_partial(decomp.bidiag(depth))``, with the matvec a user would write, a JVP of the
  flattened training run (matfree transposes it itself); ``depth`` forward and ``depth``
  transposed products, no restarts, no residuals, no flags.
* ``imate`` (Ameli): ``eigencount(J, gram=True, method="slq")`` on the *explicit* dense ``J``
  (it takes a matrix, not a training loop), so its time includes ``J.to_dense()``; reported
  with its own claimed 95% error (``info["error"]["absolute_error"]``) beside the actual one.

Both are optional (the ``bench`` extra: ``pip install matfree imate``); a missing package gives
``status = "skipped"`` with the reason, never a failed run.
"""

from __future__ import annotations

import numpy as np

from benchmarks import _common as C
from benchmarks._cases import _setup, build


def _skip(what: str, e: Exception) -> dict:
    return {"status": "skipped", "why": f"{what} not installed ({e}); pip install {what}"}


def matfree_bidiag(model: dict, k: int, depths=(100, 150, 200), seed: int = 0) -> dict:
    """Top-``k`` of ``J`` from matfree's fixed-depth bidiagonalisation at several depths (each
    cold: its own compilation included, as a user would run it)."""
    try:
        from matfree import decomp, eig
    except ImportError as e:
        return _skip("matfree", e)
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    train_fn, params0, info = build(model)
    _, out, _ = _setup(model)
    flat0, unravel = ravel_pytree(params0)

    def run_flat(x):
        return ravel_pytree(train_fn(unravel(x)))[0]

    def Av(v):  # the natural matrix-free product: a JVP of the training run
        return jax.jvp(run_flat, (flat0,), (v,))[1]

    runs = []
    for depth in depths:
        depth = int(min(depth, flat0.size - 1))
        svd = jax.jit(eig.svd_partial(decomp.bidiag(depth)), static_argnums=0)
        v0 = jax.random.normal(jax.random.key(seed), flat0.shape, flat0.dtype)
        v0 = v0 / jnp.linalg.norm(v0)
        with C.Stopwatch() as sw:
            _, s, _ = svd(Av, v0)
            s = np.asarray(C.block(s))
        runs.append(
            {
                "depth": depth,
                "cold_s": sw.seconds,
                "s": np.sort(s)[::-1][:k],
                # bidiag(depth): depth products with A and depth with A^T (its VJP)
                "num_products": 2 * depth,
            }
        )
        print(f"  matfree bidiag({depth}): {sw.seconds:.1f}s", flush=True)
    out.update({"k": k, "runs": runs, "status": "ok"})
    return out


def imate_counts(
    model: dict, num_probes: int = 10, degree: int = 200, lo: float = 0.9, hi: float = 1.1
) -> dict:
    """Region counts by imate's SLQ on the dense ``J`` (``gram=True``: eigenvalues of
    ``J^T J`` in ``[lo^2, hi^2]`` and above ``hi^2``; stable = P minus both), with imate's
    claimed 95% errors (stable: the sum of the other two)."""
    try:
        import imate
    except ImportError as e:
        return _skip("imate", e)
    J, out, _ = _setup(model)
    with C.Stopwatch() as sw:
        A = np.asarray(C.block(J.to_dense()), np.float64)
    out["to_dense_s"] = sw.seconds
    P = A.shape[0]
    top = float(np.sum(A * A)) * 1.01  # ||A||_F^2 >= sigma_1^2: the chaotic interval's end
    opts = dict(
        gram=True,
        method="slq",
        min_num_samples=int(num_probes),
        max_num_samples=int(num_probes),
        lanczos_degree=int(degree),
        return_info=True,
    )
    counts, claimed = {}, {}
    with C.Stopwatch() as sw:
        for name, interval in (("chaotic", [hi * hi, top]), ("bulk", [lo * lo, hi * hi])):
            c, inf = imate.eigencount(A, interval=interval, **opts)
            counts[name] = float(np.squeeze(c))
            claimed[name] = float(np.squeeze(inf["error"]["absolute_error"]))
    out["slq_s"] = sw.seconds
    counts["stable"] = P - counts["chaotic"] - counts["bulk"]
    claimed["stable"] = claimed["chaotic"] + claimed["bulk"]
    out.update(
        {
            "status": "ok",
            "counts": counts,
            "claimed_95": claimed,
            "num_probes": int(num_probes),
            "degree": int(degree),
            "cold_s": out["to_dense_s"] + out["slq_s"],
            # P forward products for J, then per region num_probes x degree Lanczos steps on
            # J^T J (one product with J and one with J^T each, on the dense matrix)
            "num_products": P + 2 * 2 * int(num_probes) * int(degree),
            "version": imate.__version__,
        }
    )
    return out
