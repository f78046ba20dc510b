"""Sending one notification: a generic webhook (JSON, HMAC-SHA256 signature),
a Slack-compatible incoming webhook, or email over SMTP (STARTTLS, login).
The schema is in docs/alerts.md. Every channel gets the idempotency key: the
`Idempotency-Key` header (webhooks), the body's `idempotency_key`, and the
email's `Message-ID` and `Idempotency-Key` headers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import smtplib
import ssl
import time
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx

from tether.cloud.alerts.outbox import SCHEMA, Claimed

KINDS = ("webhook", "slack", "email")
SIGNATURE_HEADER = "X-Tether-Signature"
TIMESTAMP_HEADER = "X-Tether-Timestamp"


def check_config(kind: str, body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A channel's config from the API/UI as (stored config, secret to seal);
    ValueError says what is wrong."""
    if kind == "webhook":
        url = _url(body.get("url"))
        secret = body.get("secret")
        if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
            raise ValueError("secret (the webhook signing key) must be at least 16 characters")
        return {"url": url}, secret
    if kind == "slack":
        url = _url(body.get("url"))
        # The incoming-webhook URL is the credential: sealed, only its host kept.
        return {"host": urlsplit(url).hostname}, url
    if kind == "email":
        host = body.get("host")
        if not isinstance(host, str) or not host.strip():
            raise ValueError('email needs "host", the SMTP server')
        port = body.get("port", 587)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError('"port" must be 1..65535 (587 for STARTTLS)')
        to = body.get("to")
        if isinstance(to, str):
            to = [to]
        if (
            not isinstance(to, list)
            or not to
            or not all(isinstance(t, str) and "@" in t for t in to)
        ):
            raise ValueError('"to" must be a list of email addresses')
        sender = body.get("from")
        if not isinstance(sender, str) or "@" not in sender:
            raise ValueError('"from" must be an email address')
        cfg: dict[str, Any] = {
            "host": host.strip(),
            "port": port,
            "starttls": bool(body.get("starttls", True)),
            "username": str(body.get("username") or ""),
            "from": sender,
            "to": to,
        }
        ca = body.get("ca_pem")
        if ca:
            if not isinstance(ca, str) or "BEGIN CERTIFICATE" not in ca:
                raise ValueError('"ca_pem" must be a PEM certificate (the SMTP server\'s CA)')
            cfg["ca_pem"] = ca
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            raise ValueError('"password" must be a string')
        return cfg, password or None
    raise ValueError(f"kind must be one of {', '.join(KINDS)}")


def _url(value: object) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise ValueError('"url" must be an http:// or https:// URL')
    if not urlsplit(value).hostname:
        raise ValueError('"url" has no host')
    return value


def webhook_body(item: Claimed) -> bytes:
    return json.dumps(
        {"schema": SCHEMA, "idempotency_key": item.key, "event": item.event, "alert": item.body},
        sort_keys=True,
    ).encode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=` + HMAC-SHA256(secret, timestamp + "." + body), hex."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def describe(event: str, body: dict[str, Any]) -> tuple[str, str]:
    """A subject line and text for people (Slack, email)."""
    host = body.get("node", {}).get("hostname", "?")
    space = body.get("space", {}).get("name", "")
    if event == "raised":
        subject = f"[{body.get('severity', 'alert')}] {host} is unreachable ({space})"
        text = f"{body.get('summary', '')}\nOffline since {body.get('offline_at')}."
    elif event == "resolved":
        took = _duration(float(body.get("duration_seconds") or 0))
        subject = f"[resolved] {host} is reachable again after {took} ({space})"
        text = f"{host} was offline from {body.get('offline_at')} to {body.get('resolved_at')}."
    elif event == "summary":
        subject = f"[flapping] {host} ({space})"
        text = str(body.get("summary", ""))
    else:
        subject = f"Tether test notification ({space})"
        text = "This channel works: a test sent from the Cloud's notification settings."
    return subject, text


def _slack(text: str) -> str:
    """Slack's escaping: a node named `<!channel>` must not page everyone."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m}m {s}s" if h else f"{m}m {s}s" if m else f"{s}s"


async def send(item: Claimed, http: httpx.AsyncClient, time_limit: float) -> str | None:
    """Send one notification; None when the receiver took it, else what failed."""
    try:
        if item.channel_kind == "email":
            await asyncio.to_thread(_send_email, item, time_limit)
            return None
        if item.channel_kind == "slack":
            subject, text = describe(item.event, item.body)
            url = item.secret or ""
            body = json.dumps({"text": f"*{_slack(subject)}*\n{_slack(text)}"}).encode()
            headers = {"Content-Type": "application/json", "Idempotency-Key": item.key}
        else:
            url = str(item.channel_config.get("url"))
            body = webhook_body(item)
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": item.key,
                "X-Tether-Event": item.event,
                TIMESTAMP_HEADER: stamp,
            }
            if item.secret:
                headers[SIGNATURE_HEADER] = signature(item.secret, stamp, body)
        r = await http.post(url, content=body, headers=headers, timeout=time_limit)
        if 200 <= r.status_code < 300:
            return None
        return f"the receiver answered HTTP {r.status_code}"
    except (httpx.HTTPError, OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"[:500]


def _send_email(item: Claimed, timeout: float) -> None:
    cfg = item.channel_config
    subject, text = describe(item.event, item.body)
    msg = EmailMessage()
    msg["From"] = cfg["from"]
    msg["To"] = ", ".join(cfg["to"])
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{item.key}@tether>"
    msg["Idempotency-Key"] = item.key
    msg.set_content(text + f"\n\nIdempotency key: {item.key}\n")
    send_smtp(cfg, item.secret, msg, timeout)


def send_smtp(cfg: dict[str, Any], password: str | None, msg: EmailMessage, timeout: float) -> None:
    """Hand `msg` to the SMTP server of an email config (host, port, starttls
    (default on), username, ca_pem); raises what smtplib, ssl or the socket raise."""
    ctx = ssl.create_default_context(cadata=cfg.get("ca_pem") or None)
    with smtplib.SMTP(cfg["host"], int(cfg["port"]), timeout=timeout) as smtp:
        smtp.ehlo()
        if cfg.get("starttls", True):
            smtp.starttls(context=ctx)
            smtp.ehlo()
        if cfg.get("username"):
            smtp.login(cfg["username"], password or "")
        smtp.send_message(msg)
