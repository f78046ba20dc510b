"""Two Cloud processes (this machine's PostgreSQL and NATS) each run the alert
worker: a killed agent's notification and its resolution are each delivered
once, whichever process holds the link or claims the row."""

from __future__ import annotations

from collections.abc import Callable

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.alerts import notifications, quiet, setup_alerts
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import link_agent
from tests.fixtures.receivers import WebhookReceiver, webhook
from tests.fixtures.scaleout import pair

__all__ = ["webhook"]


def test_two_cloud_processes_deliver_each_notification_once(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    pg_url: str,
    webhook: WebhookReceiver,
) -> None:
    a, b = pair(start_cloud, pg_url)
    setup_alerts(a, webhook)
    linked = link_agent(a, start_agent)
    linked.agent.proc.kill()
    linked.agent.proc.wait(5)
    poll(webhook.accepted, 20, "the notification")
    quiet(4)  # both workers had several passes over the due watch and the outbox
    assert webhook.events() == ["raised"]
    start_agent(prefix=linked.agent.prefix)
    poll(lambda: webhook.events() == ["raised", "resolved"], 30, "the resolved notification")
    quiet(3)
    assert webhook.events() == ["raised", "resolved"]
    assert len({d.key for d in webhook.deliveries}) == 2
    assert [n["state"] for n in notifications(b)] == ["sent", "sent"]
