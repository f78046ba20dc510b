"""The one rule for node metadata (tether.cloud.node_metadata), in-process."""

from __future__ import annotations

import math

import pytest

from tether.cloud import node_metadata as meta
from tether.protocol.frames import ChartsSummary, Hello, NodeUpdate

HOSTILE = [
    "evil\nINFO forged log line",
    "red\x1b[31mhost",
    "nul\x00host",
    "bell\x07host",
    "\u202egnp.exe",
    "iso\u2066late",
    "c1\x85nel",
    "del\x7f",
    "tab\there",
    "line\u2028sep",
    "zero\u200bwidth",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_control_escape_and_bidi_characters_are_refused_or_replaced(text: str) -> None:
    assert meta.problem(text, 255) is not None
    cleaned = meta.clean(text, 255)
    assert not any(meta.is_bad(c) for c in cleaned)
    assert meta.REPLACEMENT in cleaned
    logged = meta.for_log(text)
    assert not any(meta.is_bad(c) for c in logged)
    assert "\\" in logged  # shown as an escape, so the log says what was sent


def test_printable_unicode_is_fine_and_lengths_are_bounded() -> None:
    for ok in ("web-01.example.org", "café-münchen", "节点一", "host with spaces"):
        assert meta.problem(ok, 255) is None
        assert meta.clean(ok, 255) == ok
        assert meta.for_log(ok) == ok
    assert meta.problem("x" * 256, 255) == "is longer than 255 characters"
    assert meta.problem("   ", 255) == "is empty"
    assert meta.problem(None, 255) == "is not a string"
    assert meta.clean("x" * 10_000, 255) == "x" * 255
    assert meta.for_log("y" * 500, 10) == "y" * 10 + "...(cut)"
    assert meta.for_log("a\\nb") == "a\\\\nb"  # a literal backslash cannot fake an escape


def test_hello_and_node_update_are_cleaned_field_by_field() -> None:
    hello = Hello(
        agent_version="1.0\x1b[2J",
        hostname="web\n01",
        os="Linux\x00",
        machine_guid="g\u202e",
        machine_id="m\x07",
        boot_id="b" * 100,
        charts=ChartsSummary(collectors=["cpu\x1b", *(["x"] * 500)]),
        capabilities=["query\n"],
    )
    h = meta.clean_hello(hello)
    assert h.hostname == "web\ufffd01"
    assert h.agent_version == "1.0\ufffd[2J"
    assert h.os == "Linux\ufffd" and h.machine_guid == "g\ufffd" and h.machine_id == "m\ufffd"
    assert h.boot_id == "b" * meta.MAX_ID
    assert h.charts.collectors[0] == "cpu\ufffd" and len(h.charts.collectors) == meta.MAX_LIST
    assert h.capabilities == ["query\ufffd"]
    u = meta.clean_update(NodeUpdate(hostname="a\x1bb"))
    assert u.hostname == "a\ufffdb" and u.os is None and u.agent_version is None


def test_peer_numbers_that_json_cannot_hold_are_dropped() -> None:
    assert meta.clean_seconds(math.nan) is None
    assert meta.clean_seconds(math.inf) is None
    assert meta.clean_seconds(-1) is None
    assert meta.clean_seconds(30.0) == 30.0
    assert meta.clean_time(math.nan) is None
    assert meta.clean_time(1e300) is None
    assert meta.clean_time(1_700_000_000.0) == 1_700_000_000.0
