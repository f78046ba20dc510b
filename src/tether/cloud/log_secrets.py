"""Secrets stay out of the Cloud's log, at every level, `-v` included.

Tether's own lines name a token by its public prefix, never the token
(tether.cloud.secrets). Libraries say more at debug level: websockets logs
every handshake header (`Authorization: Bearer <link token>`, `Cookie`) and
every frame (relayed answers carry metric values), SQLAlchemy every statement
with its parameters and rows (CSRF tokens, hashes). So `keep_secrets_out`:

- keeps those loggers at INFO/WARNING even when the root logs DEBUG;
- adds a filter to the handlers that rewrites, in any line that still gets
  through (the access log's query strings, a library's message), bearer
  tokens, `Authorization`/`Cookie` header values, the session cookie, Tether
  tokens (the prefix stays: it is what the docs tell people to quote) and the
  password of a URL (`socks5://user:pass@host`).
"""

from __future__ import annotations

import logging
import re

# Loggers that print credentials or metric values at DEBUG (and SQL at INFO).
QUIET = {
    "websockets": logging.INFO,
    "uvicorn.error": logging.INFO,  # uvicorn hands this logger to websockets
    "sqlalchemy": logging.WARNING,
}

REDACTED = "[redacted]"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # A header line as websockets prints it ("< Authorization: Bearer ...").
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-csrf-token)(\s*[:=]\s*)[^\r\n]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    (re.compile(r"\b(tether_session=)[^;\s&]+"), rf"\1{REDACTED}"),
    (re.compile(r"\b((?:t[a-z]t|tin)_[a-z0-9]{8}_)[A-Za-z0-9_-]{20,}"), rf"\1{REDACTED}"),
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@"), rf"\1{REDACTED}@"),
    # The same URL percent-encoded in a query string (the access log).
    (re.compile(r"(?i)(%3A%2F%2F[^\s&/]*?%3A)[^\s&/]*?%40"), rf"\1{REDACTED}%40"),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message when it contains something secret-looking."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def keep_secrets_out(root: logging.Logger | None = None) -> None:
    """Call once after the handlers are set up (`logging.basicConfig`)."""
    root = root or logging.getLogger()
    for name, level in QUIET.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    for handler in root.handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
