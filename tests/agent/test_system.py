"""Startup checks that do not need a running agent."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tether.agent import system
from tether.agent.access import AccessList


def test_state_dir_on_tmpfs_or_overlay_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "overlay / overlay rw 0 0\n/dev/vdb /data ext4 rw 0 0\ntmpfs /data/tmp tmpfs rw 0 0\n"
    )
    assert system.mount_of(Path("/var/lib/tether"), str(mounts)) == ("/", "overlay")
    assert system.mount_of(Path("/data/var/lib/tether"), str(mounts)) == ("/data", "ext4")
    assert system.mount_of(Path("/data/tmp/x"), str(mounts)) == ("/data/tmp", "tmpfs")
    # The real host: whatever /proc/mounts says, the check answers without error.
    with caplog.at_level(logging.WARNING, logger="tether.agent"):
        msg = system.warn_if_volatile(tmp_path)
    if msg is not None:
        assert "persistent volume" in msg and str(tmp_path) in msg


@pytest.mark.parametrize(
    ("spec", "ip", "allowed"),
    [
        ("*", "203.0.113.9", True),
        ("localhost", "127.0.0.1", True),
        ("localhost", "::1", True),
        ("localhost", "10.0.0.1", False),
        ("10.* 192.168.*", "192.168.1.20", True),
        ("10.* 192.168.*", "::ffff:10.1.2.3", True),
        ("10.* 192.168.*", "172.16.0.1", False),
        ("!10.0.0.5 10.*", "10.0.0.5", False),
        ("!10.0.0.5 10.*", "10.0.0.6", True),
    ],
)
def test_allow_connections_from_patterns(spec: str, ip: str, allowed: bool) -> None:
    assert AccessList(spec).allows(ip) is allowed
