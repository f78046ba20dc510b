"""schemathesis against a real Cloud's own OpenAPI document (/api/openapi.json):
every operation, with the real ids of a Space, a War Room, a live node (a
claimed Peer that answers relayed queries), a member, an invitation, an API
token, a claiming token, a room rule, a grace override and a silence,
authenticated with the Cloud's API token. The bar is zero 5xx (schemathesis'
`not_a_server_error`); every one found is listed with its input.

Bounded for CI by a budget of requests for the whole run, shared by every
operation (the API grows, the run's time should not): about 800 requests,
at least 4 with the real ids and valid input, 4 with schema-violating input
and 1 with generated ids for each operation. Select it alone with
`pytest -m fuzz`; search longer with `TETHER_FUZZ_SCALE=10`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.generation.modes import GenerationMode

from tests.fixtures.cloud import Cloud
from tests.fixtures.peer import FAST, Peer, link_up

pytestmark = pytest.mark.fuzz

# The whole run's requests (TETHER_FUZZ_SCALE=10 searches ten times longer),
# split over the operations by mode: with the real ids (valid, then
# schema-violating input), and with generated ids; never under the floor.
SCALE = float(os.environ.get("TETHER_FUZZ_SCALE", "1"))
BUDGET = 800 * SCALE
SHARE = {"real-valid": 0.45, "real-invalid": 0.45, "any-ids": 0.10}
FLOOR = {"real-valid": 4, "real-invalid": 4, "any-ids": 1}


def examples_per_operation(operations: int) -> dict[str, int]:
    return {
        mode: max(FLOOR[mode], int(BUDGET * share / operations)) for mode, share in SHARE.items()
    }


# Run these last, in this order: each ends what the ones after it need.
LAST = [
    ("DELETE", "/api/v1/spaces/{space_id}/claim-tokens/{token_id}"),
    ("DELETE", "/api/v1/spaces/{space_id}/rooms/{room_id}/rules/{rule_id}"),
    ("DELETE", "/api/v1/spaces/{space_id}/alert-grace/{scope}/{target}"),
    ("DELETE", "/api/v1/spaces/{space_id}/silences/{silence_id}"),
    ("DELETE", "/api/v1/me/api-tokens/{prefix}"),
    ("DELETE", "/api/v1/spaces/{space_id}/invitations/{invitation_id}"),
    ("DELETE", "/api/v1/spaces/{space_id}/rooms/{room_id}/nodes/{node_id}"),
    ("DELETE", "/api/v1/spaces/{space_id}/rooms/{room_id}"),
    ("DELETE", "/api/v1/spaces/{space_id}/members/{user_id}"),
    ("DELETE", "/api/v1/spaces/{space_id}/nodes/{node_id}"),
    ("DELETE", "/api/v1/spaces/{space_id}"),
]


def _ok(r: requests.Response | Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _made(r: requests.Response | Any) -> Any:
    assert r.status_code in (200, 201), r.text
    return r.json()


def real_ids(cloud: Cloud, peer: Peer) -> dict[str, str]:
    """Ids of real things in the Cloud, one per path parameter name."""
    sp = f"/api/v1/spaces/{cloud.space_id}"
    room = _ok(cloud.api("POST", f"{sp}/rooms", json={"name": "fuzz room"}), 201)
    _ok(cloud.api("PUT", f"{sp}/rooms/{room['id']}/nodes/{peer.node_id}"), 204)
    me = _ok(cloud.api("GET", "/api/v1/me"))
    spare = _ok(cloud.api("POST", "/api/v1/me/api-tokens", json={"name": "fuzz spare"}), 201)
    invitation = _ok(cloud.api("POST", f"{sp}/members", json={"email": "fuzz@example.com"}), 201)
    token = _made(cloud.api("POST", f"{sp}/claim-tokens", json={"name": "fuzz token"}))
    rule = {"action": "include", "key": "fuzz", "op": "equals", "value": "yes"}
    rule_id = _made(cloud.api("POST", f"{sp}/rooms/{room['id']}/rules", json=rule))["id"]
    grace = {"scope": "room", "target": room["id"], "grace_seconds": 60}
    _made(cloud.api("PUT", f"{sp}/alert-grace", json=grace))
    silence = {"scope": "node", "target": peer.node_id, "minutes": 30, "reason": "fuzz"}
    silence_id = _made(cloud.api("POST", f"{sp}/silences", json=silence))["id"]
    # No real channel_id: a real channel's test send to a closed port is the
    # documented 502 (the receiver refused), which the bar would count.
    return {
        "space_id": cloud.space_id,
        "room_id": room["id"],
        "node_id": peer.node_id,
        "claim_id": peer.node_id,
        "user_id": me["id"],
        "prefix": spare["prefix"],
        "invitation_id": invitation["id"],
        "token_id": token["id"],
        "rule_id": rule_id,
        "scope": "room",
        "target": room["id"],
        "silence_id": silence_id,
    }


@contextlib.contextmanager
def live_link(peer: Peer) -> Iterator[None]:
    """The peer's link, answering every relayed query, in a thread of its own."""
    loop = asyncio.new_event_loop()
    up = threading.Event()

    async def serve() -> None:
        link = await link_up(peer)
        up.set()
        try:
            # The link ends with an error when the fuzzer deletes the node.
            with contextlib.suppress(Exception):
                await link.serve()
        finally:
            await link.ws.close()

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.close()

    task = loop.create_task(serve())
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert up.wait(20), "the peer's link did not come up"
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):  # its loop is closed if the link ended
            loop.call_soon_threadsafe(task.cancel)
        thread.join(10)


def describe(case: Any, response: requests.Response) -> str:
    body = case.body if not isinstance(case.body, bytes) else case.body[:300]
    text = repr(body)
    return (
        f"{response.status_code} {case.method} {case.formatted_path} query={case.query!r} "
        f"body={text[:300]}{'...' if len(text) > 300 else ''} -> {response.text[:200]}"
    )


def fuzz(
    op: Any, strategy: Any, examples: int, call: Callable[[Any], requests.Response]
) -> list[str]:
    found: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same inputs each run: a failure is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def check(case: Any) -> None:
        response = call(case)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except (AssertionError, BaseExceptionGroup):
            found.append(describe(case, response))

    with contextlib.suppress(Unsatisfiable):  # nothing to violate (no parameters, no body)
        check()
    return found


def test_no_operation_answers_5xx(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud(*FAST, "--claim-failures-per-minute", "100000")
    peer = Peer(cloud).claim()
    ids = real_ids(cloud, peer)
    assert cloud.ca_file
    schema = schemathesis.openapi.from_url(f"{cloud.url}/api/openapi.json", verify=cloud.ca_file)
    results = list(schema.get_all_operations())
    # The document itself is valid for schemathesis (a `{name:path}` was not).
    assert [str(r.err()) for r in results if isinstance(r, Err)] == []
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    order = {key: i for i, key in enumerate(LAST)}
    operations.sort(key=lambda op: order.get((op.method.upper(), op.path), -1))
    assert len(operations) >= 30, [op.label for op in operations]

    session = requests.Session()
    session.verify = cloud.ca_file
    headers = {"Authorization": f"Bearer {cloud.api_token}"}

    statuses: Counter[int] = Counter()

    def call(case: Any) -> requests.Response:
        response: requests.Response = case.call(
            base_url=cloud.url, session=session, headers=headers, timeout=30, verify=cloud.ca_file
        )
        statuses[response.status_code] += 1
        return response

    found: list[str] = []
    counts: dict[str, float] = {}
    examples = examples_per_operation(len(operations))
    no_real_id: set[str] = set()
    began = time.monotonic()
    with live_link(peer):
        for op in operations:
            fixed = {p.name: ids[p.name] for p in op.path_parameters if p.name in ids}
            no_real_id |= {f"{op.label} {{{p.name}}}" for p in op.path_parameters} - {
                f"{op.label} {{{name}}}" for name in fixed
            }
            if op.path.endswith("{name}"):
                fixed.pop("name", None)  # the relayed name is fuzzed
            t0 = time.monotonic()
            for mode, n in examples.items():
                strategy = op.as_strategy(
                    generation_mode=(
                        GenerationMode.NEGATIVE
                        if mode == "real-invalid"
                        else GenerationMode.POSITIVE
                    ),
                    path_parameters=fixed if mode != "any-ids" else None,
                )
                found += fuzz(op, strategy, n, call)
            counts[op.label] = time.monotonic() - t0
    took = time.monotonic() - began
    slowest = sorted(counts.items(), key=lambda kv: -kv[1])[:10]
    print(
        f"schemathesis: {len(operations)} operations, {statuses.total()} requests in "
        f"{took:.1f} s; statuses {dict(sorted(statuses.items()))}; slowest: "
        + ", ".join(f"{label} {t:.1f} s" for label, t in slowest)
    )
    print(f"examples per operation {examples}; generated ids only:", *sorted(no_real_id))
    for line in found:
        print("5xx:", line)
    errors = [line for line in cloud.log_tail(100_000).splitlines() if " ERROR " in line]
    print(f"{len(errors)} ERROR lines in the Cloud's log", *errors[:20], sep="\n")
    assert found == [], f"{len(found)} answers were 5xx:\n" + "\n".join(found)
