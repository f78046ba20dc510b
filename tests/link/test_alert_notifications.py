"""Reachability alerts end to end: a real Cloud, real agents (or protocol
peers, for what the agent's CLI cannot yet say), a real webhook server and a
real SMTP server (aiosmtpd, STARTTLS and login). Grace periods are a second
or two, set through the API as a Space would."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.alerts import GRACE, SECRET, notifications, quiet, setup_alerts
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, poll
from tests.fixtures.linked import cloud_args, link_agent
from tests.fixtures.peer import Peer, link_up
from tests.fixtures.receivers import SmtpReceiver, WebhookReceiver, smtp, webhook
from tether.protocol.frames import Goodbye

__all__ = ["smtp", "webhook"]  # the receivers' fixtures, used by name below


def test_a_killed_agent_notifies_once_after_the_grace_and_once_when_back(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    webhook: WebhookReceiver,
    smtp: SmtpReceiver,
) -> None:
    cloud = start_cloud(*cloud_args())
    setup_alerts(cloud, webhook)
    r = cloud.api(
        "POST", f"/api/v1/spaces/{cloud.space_id}/notification-channels", json=smtp.channel()
    )
    assert r.status_code == 201, r.text
    linked = link_agent(cloud, start_agent)
    linked.agent.proc.kill()  # SIGKILL: no goodbye
    linked.agent.proc.wait(5)

    (raised,) = poll(webhook.accepted, 20, "the webhook notification")
    body = raised.json()
    assert body["event"] == "raised" and raised.signed_by(SECRET)
    assert body["idempotency_key"] == raised.key
    alert = body["alert"]
    assert alert["node"]["id"] == linked.node_id and alert["severity"] == "critical"
    # Not before the grace: the receiver got it a grace after the node went offline.
    offline_at = _epoch(alert["offline_at"])
    assert raised.at >= offline_at + GRACE
    poll(lambda: len(smtp.messages) == 1, 20, "the email")
    mail = smtp.messages[0]
    assert "is unreachable" in mail["Subject"] and smtp.logins
    active = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/alerts").json()
    assert [a["name"] for a in active] == ["reachability"]

    quiet(3)
    assert webhook.events() == ["raised"] and len(smtp.messages) == 1

    start_agent(prefix=linked.agent.prefix)  # the same node comes back
    poll(lambda: webhook.events() == ["raised", "resolved"], 30, "the resolved notification")
    resolved = webhook.accepted()[1].json()["alert"]
    assert resolved["status"] == "resolved" and resolved["duration_seconds"] > GRACE
    poll(lambda: len(smtp.messages) == 2, 20, "the resolved email")
    assert "[resolved]" in smtp.messages[1]["Subject"]
    assert cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/alerts").json() == []
    sent = notifications(cloud)
    assert {n["state"] for n in sent} == {"sent"} and len(sent) == 4


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


def test_a_planned_stop_back_in_time_sends_nothing(
    start_cloud: Callable[..., Cloud], webhook: WebhookReceiver
) -> None:
    cloud = start_cloud(*cloud_args())
    setup_alerts(cloud, webhook)
    peer = Peer(cloud).claim()

    async def scenario() -> None:
        link = await link_up(peer)
        await link.send(Goodbye(reason="upgrade", expected_back_seconds=3))
        await link.closed()
        await asyncio.sleep(2.5)  # past the 1 s grace, before the expected return
        link = await link_up(peer)
        await asyncio.sleep(3 + GRACE + 2)  # the node stays linked
        assert webhook.deliveries == []
        # A planned stop that overruns its expected return + grace is reported.
        await link.send(Goodbye(reason="upgrade", expected_back_seconds=1))
        await link.closed()

    asyncio.run(scenario())
    (d,) = poll(webhook.accepted, 20, "the overdue notification")
    alert = d.json()["alert"]
    assert alert["severity"] == "warning" and "planned stop" in alert["summary"]
    assert d.at >= _epoch(alert["offline_at"]) + 1 + GRACE


def test_restarting_the_cloud_with_nodes_linked_sends_nothing(
    start_cloud: Callable[..., Cloud], webhook: WebhookReceiver
) -> None:
    cloud = start_cloud(*cloud_args())
    setup_alerts(cloud, webhook, grace=8)
    peers = [Peer(cloud, hostname=f"peer-{i}").claim() for i in range(20)]
    gone = Peer(cloud, hostname="never-back").claim()

    async def run() -> None:
        links = [await link_up(p) for p in [*peers, gone]]
        cloud.stop(signal.SIGTERM)
        for link in links:
            await link.closed()
        again = start_cloud(
            *cloud_args(), data_dir=cloud.data_dir, database_url=cloud.database_url, port=cloud.port
        )
        for p in peers:
            p.cloud = again
        # Agents come back after their jittered delay; one never does.
        for p in peers:
            await link_up(p)
        await asyncio.sleep(8 + 3)

    asyncio.run(run())
    # Only the node that did not return is reported.
    (d,) = poll(webhook.accepted, 20, "the one notification")
    assert d.json()["alert"]["node"]["hostname"] == "never-back"
    quiet(2)
    assert len(webhook.deliveries) == 1


def test_a_receiver_failing_three_times_gets_it_once(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher, webhook: WebhookReceiver
) -> None:
    webhook.fail_first = 3
    cloud = start_cloud(*cloud_args())
    setup_alerts(cloud, webhook)
    linked = link_agent(cloud, start_agent)
    linked.agent.proc.kill()
    linked.agent.proc.wait(5)
    poll(webhook.accepted, 30, "the notification after three failures")
    assert [d.status for d in webhook.deliveries] == [500, 500, 500, 200]
    assert len({d.key for d in webhook.deliveries}) == 1
    (n,) = poll(
        lambda: [n for n in notifications(cloud) if n["state"] == "sent"], 10, "sent in the log"
    )
    assert n["attempts"] == 4 and n["event"] == "raised"


def test_kill_9_of_the_cloud_mid_send_still_delivers_once(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher, webhook: WebhookReceiver
) -> None:
    webhook.hold_first = 1
    cloud = start_cloud(*cloud_args())
    setup_alerts(cloud, webhook)
    linked = link_agent(cloud, start_agent)
    linked.agent.proc.kill()
    linked.agent.proc.wait(5)
    assert webhook.held.wait(30), "the Cloud did not try to send"
    cloud.stop(signal.SIGKILL)  # the send is in flight, its row claimed
    webhook.release.set()
    again = start_cloud(
        *cloud_args(), data_dir=cloud.data_dir, database_url=cloud.database_url, port=cloud.port
    )
    (d,) = poll(webhook.accepted, 30, "the notification after the restart")
    assert d.json()["event"] == "raised"
    assert len({x.key for x in webhook.deliveries}) == 1  # the same notification
    quiet(2)
    assert len(webhook.accepted()) == 1
    assert [n["state"] for n in notifications(again)] == ["sent"]


SIMULATOR = Path(__file__).resolve().parents[2] / "bench" / "simulator.py"
FLEET = 200


def test_restarting_the_cloud_under_200_simulated_nodes_sends_nothing(
    start_cloud: Callable[..., Cloud], webhook: WebhookReceiver
) -> None:
    cloud = start_cloud(*cloud_args())
    grace = 30.0  # the fleet's backoff while the Cloud is down, on a loaded 2-core machine
    setup_alerts(cloud, webhook, grace=grace)
    assert cloud.ca_file
    fleet = subprocess.Popen(
        [
            sys.executable,
            str(SIMULATOR),
            *("--url", cloud.url, "--ca", cloud.ca_file, "--token", cloud.claim_token),
            *("--rooms", cloud.room_ids[-1], "-n", str(FLEET)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )
    nodes_url = f"/api/v1/spaces/{cloud.space_id}/nodes"

    def live(c: Cloud) -> bool:
        return sum(n["state"] == "live" for n in c.api("GET", nodes_url).json()) == FLEET

    try:
        poll(lambda: live(cloud), 180, f"{FLEET} simulated nodes live")
        cloud.stop(signal.SIGTERM)
        again = start_cloud(
            *cloud_args(), data_dir=cloud.data_dir, database_url=cloud.database_url, port=cloud.port
        )
        poll(lambda: live(again), 120, f"{FLEET} nodes live again after the restart")
        quiet(grace + 3)
        assert webhook.deliveries == []
    finally:
        if fleet.stdin:
            fleet.stdin.close()  # end of input: the simulator exits, every link drops
        fleet.wait(30)
    # The same fleet really gone is reported: one notification per node.
    got = poll(
        lambda: len(webhook.accepted()) >= FLEET and webhook.accepted(), 90, "the fleet's alerts"
    )
    assert len({d.json()["alert"]["node"]["id"] for d in got}) == FLEET
    quiet(2)
    assert len(webhook.accepted()) == FLEET
