"""Node metadata: the one rule for what a node may call itself.

A node names itself twice: in the claim (`hostname`, `mGUID`) and on every
link (Hello, node_update: hostname, os, agent_version, machine ids; alerts:
their names and statuses). Both paths use this module. Text may hold any
printable character (a Unicode hostname is fine) but none of:

- control characters: C0 (NUL, BEL, ESC of ANSI escapes, newline, tab ...),
  DEL and C1 (Unicode category Cc);
- format characters (Cf): bidi embeddings, overrides and isolates
  (U+202A-202E, U+2066-2069), marks (U+200E/F, U+061C), zero-width ones;
- line and paragraph separators (U+2028, U+2029) and lone surrogates.

They can forge log lines, recolour a terminal or make a name read backwards in
the UI. The claim refuses such a hostname (400 `ErrInvalidNodeName`: a human
runs the claim and can fix it). The link never refuses a node for its
metadata (that would keep it offline for a cosmetic fault): `clean` replaces
each bad character with U+FFFD and cuts the text to its column's length.

`for_log` escapes what a log line prints of a peer's text.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Final

import msgspec

from tether.protocol.frames import ChartsSummary, Hello, NodeUpdate

MAX_HOSTNAME: Final = 255
MAX_OS: Final = 200
MAX_AGENT_VERSION: Final = 64
MAX_ID: Final = 64  # machine_guid, machine_id, boot_id
MAX_ALERT_NAME: Final = 200  # alert name and chart
MAX_ALERT_STATUS: Final = 40
MAX_LIST: Final = 200  # collectors, capabilities
MAX_WORD: Final = 64  # one collector or capability
REPLACEMENT: Final = "\ufffd"

_BAD_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def is_bad(c: str) -> bool:
    """A character no node metadata may hold."""
    if " " <= c <= "~":  # printable ASCII: the common case, decided without a lookup
        return False
    return unicodedata.category(c) in _BAD_CATEGORIES


def problem(text: object, max_len: int, required: bool = True) -> str | None:
    """Why `text` is not acceptable metadata (for a claim to refuse), or None."""
    if not isinstance(text, str):
        return "is not a string"
    if required and not text.strip():
        return "is empty"
    if len(text) > max_len:
        return f"is longer than {max_len} characters"
    bad = next((c for c in text if is_bad(c)), None)
    if bad is not None:
        return f"contains the control or formatting character U+{ord(bad):04X}"
    return None


def clean(text: str, max_len: int) -> str:
    """`text` with each bad character replaced by U+FFFD, stripped, cut to `max_len`."""
    text = text[: max_len * 2]  # bound the work before looking at characters
    if any(is_bad(c) for c in text):
        text = "".join(REPLACEMENT if is_bad(c) else c for c in text)
    return text.strip()[:max_len]


def clean_hello(h: Hello) -> Hello:
    """The Hello with every text field cleaned and lists bounded."""
    return msgspec.structs.replace(
        h,
        hostname=clean(h.hostname, MAX_HOSTNAME),
        os=clean(h.os, MAX_OS),
        agent_version=clean(h.agent_version, MAX_AGENT_VERSION),
        machine_guid=clean(h.machine_guid, MAX_ID),
        machine_id=clean(h.machine_id, MAX_ID),
        boot_id=clean(h.boot_id, MAX_ID),
        charts=_clean_charts(h.charts),
        capabilities=[clean(c, MAX_WORD) for c in h.capabilities[:MAX_LIST]],
    )


def clean_update(u: NodeUpdate) -> NodeUpdate:
    """The NodeUpdate with every text field cleaned (absent stays absent)."""
    return msgspec.structs.replace(
        u,
        hostname=None if u.hostname is None else clean(u.hostname, MAX_HOSTNAME),
        os=None if u.os is None else clean(u.os, MAX_OS),
        agent_version=(
            None if u.agent_version is None else clean(u.agent_version, MAX_AGENT_VERSION)
        ),
        charts=None if u.charts is None else _clean_charts(u.charts),
    )


def _clean_charts(c: ChartsSummary) -> ChartsSummary:
    return ChartsSummary(
        charts=c.charts,
        dimensions=c.dimensions,
        collectors=[clean(x, MAX_WORD) for x in c.collectors[:MAX_LIST]],
    )


def clean_seconds(value: float | None, high: float = 86_400.0) -> float | None:
    """A peer's duration, or None when it is not a finite number in [0, high]:
    NaN or infinity would be stored as JSON no parser accepts."""
    if value is None or not math.isfinite(value) or not 0 <= value <= high:
        return None
    return value


def clean_time(value: float) -> float | None:
    """A peer's Unix time, or None when it is not finite or not in 1970..3000."""
    if not math.isfinite(value) or not 0 <= value < 32_503_680_000:
        return None
    return value


def for_log(text: object, max_len: int = 200) -> str:
    """A peer's text made safe to print in one log line: bad characters are
    shown as escapes (\\n, \\x1b, \\u202e), long text is cut with a note."""
    s = text if isinstance(text, str) else repr(text)
    cut = len(s) > max_len
    s = s[:max_len]
    if any(is_bad(c) or c == "\\" for c in s):
        s = "".join(
            c.encode("unicode_escape").decode("ascii") if is_bad(c) or c == "\\" else c for c in s
        )
    return s + ("...(cut)" if cut else "")
