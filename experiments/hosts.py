"""The process group of a multi-host run (JAX's multi-controller runtime): joining it, and the few collective steps
a program that runs unchanged on every host needs.

Every host runs the same program on the same global work list; each feeds only its own devices, and the values
that leave the devices are gathered so that every host holds the same numpy results. One host writes: process 0
(:func:`is_writer`). What it read from its disk reaches the others by :func:`broadcast_bytes`, so no host reads a
file another wrote, and the workdir need not be shared.

Settings (flags of :mod:`experiments.devices`, or these environment variables, which the launcher
:mod:`experiments.launch` sets; JAX itself reads only the coordinator's address):

  ESN_COORDINATOR_ADDRESS   host:port of process 0's coordination service
  ESN_NUM_PROCESSES         how many processes the group has
  ESN_PROCESS_ID            this process's index, 0 ... N - 1
  ESN_LOCAL_DEVICES         devices each process must see (on the CPU: how many it makes)
  ESN_SCRATCH               this process's private directory: a process other than 0 keeps its files there
                            instead of in the workdir (the launcher's ``--private_scratch``, a test of the claim
                            that no host reads another's files)
  ESN_FAULT                 "<process>:<stage>": that process raises when it reaches that stage (tests)
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

COORDINATOR, NUM_PROCESSES, PROCESS_ID = "ESN_COORDINATOR_ADDRESS", "ESN_NUM_PROCESSES", "ESN_PROCESS_ID"
LOCAL_DEVICES, SCRATCH, FAULT = "ESN_LOCAL_DEVICES", "ESN_SCRATCH", "ESN_FAULT"


class InjectedFault(RuntimeError):
    """Raised by :func:`fault_point` where ``ESN_FAULT`` says."""


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1, local_devices: int = 0) -> None:
    """Joins the process group before any other JAX call; each setting falls back to its environment variable, and
    with none given JAX detects the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes). Then checks that the group is
    what was asked: N processes, each with ``local_devices`` devices (when given), all of them alike.

    Raises RuntimeError naming what differs: running on as one process of a pod would write wrong results."""
    coordinator = coordinator or os.environ.get(COORDINATOR, "")
    num_processes = num_processes or _env_int(NUM_PROCESSES, 0)
    process_id = process_id if process_id >= 0 else _env_int(PROCESS_ID, -1)
    local_devices = local_devices or _env_int(LOCAL_DEVICES, 0)
    if local_devices:
        jax.config.update("jax_num_cpu_devices", local_devices)  # the CPU backend only; accelerators have their own
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    kwargs = {}
    if coordinator:
        kwargs["coordinator_address"] = coordinator
    if num_processes:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as err:  # e.g. nothing given and no cluster detected
        err.add_note(f"--distributed: give --coordinator_address, --num_processes and --process_id (or {COORDINATOR}, "
                     f"{NUM_PROCESSES}, {PROCESS_ID}) where JAX detects no cluster")
        raise
    check(num_processes, local_devices)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.lstrip("-").isdigit():
        raise ValueError(f"{name}={value!r}: expected an integer")
    return int(value)


def check(num_processes: int = 0, local_devices: int = 0) -> None:
    """The group's shape against what was asked (0: not asked); RuntimeError naming the difference."""
    got = (jax.process_count(), jax.local_device_count(), jax.device_count())
    if num_processes and got[0] != num_processes:
        raise RuntimeError(f"asked for {num_processes} processes but the group has {got[0]}: did every process get "
                           f"the same {COORDINATOR} and its own {PROCESS_ID}?")
    if local_devices and got[1] != local_devices:
        raise RuntimeError(f"process {jax.process_index()} sees {got[1]} local devices, not the {local_devices} asked")
    if got[2] != got[0] * got[1]:
        raise RuntimeError(f"{got[2]} devices over {got[0]} processes of {got[1]}: every process must have as many")


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def multi() -> bool:
    return jax.process_count() > 1


def workdir(path: Path) -> Path:
    """Where this process keeps its files: the workdir, or its private scratch directory (``ESN_SCRATCH``) when it
    is not the writer."""
    scratch = os.environ.get(SCRATCH)
    return Path(scratch) if scratch and not is_writer() else Path(path)


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op with one process)."""
    if multi():
        multihost_utils.sync_global_devices(name)


def broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's ``data`` on every process (the others pass None); with one process, ``data`` itself."""
    if not multi():
        return data
    size = int(multihost_utils.broadcast_one_to_all(np.int64(len(data) if is_writer() else 0)))
    buf = np.frombuffer(data, np.uint8) if is_writer() else np.zeros(size, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf)))


def broadcast_flag(value: bool) -> bool:
    """Process 0's decision on every process."""
    if not multi():
        return value
    return bool(multihost_utils.broadcast_one_to_all(np.int32(value)))


def agree(what: str, payload: bytes) -> None:
    """Checks that every process built the same ``payload`` (e.g. the work list), by its hash; RuntimeError naming
    the processes that differ from process 0."""
    if not multi():
        return
    digest = np.frombuffer(hashlib.sha256(payload).digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(digest))  # [N, 32]
    differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    if differ:
        raise RuntimeError(f"{what}: processes {differ} built a different one than process 0")


def machine_devices(mesh=None) -> int:
    """How many devices of ``mesh`` (None: the one device an unsharded run uses) sit on this machine, counting every
    process that shares it (by host name): on the CPU backend they all draw on its memory."""
    if mesh is None:
        return 1
    mine = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    if not multi():
        return mine
    name = np.frombuffer(hashlib.sha256(socket.gethostname().encode()).digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(np.concatenate([name, [mine]]).astype(np.int32)))
    return int(every[(every[:, :-1] == name).all(1), -1].sum())


def to_host(x) -> np.ndarray:
    """A device array's whole value as numpy on every process (gathered across processes when it is sharded over
    devices of other processes)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def fault_point(stage: str) -> None:
    """Raises :class:`InjectedFault` when ``ESN_FAULT`` names this process and ``stage``."""
    if os.environ.get(FAULT) == f"{jax.process_index()}:{stage}":
        raise InjectedFault(f"fault injected into process {jax.process_index()} at stage {stage!r} ({FAULT}) at unix "
                            f"time {time.time():.3f}")


def exit_at_once(main):
    """Wraps a script's ``main``: in a group, an uncaught error prints its traceback and ends the process at once
    (``os._exit(1)``) instead of waiting at JAX's shutdown barrier for processes that wait on it in turn; the
    launcher, or the cluster's scheduler, then stops the others."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception:  # noqa: BLE001 (every error, reported in full, ends the process)
            if not multi():
                raise
            traceback.print_exc()
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(1)
    return wrapped
