"""Fixtures for the link's end-to-end tests; the helpers are in tests/fixtures/linked.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.linked import Linked, Restartable, cloud_args, link_agent
from tests.fixtures.proxies import ProxyProcess


@pytest.fixture
def linked(start_cloud: Callable[..., Cloud], start_agent: AgentLauncher) -> Linked:
    return link_agent(start_cloud(*cloud_args()), start_agent)


@pytest.fixture
def restartable() -> Iterator[Callable[[ProxyProcess], Restartable]]:
    made: list[Restartable] = []

    def make(proxy: ProxyProcess) -> Restartable:
        r = Restartable(proxy)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
