"""The collective steps of :mod:`experiments.hosts` in a real group of 2 processes × 2 CPU devices on localhost,
and the check of a group's shape."""

import sys
from pathlib import Path

import pytest

from experiments import hosts, local_group

ROOT = Path(__file__).resolve().parents[2]

GROUP_SCRIPT = """
import sys
import numpy as np
from experiments import hosts
hosts.initialize()
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
from ports import sharding

@hosts.exit_at_once
def main():
    me = jax.process_index()
    data = np.random.default_rng(0).bytes(1 << 20)
    assert hosts.broadcast_bytes(data if me == 0 else None) == data
    assert hosts.broadcast_flag(me == 0) is True
    mesh = sharding.make_mesh(data=jax.device_count())
    rows = sharding.process_rows(mesh, 8)
    x = sharding.shard_process_rows({"x": np.arange(8)[rows]}, mesh, rows, 8)["x"]
    assert hosts.to_host(x).tolist() == list(range(8)), hosts.to_host(x)
    assert (hosts.machine_devices(mesh), hosts.machine_devices()) == (4, 1)  # both processes on this machine
    hosts.agree("the same list", b"abc")
    hosts.agree("a list", b"abc" if me != 1 else b"abd")
main()
"""


def test_group_steps_and_a_disagreement(tmp_path, monkeypatch):
    """Broadcast, gather and the rows of a batch in a real group of 2 × 2; a work list that differs on one process
    stops the group with an error naming it."""
    monkeypatch.chdir(ROOT)  # the processes import the project from there
    logs = tmp_path / "logs"
    got = local_group.run([sys.executable, "-c", GROUP_SCRIPT], 2, 2, 120.0, logs)
    assert got == 1
    text = "".join((logs / f"process_{i}.log").read_text() for i in range(2))
    assert "a list: processes [1] built a different one than process 0" in text and "the same list" not in text


def test_group_of_another_shape_than_asked_is_refused():
    with pytest.raises(RuntimeError, match="asked for 2 processes but the group has 1"):
        hosts.check(num_processes=2)
    with pytest.raises(RuntimeError, match="local devices, not the 3 asked"):
        hosts.check(local_devices=3)
