"""The device flags the study and the memory plan share: ``--mesh`` and ``--distributed``.

  --mesh=data:4,model:2     axes and sizes of the device mesh (ports.sharding.AXES); default: every
                            device of every process on the data axis
  --distributed             join a multi-host process group first (:mod:`experiments.hosts`): one process per
                            host of a pod. With --coordinator_address, --num_processes and --process_id (or
                            their ESN_* environment variables, which experiments.launch sets) it joins that
                            group; with none, JAX detects the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes)
  --local_devices=M         devices each process must see (on the CPU, how many it makes); checked after joining
"""

import os

import jax
from absl import flags
from jax.sharding import Mesh

from experiments import hosts
from ports import sharding

_MESH = flags.DEFINE_string("mesh", "", "Device mesh, e.g. 'data:4,model:2'. Default: all devices on 'data'.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-host process group (experiments/hosts.py).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (with --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the group (with --distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (with --distributed).")
_LOCAL_DEVICES = flags.DEFINE_integer("local_devices", 0, "Devices each process must see (with --distributed).")


def start() -> None:
    """Joins the process group when ``--distributed`` is set or the launcher's environment names one; call it before
    any other JAX call of a script."""
    if (_DISTRIBUTED.value or os.environ.get(hosts.NUM_PROCESSES)) and not jax.distributed.is_initialized():
        hosts.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _LOCAL_DEVICES.value)


def mesh_from_flags() -> Mesh:
    start()
    sizes = sharding.parse_mesh(_MESH.value) or {"data": jax.device_count()}
    mesh = sharding.make_mesh(**sizes)
    if mesh.devices.size != jax.device_count() and jax.process_count() > 1:
        raise ValueError(f"--mesh={_MESH.value} covers {mesh.devices.size} of the group's {jax.device_count()} "
                         "devices: a multi-host mesh must hold every device of every process")
    return mesh
