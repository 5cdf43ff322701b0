"""The local process group on small commands: each process's environment, a failure or a timeout stopping the
group."""

import sys
import time
from pathlib import Path

from experiments import local_group

FAULT_STOP_SECONDS = 10  # README: the group is down this soon after a process fails (poll + kill)


def run_group(tmp_path, code: str, processes=2, timeout=60.0, devices=1, **kw) -> tuple[int, float, Path]:
    start = time.monotonic()
    got = local_group.run([sys.executable, "-c", code], processes, devices, timeout, tmp_path / "logs", **kw)
    return got, time.monotonic() - start, tmp_path / "logs"


def test_each_process_gets_its_environment(tmp_path):
    code = ("import os; print(*(os.environ.get(k) for k in ('ESN_PROCESS_ID', 'ESN_NUM_PROCESSES', "
            "'ESN_LOCAL_DEVICES', 'ESN_SCRATCH', 'PYTHONHASHSEED')), os.environ['ESN_COORDINATOR_ADDRESS'])")
    got, _, logs = run_group(tmp_path, code, 3, private_scratch=True, vary_hash_seed=True)
    assert got == 0
    lines = [(logs / f"process_{i}.log").read_text().split() for i in range(3)]
    assert [line[:3] for line in lines] == [[str(i), "3", "1"] for i in range(3)]
    assert lines[0][3] == "None" and Path(lines[1][3]).name == "process_1" and lines[1][3] != lines[2][3]
    assert [line[4] for line in lines] == ["1", "2", "3"]
    assert len({line[5] for line in lines}) == 1 and lines[0][5].startswith("127.0.0.1:")


def test_one_failed_process_stops_the_group(tmp_path, capsys):
    code = "import os, sys, time; sys.exit(3) if os.environ['ESN_PROCESS_ID'] == '1' else time.sleep(600)"
    got, seconds, _ = run_group(tmp_path, code)
    assert got == 3 and seconds < FAULT_STOP_SECONDS
    assert "process 1 exited with 3" in capsys.readouterr().err


def test_every_failed_process_is_reported(tmp_path, capsys):
    """Process 1 fails; process 0 fails because of it (here: on seeing its log end) and may be polled first. Both are
    reported with the end of their logs, and the code is the lowest-numbered one's."""
    code = """
import os, sys, time
from pathlib import Path
me = os.environ['ESN_PROCESS_ID']
print('about to fail', me, flush=True)
if me == '1':
    sys.exit(5)
log = Path(sys.argv[1]) / 'process_1.log'
while 'about to fail' not in log.read_text():
    time.sleep(0.01)
time.sleep(0.05)
sys.exit(7)
"""
    logs = tmp_path / "logs"
    got = local_group.run([sys.executable, "-c", code, str(logs)], 2, 1, 60.0, logs)
    err = capsys.readouterr().err
    assert got == 7
    assert "process 0 exited with 7" in err and "process 1 exited with 5" in err and "about to fail 1" in err


def test_timeout_kills_every_process(tmp_path):
    got, seconds, _ = run_group(tmp_path, "import time; time.sleep(600)", timeout=2.0)
    assert got == local_group.TIMED_OUT and seconds < 2.0 + FAULT_STOP_SECONDS
