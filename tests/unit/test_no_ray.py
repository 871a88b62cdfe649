"""The core library must import and run with Ray absent (DESIGN.md 2: Ray only in rtd/ray_adapters)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys, importlib, pkgutil
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is blocked in this test")
sys.meta_path.insert(0, Block())
import rtd
skipped = []
for m in pkgutil.walk_packages(rtd.__path__, "rtd."):
    if m.name.startswith("rtd.ray_adapters"):
        continue
    importlib.import_module(m.name)
print("ok")
"""


def test_core_imports_without_ray():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok" in out.stdout


def test_no_ray_import_statement_in_core():
    bad = []
    for p in (REPO / "rtd").rglob("*.py"):
        if "ray_adapters" in p.parts:
            continue
        for line in p.read_text().splitlines():
            s = line.strip()
            if s.startswith("import ray") or s.startswith("from ray"):
                bad.append(f"{p}: {s}")
    assert not bad, bad
