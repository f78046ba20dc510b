"""No one but the node can stop the node: a real agent reconnects through a
challenge flood and through a stranger's wrong answers, both from another
address (127.0.0.2), and never enters its terminal "wrong key" state.

The attacks, as observed before the fix: a flood of challenge requests evicted
the agent's own challenge, whose correct answer then got 403
ErrIncorrectResponse and stopped the agent for good; and 5 wrong answers a
minute from anyone locked the node out."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import Linked, cloud_args, link_agent
from tests.fixtures.stranger import Stranger
from tether.protocol import auth


def restarted(linked: Linked, start_agent: AgentLauncher) -> Linked:
    """Stop the agent and start it again on the same claim (it authenticates at once)."""
    linked.agent.stop()
    linked.wait_state("offline", 10)
    return Linked(linked.cloud, start_agent(prefix=linked.agent.prefix), linked.node_id)


def assert_live_not_terminal(linked: Linked, within: float) -> None:
    linked.wait_state("live", within)
    state = linked.wait_agent_connected()
    assert state["terminal"] is False, state
    assert "ErrIncorrectResponse" not in linked.agent.log_text()


def test_challenge_flood_from_another_address_does_not_stop_the_agent(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    linked = link_agent(start_cloud(*cloud_args()), start_agent)
    flood = Stranger(linked.cloud, linked.node_id, "challenges", concurrency=16, deadline=60)
    flood.start()
    try:
        poll(lambda: flood.sent() >= 200, 20, "the flood to be under way")
        again = restarted(linked, start_agent)
        assert_live_not_terminal(again, 20)
        assert flood.sent() >= 400  # the flood ran all along
    finally:
        flood.stop()
    print(f"flood: {dict(flood.counts)}")
    # The flood's address holds 2 unanswered challenges of the node, no more; the
    # rest were refused with 429 and a Retry-After, none evicted the agent's.
    assert flood.count("challenge", 200) == 2, flood.counts
    assert flood.count("challenge", 429, "ErrRateLimited") == flood.sent() - 2, flood.counts
    assert all(1 <= int(s) <= 60 for s in flood.retry_after), flood.retry_after


def test_stranger_wrong_answers_do_not_lock_the_node_out(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    linked = link_agent(start_cloud(*cloud_args()), start_agent)
    # Far above the 5 failures a minute that used to lock the node out for all.
    stranger = Stranger(linked.cloud, linked.node_id, "wrong_answers", per_second=10, deadline=60)
    stranger.start()
    try:
        poll(lambda: stranger.count("challenge", 429, "ErrRateLimited") > 0, 20, "a lockout")
        again = restarted(linked, start_agent)
        assert_live_not_terminal(again, 20)
        # The stranger keeps going after the agent is back; the agent stays live.
        poll(
            lambda: stranger.count("password", 401, "ErrChallengeExpired") >= 10,
            20,
            "ten refused wrong answers",
        )
        assert again.state() == "live"
    finally:
        stranger.stop()
    print(f"stranger: {dict(stranger.counts)}")
    # The stranger's own wrong answers to its own live challenges are 403 (a
    # wrong key, to that caller only); after 5 failures its address gets no
    # more challenges for the node. Nothing it did reached the agent.
    assert stranger.count("password", 403, "ErrIncorrectResponse") >= 1, stranger.counts
    assert stranger.count("challenge", 200) == 5, stranger.counts


def test_full_challenge_slots_make_the_agent_wait_not_stop(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    """16 addresses holding 2 challenges each fill the node's 32 slots: the
    agent is told 429 with Retry-After, waits at least that long, and is live
    once the challenges expire (nothing was evicted to make room for it)."""
    ttl = 15  # long enough that the challenges outlive a slow agent start on a busy machine
    linked = link_agent(start_cloud(*cloud_args(), "--challenge-ttl", str(ttl)), start_agent)
    linked.agent.stop()
    linked.wait_state("offline", 10)
    cloud = linked.cloud
    for i in range(16):
        transport = httpx.HTTPTransport(
            local_address=f"127.0.0.{i + 2}", verify=cloud.ssl_context()
        )
        with httpx.Client(base_url=cloud.url, transport=transport, trust_env=False) as http:
            for _ in range(2):
                r = http.get(auth.challenge_path(linked.node_id))
                assert r.status_code == 200, r.text
    again = Linked(cloud, start_agent(prefix=linked.agent.prefix), linked.node_id)
    assert_live_not_terminal(again, 2 * ttl + 10)
    log = again.agent.log_text()
    refused = re.search(r"ErrRateLimited \(HTTP 429\).*?\n.*?reconnecting in ([0-9.]+) s", log)
    assert refused, log
    # Retry-After (up to the challenge lifetime) is the floor; the backoff alone would be under 1 s.
    assert float(refused.group(1)) >= 2.0
