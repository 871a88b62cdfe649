"""The web page at ``/`` in headless Chromium: it loads, runs a composed query and renders the top-k.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped cleanly when it is absent. The app is the
real FastAPI app over the in-process backend (no Ray), served by uvicorn on a free loopback port. The screenshot
is kept as a test artifact in ``$RTD_ARTIFACTS_DIR`` (default: ``test-artifacts/`` at the repository root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from rtd.config import ServeConfig
    from serve.api import create_api
    from serve.core import LocalBackend
    from serve.demo import make_demo_index, tiny_model_config

    root = tmp_path_factory.mktemp("page_gallery")
    index_dir = make_demo_index(root, n=32, num_shards=2)
    cfg = ServeConfig(index_dir=str(index_dir), model=tiny_model_config(), image_root=str(root / "images"),
                      auth_token_env=None)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_api(LocalBackend(cfg), cfg), host="127.0.0.1", port=port,
                                        log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"rtd-chromium-{os.getpid()}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,900",
           "--virtual-time-budget=8000", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_page_runs_a_query_and_renders_results(server, tmp_path):
    url = f"{server}/?q=make%20it%20blue"
    dom = _chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "rtd composed image retrieval" in html
    assert 'class="hit"' in html and "mode text" in html, html[-3000:]
    assert "timings (ms)" in html

    out_dir = Path(os.environ.get("RTD_ARTIFACTS_DIR", Path(__file__).resolve().parents[2] / "test-artifacts"))
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / "serve_page.png"
    res = _chromium(f"--screenshot={shot}", url)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 5_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
