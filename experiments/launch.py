r"""A pod on one machine: starts N copies of a command as one JAX process group on localhost.

  python -m experiments.launch --processes=2 --devices_per_process=2 [--timeout=3600] [--logs=DIR] \
      -- python -m experiments.run_study --workdir=workdir/pod --config=configs/study.py:local

Each copy gets the environment that makes the project's scripts join the group (:mod:`experiments.hosts`: the
coordinator on 127.0.0.1 at a free port, the process count, its index, M CPU devices, CPU collectives over gloo),
so the command runs unchanged. Every process writes its own log, DIR/process_<i>.log. When one process exits
non-zero, the others are killed and the launcher exits with its code (128 + the signal for a killed one; after printing
the end of its log); when ``--timeout`` seconds pass first, all are killed and it exits 124; stopped itself (Ctrl-C,
SIGTERM), it kills them all. It exits 0 only when every process did.

Test modes: ``--private_scratch`` gives each process but 0 a private directory for its files (``ESN_SCRATCH``), so
that a run can show no host reads what another wrote; ``--vary_hash_seed`` gives each process its own
PYTHONHASHSEED, so that a run can show no output depends on Python's string hashing.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from experiments import hosts

_PROCESSES = flags.DEFINE_integer("processes", 2, "Processes to start.", lower_bound=1)
_DEVICES = flags.DEFINE_integer("devices_per_process", 1, "CPU devices each process makes.", lower_bound=1)
_TIMEOUT = flags.DEFINE_float("timeout", 3600.0, "Seconds before every process is killed.", lower_bound=1.0)
_LOG_DIR = flags.DEFINE_string("logs", "", "Where process_<i>.log go (default: a new temporary folder).")
_PRIVATE = flags.DEFINE_bool("private_scratch", False, "Give each process but 0 a private scratch directory.")
_HASH_SEEDS = flags.DEFINE_bool("vary_hash_seed", False, "Give each process its own PYTHONHASHSEED.")

POLL_SECONDS = 0.2  # how soon a failure is noticed
TIMED_OUT = 124


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environments(processes: int, devices: int, port: int, scratch: Path | None, vary_hash_seed: bool) -> list[dict]:
    """Each process's environment (os.environ plus the group's settings)."""
    out = []
    for i in range(processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", **{
            hosts.COORDINATOR: f"127.0.0.1:{port}", hosts.NUM_PROCESSES: str(processes),
            hosts.PROCESS_ID: str(i), hosts.LOCAL_DEVICES: str(devices)})
        if scratch is not None and i > 0:
            env[hosts.SCRATCH] = str(scratch / f"process_{i}")
        if vary_hash_seed:
            env["PYTHONHASHSEED"] = str(i + 1)
        out.append(env)
    return out


def launch(command: list[str], processes: int, devices: int, timeout: float, log_dir: Path,
           private_scratch: bool = False, vary_hash_seed: bool = False) -> int:
    """Runs the group to its end; returns 0, the first failing process's exit code, or :data:`TIMED_OUT`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=log_dir)) if private_scratch else None
    envs = environments(processes, devices, free_port(), scratch, vary_hash_seed)
    logs = [open(log_dir / f"process_{i}.log", "wb") for i in range(processes)]  # noqa: SIM115 (closed below)
    procs = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
             for env, log in zip(envs, logs, strict=True)]
    deadline, code = time.monotonic() + timeout, None
    try:
        while code is None:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                code = codes[failed[0]] if codes[failed[0]] > 0 else 128 - codes[failed[0]]  # killed: 128 + signal
                print(f"process {failed[0]} exited with {code}; stopping the others. End of its log:\n"
                      + _tail(log_dir / f"process_{failed[0]}.log"), file=sys.stderr)
            elif all(c == 0 for c in codes):
                code = 0
            elif time.monotonic() > deadline:
                print(f"timed out after {timeout:g} s; stopping every process", file=sys.stderr)
                code = TIMED_OUT
            else:
                time.sleep(POLL_SECONDS)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # its whole session: the command's own children too
            p.wait()
        for log in logs:
            log.close()
    return code


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main(argv):
    command = argv[1:]
    if not command:
        raise app.UsageError("give the command after --, e.g. -- python -m experiments.run_study --workdir=W")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # so that the group is stopped too
    log_dir = Path(_LOG_DIR.value) if _LOG_DIR.value else Path(tempfile.mkdtemp(prefix="launch-"))
    print(f"{_PROCESSES.value} processes × {_DEVICES.value} devices; logs in {log_dir}", flush=True)
    code = launch(command, _PROCESSES.value, _DEVICES.value, _TIMEOUT.value, log_dir, _PRIVATE.value,
                  _HASH_SEEDS.value)
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
