"""Test-wide JAX settings.

Parity is judged in float32 at full matmul precision (XLA's CPU default may use lower-precision passes).
Eight CPU devices let the sharding tests build real meshes; unsharded code runs on the first one.
"""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_num_cpu_devices", 8)
