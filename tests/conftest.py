"""Shared test fixtures. Each area keeps its fixtures in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.cloud",
    "tests.fixtures.agent",
    "tests.fixtures.proxies",
    "tests.fixtures.postgres",
    "tests.fixtures.scaleout",
    "tests.fixtures.nats_server",
]
