"""Fixtures for the packaging tests; the helpers are in tests/fixtures/packaging.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.packaging import ContainerStarter


@pytest.fixture
def start_container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerStarter]:
    starter = ContainerStarter(tmp_path_factory)
    yield starter
    starter.stop_all()
