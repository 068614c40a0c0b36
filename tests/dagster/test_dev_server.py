"""`dagster dev -w workspace.yaml` serves the code location: the smoke script's checks
(GraphQL: every asset, the sensors, the schedules) against a real server, stopped cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dagster_dev_serves_assets_and_sensor():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "dagster_smoke.py"), "--timeout", "240"],
                          cwd=REPO, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert summary["problems"] == []
    assert summary["sensors"]["new_rating_files"] == "RUNNING"
    assert "factor_versions" in summary["assets"] and len(summary["assets"]) == 8
