# Usage: python reproduction/transformer/fd_check.py STATE_DIR  (the --resume folder of the transformer spectrum run)
# Reads the saved top triplets (a private reader: a record of how the check was made, not an API).
import os, time
import jax; jax.config.update("jax_enable_x64", True)
import numpy as np, jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from matfree_tj.linalg._resume import _unpack
import matfree_tj as mtj
arr, _ = _unpack(__import__('sys').argv[1] + '/top_lanczos-00.result.state', '')
s, V, U = arr['s'], arr['V'].astype(np.float64), arr['U'].astype(np.float64)
print("s", s, "converged", arr['converged'], "res", arr['residuals'])
for dt in (jnp.float32, jnp.float64):
    run = mtj.examples.transformer(dtype=dt)
    flat, unravel = ravel_pytree(run.params0)
    f = jax.jit(lambda x: ravel_pytree(run.train_fn(unravel(x)))[0])
    t = time.time(); base = np.asarray(f(flat)); print(dt.__name__, "train", time.time() - t, "s")
    for i in (0, 4):
        v = jnp.asarray(V[:, i], flat.dtype)
        for eps in ((1e-7, 1e-5) if dt == jnp.float32 else (1e-13, 1e-11, 1e-9)):
            d = (np.asarray(f(flat + eps * v)) - np.asarray(f(flat - eps * v))) / (2 * eps)
            print(f"  v{i} eps {eps:g}: |FD| {np.linalg.norm(d):.3e}  (s_i {s[i]:.3e}); cos with u_i {abs(d @ U[:, i]) / np.linalg.norm(d):.3f}")
