"""The GEMM peak (``gemm``, alias ``peak``): n × n × n matrix products at the bench's dtype in JAX and in torch (and
numpy, for float32 when JAX runs on the CPU), on each framework's default device. The peak the other comparisons
divide by is the best of them, measured in the same run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import common


def rates(sizes, dtype: str, repeats: int) -> dict[str, float]:
    """FLOP/s per framework, the best over ``sizes``."""
    import torch

    out = {}

    def keep(name, flops, fn):
        out[name] = max(out.get(name, 0.0), flops / common.best_time(fn, repeats))

    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n), np.float32)
        flops = 2 * n**3
        if dtype == "float32" and jax.default_backend() == "cpu":
            keep("numpy", flops, lambda a=a: a @ a)
        x = jnp.asarray(a, dtype)
        mm = jax.jit(lambda x: x @ x)
        keep("jax", flops, lambda x=x, mm=mm: mm(x).block_until_ready())
        t = torch.as_tensor(a).to(common.torch_device(), common.torch_dtype(dtype))

        def torch_mm(t=t):
            with torch.inference_mode():
                t @ t
            common.sync()

        keep("torch", flops, torch_mm)
    return out


def describe(result: dict[str, float], sizes, dtype: str) -> list[str]:
    sides = ", ".join(f"{name} {common.rate(r)}" for name, r in result.items())
    sizes = "/".join(f"{n}³" for n in sizes)
    return [f"{dtype} matmul peak ({sizes}): {sides}; peak {common.rate(max(result.values()))}"]
