"""Emailing an invite link, when the Space has an email notification channel.

The Cloud has no mail settings of its own: a Space admin who configured an
email channel for alerts (docs/alerts.md) has told it an SMTP server, a
sender and a login, so Manage Space offers to send the invite link through
the first enabled one. Without one the admin passes the link on by hand.
Sent after the invitation is committed, outside any transaction (a slow
SMTP server holds no lock); a failure is shown to the admin, who still has
the link on the page. The link is never logged: only the invitation's prefix.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.cloud.alerts.channels import send_smtp
from tether.cloud.models import NotificationChannel
from tether.cloud.secrets import SecretBox

log = logging.getLogger("tether.cloud.spaces")
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Smtp:
    """An email channel's server, as its config and sealed password say."""

    channel_name: str
    config: dict[str, Any]
    password: str | None


def smtp_of(s: Session, box: SecretBox, space_id: str) -> Smtp | None:
    """The Space's first enabled email channel, or None."""
    ch = s.scalar(
        select(NotificationChannel)
        .where(
            NotificationChannel.space_id == space_id,
            NotificationChannel.kind == "email",
            NotificationChannel.enabled.is_(True),
        )
        .order_by(NotificationChannel.created_at)
        .limit(1)
    )
    if ch is None:
        return None
    password = box.open(ch.secret_sealed) if ch.secret_sealed else None
    return Smtp(ch.name, json.loads(ch.config), password)


def send(
    smtp: Smtp,
    prefix: str,
    to: str,
    space_name: str,
    inviter: str,
    role: str,
    link: str,
    expires_at: str,
) -> str | None:
    """Send invitation `prefix` to `to`; None when the server took it, else why not."""
    cfg = smtp.config
    msg = EmailMessage()
    msg["From"] = cfg["from"]
    msg["To"] = to
    msg["Subject"] = f"{inviter} invited you to {space_name} on Tether"
    msg.set_content(
        f"{inviter} invited you to the Space {space_name} as a {role}.\n\n"
        f"Open this link to join (it works once, until {expires_at}):\n\n{link}\n\n"
        "Without an account on this Cloud you choose your name and password there.\n"
        "If you did not expect this, ignore this email.\n"
    )
    try:
        send_smtp(cfg, smtp.password, msg, TIMEOUT_SECONDS)
    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        why = f"{type(exc).__name__}: {exc}"[:300]
        log.warning("invitation %s could not be emailed through %s: %s", prefix, cfg["host"], why)
        return why
    log.info("invitation %s emailed to %s through %s", prefix, to, cfg["host"])
    return None
