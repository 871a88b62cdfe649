"""The whole offline pipeline (same as ``rtd quickstart``): ``python jobs/quickstart.py [--serve] [--fast]``."""

from __future__ import annotations

import sys

from rtd.cli import main as rtd_main

if __name__ == "__main__":
    sys.exit(rtd_main(["quickstart", *sys.argv[1:]]))
