"""Node label rules shared by the agent and the Cloud (no I/O).

A label is `key = value`: the key 1 to MAX_KEY letters, digits or `_ . : / -`
(starting with a letter, digit or `_`), the value up to MAX_VALUE printable
characters (no control, format or separator characters: the rule of
tether.cloud.node_metadata), at most MAX_LABELS per source. The agent checks
its `[host labels]` with `problem` and sends only good ones; the Cloud, which
never refuses a link for its metadata, drops what still breaks the rule
(`clean`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Final

MAX_LABELS: Final = 100
MAX_KEY: Final = 64
MAX_VALUE: Final = 200
KEY: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,63}")
_BAD_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def problem(key: object, value: object) -> str | None:
    """Why `key = value` is not a valid label, or None."""
    if not isinstance(key, str) or not KEY.fullmatch(key):
        return (
            f"the key {str(key)[:80]!r} is not 1 to {MAX_KEY} letters, digits or _ . : / - "
            "(starting with a letter, digit or _)"
        )
    if not isinstance(value, str):
        return f"the value of {key!r} is not text"
    if len(value) > MAX_VALUE:
        return f"the value of {key!r} is longer than {MAX_VALUE} characters"
    bad = next((c for c in value if unicodedata.category(c) in _BAD_CATEGORIES), None)
    if bad is not None:
        return f"the value of {key!r} contains the control or formatting character U+{ord(bad):04X}"
    return None


def clean(labels: Mapping[str, object]) -> dict[str, str]:
    """The valid labels of `labels` (values stripped), at most MAX_LABELS
    (the first in key order); invalid ones are dropped."""
    out: dict[str, str] = {}
    for key in sorted(k for k in labels if isinstance(k, str))[: MAX_LABELS * 2]:
        value = labels[key]
        if problem(key, value) is None and isinstance(value, str):
            out[key] = value.strip()
        if len(out) == MAX_LABELS:
            break
    return out
