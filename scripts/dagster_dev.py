#!/usr/bin/env python
"""``dagster dev -w workspace.yaml`` with the project's instance settings.

DAGSTER_HOME defaults to ./.dagster_home (git-ignored; runs and sensor cursors persist
there); a dagster_project/dagster.yaml copy is put there when it has no dagster.yaml yet
(pool limits, a 1 s run queue, no telemetry). Other arguments go to ``dagster dev``:

    .venv/bin/python scripts/dagster_dev.py [-p 3000] [-h 127.0.0.1]
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO / ".dagster_home"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(REPO / "dagster_project" / "dagster.yaml", home / "dagster.yaml")
    os.chdir(REPO)
    dagster = Path(sys.executable).with_name("dagster")
    exe = str(dagster) if dagster.exists() else "dagster"
    os.execv(exe, [exe, "dev", "-w", "workspace.yaml", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
