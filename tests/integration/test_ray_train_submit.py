"""``ray job submit`` of jobs/train.py against a local ``ray start --head`` cluster (slow: ~3 min on 2 CPUs).

Run on purpose: ``pytest -m slow tests/integration/test_ray_train_submit.py``. The head gets its own ports and
temp dir, and is torn down by process id (never ``ray stop``, which would also stop other Ray instances on the
machine, e.g. the session fixture's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(marker: str) -> set[int]:
    found = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="ignore"):
                    found.add(int(d.name))
            except OSError:
                pass
    kids = True
    while kids:
        kids = False
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) not in found:
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid in found:
                    found.add(int(d.name))
                    kids = True
    return found


def test_ray_job_submit_train(tmp_path):
    bin_dir = Path(sys.executable).parent
    ray_cli = bin_dir / "ray"
    if not ray_cli.exists():
        pytest.skip("ray CLI not installed next to this python")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="rtdray", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    dash = _free_port()
    start = [str(ray_cli), "start", "--head", "--num-cpus", "4", "--dashboard-host", "127.0.0.1",
             "--disable-usage-stats", "--temp-dir", temp_dir, "--port", str(_free_port()),
             "--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(_free_port()),
             "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port()),
             "--ray-client-server-port", str(_free_port())]
    storage = tmp_path / "runs"
    try:
        subprocess.run(start, env=env, check=True, capture_output=True, timeout=120, cwd=REPO)
        submit = [str(ray_cli), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".",
                  "--runtime-env-json", json.dumps({"env_vars": {"RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
                                                                 "HF_HUB_OFFLINE": "1"}}),
                  "--", "python", "jobs/train.py", "--config", "train/tiny_ray", f"run.storage_path={storage}",
                  "run.name=submitted", "run.steps=6", "run.checkpoint_every=3", "run.log_every=3"]
        out = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=480, cwd=REPO)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "succeeded" in out.stdout + out.stderr
        summary = json.loads((storage / "submitted" / "summary.json").read_text())
        assert summary["final_step"] == 6
    finally:
        pids = _pids_with(temp_dir)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(5)
        shutil.rmtree(temp_dir, ignore_errors=True)
