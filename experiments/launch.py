r"""A pod on one machine: starts N copies of a command as one JAX process group on localhost.

  python -m experiments.launch --processes=2 --devices_per_process=2 [--timeout=3600] [--logs=DIR] \
      -- python -m experiments.run_study --workdir=workdir/pod --config=configs/study.py:local

Each copy gets the environment that makes the project's scripts join the group (:mod:`experiments.local_group`),
so the command runs unchanged. Every process writes its own log, DIR/process_<i>.log. When one process exits
non-zero, the others are killed and the launcher exits with its code (128 + the signal for a killed one), after
printing the end of the log of each process that failed; when ``--timeout`` seconds pass first, all are killed and it
exits 124; stopped itself (Ctrl-C, SIGTERM), it kills them all. It exits 0 only when every process did.

Test modes: ``--private_scratch`` gives each process but 0 a private directory for its files (``ESN_SCRATCH``), so
that a run can show no host reads what another wrote; ``--vary_hash_seed`` gives each process its own
PYTHONHASHSEED, so that a run can show no output depends on Python's string hashing.
"""

import signal
import sys
import tempfile
from pathlib import Path

from absl import app, flags

from experiments import local_group

_PROCESSES = flags.DEFINE_integer("processes", 2, "Processes to start.", lower_bound=1)
_DEVICES = flags.DEFINE_integer("devices_per_process", 1, "CPU devices each process makes.", lower_bound=1)
_TIMEOUT = flags.DEFINE_float("timeout", 3600.0, "Seconds before every process is killed.", lower_bound=1.0)
_LOG_DIR = flags.DEFINE_string("logs", "", "Where process_<i>.log go (default: a new temporary folder).")
_PRIVATE = flags.DEFINE_bool("private_scratch", False, "Give each process but 0 a private scratch directory.")
_HASH_SEEDS = flags.DEFINE_bool("vary_hash_seed", False, "Give each process its own PYTHONHASHSEED.")


def main(argv):
    command = argv[1:]
    if not command:
        raise app.UsageError("give the command after --, e.g. -- python -m experiments.run_study --workdir=W")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # so that the group is stopped too
    log_dir = Path(_LOG_DIR.value) if _LOG_DIR.value else Path(tempfile.mkdtemp(prefix="launch-"))
    print(f"{_PROCESSES.value} processes × {_DEVICES.value} devices; logs in {log_dir}", flush=True)
    code = local_group.run(command, _PROCESSES.value, _DEVICES.value, _TIMEOUT.value, log_dir, _PRIVATE.value,
                           _HASH_SEEDS.value)
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
