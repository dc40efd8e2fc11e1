"""Shared fixtures."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.unit.harness import Trow, make_trow


@pytest.fixture
def trow(tmp_path) -> Iterator[Trow]:  # type: ignore[no-untyped-def]
    """An in-memory trow on a fresh data dir."""
    instance = make_trow(str(tmp_path / "data"))
    yield instance
    instance.stores.metadata.close()
