"""Every `rtd ...` and `python jobs/*.py ...` command in the README and docs/ must match the code: its --help runs,
every --flag it uses exists, and every --config preset it names is shipped (so the docs cannot drift)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from rtd.config import list_presets

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CMD = re.compile(r"(?:^|\s|/)(rtd(?=\s+[a-z])|python jobs/\w+\.py)(.*)")


def _commands() -> list[tuple[str, str, list[str]]]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split("#")[0].strip()
                m = CMD.search(line)
                if not m:
                    continue
                entry, rest = m.group(1), m.group(2)
                try:
                    words = shlex.split(rest)
                except ValueError:
                    words = rest.split()
                if entry == "rtd":
                    if not words or words[0].startswith("-"):
                        continue
                    entry, words = f"rtd {words[0]}", words[1:]
                out.append((doc.name, entry, words))
    return out


COMMANDS = _commands()


@lru_cache(maxsize=None)
def _help(entry: str) -> str:
    if entry.startswith("rtd "):
        argv = [sys.executable, "-m", "rtd.cli", entry.split()[1], "--help"]
    else:
        argv = [sys.executable, entry.split()[1], "--help"]
    res = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=240)
    assert res.returncode == 0, f"{entry} --help failed:\n{res.stderr[-2000:]}"
    return res.stdout


def test_docs_have_commands():
    entries = {e for _, e, _ in COMMANDS}
    assert {"rtd quickstart", "rtd train", "rtd eval", "python jobs/train.py", "python jobs/tune.py",
            "python jobs/evaluate.py"} <= entries, entries


@pytest.mark.parametrize("doc,entry,words", COMMANDS, ids=[f"{d}:{e}:{i}" for i, (d, e, _) in enumerate(COMMANDS)])
def test_documented_command_matches_code(doc, entry, words):
    text = _help(entry)
    presets = set(list_presets())
    for i, w in enumerate(words):
        if w.startswith("--"):
            flag = w.split("=")[0]
            assert flag in text, f"{doc}: {entry} has no flag {flag}"
            if flag == "--config" and i + 1 < len(words):
                name = words[i + 1]
                assert name in presets or (REPO / name).is_file(), f"{doc}: preset {name} is not shipped"
