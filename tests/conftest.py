"""Shared fixtures: the shipped data set and fresh warehouses on disk."""

from __future__ import annotations

import pytest

from als_core.datasets import load_shipped
from als_core.store.warehouse import Warehouse


@pytest.fixture(scope="session")
def shipped():
    """MovieLens latest-small as shipped with the package (100,836 ratings)."""
    return load_shipped()


@pytest.fixture
def warehouse(tmp_path):
    """An empty warehouse (real Delta tables) in a temporary folder."""
    wh = Warehouse(str(tmp_path / "warehouse"))
    wh.ensure_tables()
    return wh
