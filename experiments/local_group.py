"""N copies of a command as one JAX process group on localhost: what ``python -m experiments.launch`` runs.

Each copy gets the environment that makes the project's scripts join the group (:mod:`experiments.hosts`: the
coordinator on 127.0.0.1 at a free port, the process count, its index, M CPU devices), so the command runs unchanged.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments import hosts

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


def exit_code(returncode: int) -> int:
    """A process's exit status as a shell reports it: 128 + the signal for a killed one."""
    return returncode if returncode >= 0 else 128 - returncode


def run(command: list[str], processes: int, devices: int, timeout: float, log_dir: Path,
        private_scratch: bool = False, vary_hash_seed: bool = False) -> int:
    """Runs the group to its end; returns 0, the exit code of the lowest-numbered failed process, or
    :data:`TIMED_OUT`. Every process writes ``log_dir/process_<i>.log``.

    When a process fails, the others are killed; every process that had already failed on its own is reported on
    stderr with the end of its log. Several usually have: one process's error closes its connections, and its peers
    then fail on the collective they were in, so the polling order says nothing about which came first.
    """
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
            if any(c not in (None, 0) for c in codes):
                time.sleep(POLL_SECONDS)  # the peers a failure brings down end within moments; report them too
                codes = [p.poll() for p in procs]
                failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
                code = exit_code(codes[failed[0]])
                for i in failed:
                    print(f"process {i} exited with {exit_code(codes[i])}. End of its log:\n"
                          + _tail(log_dir / f"process_{i}.log"), file=sys.stderr)
                print(f"processes {failed} failed; stopping the others", file=sys.stderr)
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
