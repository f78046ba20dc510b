"""Alerts and notifications: reachability alerts with grace periods and planned
stops (`policy`, `reachability`), the alerts the Space sees (`views`), the
outbox that delivers each notification once (`outbox`, `channels`, `worker`),
and their API and pages (`api`, `web`). See docs/alerts.md."""
