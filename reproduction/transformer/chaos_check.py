# Usage: python reproduction/transformer/chaos_check.py  (float64 training runs of mtj.examples.transformer under a few settings)
import time, sys
import jax; jax.config.update("jax_enable_x64", True)
import numpy as np, jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import matfree_tj as mtj
configs = [dict(), dict(learning_rate=1e-3), dict(dropout=0.0), dict(num_steps=300), dict(learning_rate=3e-4)]
for cfg in configs:
    t = time.time()
    run = mtj.examples.transformer(dtype=jnp.float64, **cfg)
    flat, unravel = ravel_pytree(run.params0)
    f = jax.jit(lambda x: ravel_pytree(run.train_fn(unravel(x)))[0])
    r = jax.random.normal(jax.random.key(7), flat.shape, flat.dtype); r = r / jnp.linalg.norm(r)
    base = np.asarray(f(flat))
    out = []
    for eps in (1e-12, 1e-10, 1e-8):
        d = np.linalg.norm(np.asarray(f(flat + eps * r)) - base) / eps
        out.append(f"eps {eps:g}: |dtheta_T|/eps {d:.3g}")
    acc = ""
    if hasattr(run, "apply"):
        pass
    print(cfg or "default", "; ".join(out), f"({time.time() - t:.0f} s)", flush=True)
