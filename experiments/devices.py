"""The device flags every experiment script shares: ``--mesh`` and ``--distributed``.

  --mesh=data:4,model:2     axes and sizes of the device mesh (ports.sharding.AXES); default: every
                            device on the data axis
  --distributed             call jax.distributed.initialize() first (one process per host of a pod;
                            the coordinator comes from the environment, as on Cloud TPU or SLURM)
"""

import jax
from absl import flags
from jax.sharding import Mesh

from ports import sharding

_MESH = flags.DEFINE_string("mesh", "", "Device mesh, e.g. 'data:4,model:2'. Default: all devices on 'data'.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")


def mesh_from_flags() -> Mesh:
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    sizes = sharding.parse_mesh(_MESH.value) or {"data": jax.device_count()}
    return sharding.make_mesh(**sizes)
