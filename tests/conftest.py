"""Shared test fixtures. Each area keeps its fixtures in tests/fixtures/.

The suite runs twice (scripts/test): on SQLite, then with
TETHER_TEST_DATABASE_URL set to PostgreSQL. Every test runs in both passes
unless it is marked `backend_independent`: what it checks cannot change with
the Cloud's database, or it picks its own database whatever the pass. The
modules listed in BACKEND_INDEPENDENT below get the mark here (a new module
can also say `pytestmark = pytest.mark.backend_independent`); the PostgreSQL
pass deselects what has it. So a new database test is never left out by
default: it runs twice until someone lists it here with a reason.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests.fixtures.cloud's PG_ENV; not imported here, so that pytest rewrites the
# asserts of the fixture modules (pytest_plugins) it imports after this file.
PG_ENV = "TETHER_TEST_DATABASE_URL"

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.cloud",
    "tests.fixtures.agent",
    "tests.fixtures.proxies",
    "tests.fixtures.postgres",
    "tests.fixtures.scaleout",
    "tests.fixtures.nats_server",
]

MARK = "backend_independent"

# Paths from the repository's root; grouped by why the database cannot matter.
BACKEND_INDEPENDENT = {
    # The agent, the node's files, the claim client and its flags, proxies,
    # kickstart.sh and the doctor: node-side behaviour. The Cloud's side of a
    # claim (tokens, rooms, rotation) is in tests/cloud/test_claim*.py.
    "tests/agent/test_aclk_over_budget.py",
    "tests/agent/test_agent.py",
    "tests/agent/test_dashboard.py",
    "tests/agent/test_dashboard_claim.py",
    "tests/agent/test_health.py",
    "tests/agent/test_host_root.py",
    "tests/agent/test_storage.py",
    "tests/agent/test_system.py",
    "tests/agent/test_stream_parent_limits.py",  # parent and child agents
    "tests/agent/test_streaming.py",
    "tests/node/test_node_files.py",
    "tests/claim/test_claim_args.py",
    "tests/claim/test_claim_e2e.py",
    "tests/claim/test_claim_proxies.py",
    "tests/claim/test_claim_settings.py",
    "tests/claim/test_diagnose.py",
    "tests/claim/test_doctor.py",
    "tests/claim/test_keys_and_files.py",
    "tests/claim/test_kickstart.py",
    "tests/claim/test_on_start.py",
    "tests/claim/test_proxy_setting.py",
    "tests/claim/test_tls_files.py",
    # The agent's end of the link: backoff, restarts, proxies, IPv6, claim
    # paths. The Cloud's end (presence, removal, auth) is in test_cloud_*.py.
    "tests/link/test_challenge_flood.py",  # challenges live in memory on one process
    "tests/link/test_claim_proxy_kept.py",
    "tests/link/test_e2e_claim_paths.py",
    "tests/link/test_e2e_ipv6.py",
    "tests/link/test_e2e_link.py",
    "tests/link/test_e2e_proxies.py",
    # Pure functions and in-process rules with an injected clock, no database.
    "tests/protocol/test_auth.py",
    "tests/protocol/test_backoff.py",
    "tests/protocol/test_frames.py",
    "tests/protocol/test_link.py",
    "tests/protocol/test_lifecycle_frames.py",
    "tests/fuzz/test_parsers.py",
    "tests/fuzz/test_stream_parser.py",
    "tests/protocol/test_children_frames.py",
    "tests/fuzz/test_children_frame.py",
    "tests/cloud/test_limits.py",
    "tests/cloud/test_link_budget.py",
    "tests/cloud/test_node_metadata.py",
    "tests/cloud/test_relay_answers.py",
    "tests/link/test_routing.py",
    "tests/link/test_cloud_deep_frames.py",  # the frame decoder's limit
    "tests/link/test_relay_hardening.py",  # what a relayed answer may carry
    "tests/cloud/test_slow_clients.py",  # the HTTP server's timeouts
    # TLS, certificates and addresses (files in the data dir), downloads.
    "tests/cloud/test_public_url.py",
    "tests/cloud/test_downloads.py",
    # Their own database whatever the pass: SQLite in process (test_sign_in),
    # or PostgreSQL always (their own server, or scale-out on the shared one).
    "tests/cloud/test_sign_in.py",
    "tests/cloud/test_database_outage.py",
    "tests/cloud/test_readiness.py",
    "tests/link/test_alert_notifications_scaleout.py",
    "tests/link/test_cloud_nats.py",
    "tests/link/test_cloud_shared_auth.py",
    "tests/link/test_e2e_scaleout.py",
    "tests/link/test_haproxy.py",
    "tests/link/test_scaleout_access.py",
    # Packaging, containers, shell scripts, the benchmarks' simulator.
    "tests/packaging/test_compose.py",
    "tests/packaging/test_container_cloud.py",
    "tests/packaging/test_container_image.py",
    "tests/packaging/test_container_kickstart.py",
    "tests/packaging/test_entrypoint_claim.py",
    "tests/packaging/test_entrypoint_prep.py",
    "tests/packaging/test_files.py",
    "tests/packaging/test_helm_chart.py",
    "tests/packaging/test_kubernetes.py",
    "tests/bench/test_simulator.py",
    # Connect Nodes' commands (no Cloud; the Linux one against an impostor).
    # Tests marked `browser` count as backend-independent too: they check what
    # the page does; the server-side rules behind it are tested over HTTP in
    # tests/ui/test_http.py and tests/cloud, in both passes.
    "tests/ui/test_commands.py",
    "tests/ui/test_linux_command_attack.py",
    "tests/packaging/test_helm_install.py",
    "tests/test_architecture.py",  # reads the source and docs/architecture.md
}


def pytest_configure(config: pytest.Config) -> None:
    # A stale entry is harmless (a renamed module runs in both passes), but say so.
    missing = sorted(p for p in BACKEND_INDEPENDENT if not (config.rootpath / p).is_file())
    if missing:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"tests/conftest.py: BACKEND_INDEPENDENT lists missing modules {missing}: "
                "remove them (or put their new names there)"
            ),
            stacklevel=2,
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        listed = Path(item.path).relative_to(root).as_posix() in BACKEND_INDEPENDENT
        if listed or item.get_closest_marker("browser") is not None:
            item.add_marker(MARK)
    if os.environ.get(PG_ENV):
        dropped = [i for i in items if i.get_closest_marker(MARK) is not None]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [i for i in items if i.get_closest_marker(MARK) is None]
    # The container tests first: they build images on a clean checkout
    # (minutes). xdist's load scheduling gives a worker a run of consecutive
    # tests to start with, so one worker takes them all from the start while
    # the others run the rest; at the end of the order, several workers
    # would wait on one image build and the pass would end on them. (xdist
    # 3.8's loadgroup does not group with pytest 9: it rewrites a nodeid
    # attribute pytest no longer reads.)
    items.sort(key=lambda i: i.get_closest_marker("container") is None)


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get(PG_ENV):
        return f"PostgreSQL pass: tests marked {MARK} are deselected (tests/conftest.py)"
    return "SQLite pass: every test"


@pytest.fixture(autouse=True)
def _event_loop_of_the_browser_hidden(request: pytest.FixtureRequest) -> Iterator[None]:
    """Playwright's sync API (the session's browser, tests/ui/conftest.py)
    runs its event loop in a greenlet of this thread and leaves it marked
    running between calls, so `asyncio.run` in a later test on the same xdist
    worker refused to start ("cannot be called from a running event loop").
    A test without the browser runs with that loop hidden."""
    loop = None if "browser" in request.fixturenames else asyncio._get_running_loop()
    if loop is not None:
        asyncio._set_running_loop(None)
    try:
        yield
    finally:
        if loop is not None:
            asyncio._set_running_loop(loop)
