"""Parity is judged in float32 at full matmul precision (XLA's CPU default may use lower-precision passes)."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
