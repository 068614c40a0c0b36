"""Reliability tests (issue 7): bad input, crash safety, concurrency, numerical safety,
injection and paths. See docs/RELIABILITY.md for the case list.

The helpers shared by these tests live in ``reliability_helpers.py`` beside this file; the
folder is put on ``sys.path`` here because the suite runs with ``--import-mode=importlib``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="module")
def duckdb_engine():
    from als_core.engines.base import get_engine

    engine = get_engine("duckdb")
    yield engine
    engine.close()
