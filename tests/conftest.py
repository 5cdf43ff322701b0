"""Test-wide JAX settings, and the real-weight numbers printed at the end of every run.

Parity is judged in float32 at full matmul precision (XLA's CPU default may use lower-precision passes).
Eight CPU devices let the sharding tests build real meshes; unsharded code runs on the first one.
The ``report`` fixture collects lines (e.g. a parity test's measured difference) that the terminal summary
prints, so they show in CI's output even under ``pytest -q``.
"""

import gc

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_num_cpu_devices", 8)

_REPORTED: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module. Each one holds memory mappings of its code, and the
    suite compiles thousands (the memory plan's bisections alone, hundreds): kept for the whole session they approach
    the kernel's limit on mappings per process (vm.max_map_count, 65530), where XLA's compiler crashed the run."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def report():
    return _REPORTED.append


def pytest_terminal_summary(terminalreporter):
    if _REPORTED:
        terminalreporter.section("measured on real weights")
        for line in _REPORTED:
            terminalreporter.write_line(line)
