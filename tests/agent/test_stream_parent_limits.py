"""The parent's defences and identity rules over real sockets, with the
parent in-process so its clock is the test's (tests/fixtures/clock.py):
a guessing address is refused until its failures age out; a cloned machine
(same GUID, another hostname) is kept beside the original, flagged; the same
machine reconnecting replaces its older connection; sample times the child
cannot have are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.fixtures.clock import FakeClock
from tests.fixtures.common import free_port
from tether.agent.stream_parent import FAILED_HELLOS, FAILURE_WINDOW, StreamParent
from tether.node.config import load_config
from tether.protocol import stream as sp

KEY = "the-right-key-0123456789"


class Peer:
    """A hand-driven child on a real TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = sp.StreamConnection(sp.Role.CHILD)

    @classmethod
    async def hello(
        cls, port: int, key: str = KEY, guid: str = "g-1", host: str = "h-1", boot: str = "b-1"
    ) -> tuple[Peer, sp.Frame | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        writer.write(
            peer.conn.send(sp.Hello(api_key=key, machine_guid=guid, hostname=host, boot_id=boot))
        )
        return peer, await peer.next_frame()

    async def next_frame(self) -> sp.Frame | None:
        """The parent's next frame; None when it closed (or faulted)."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 20)
            if not data:
                return None
            for ev in self.conn.receive_data(data):
                return ev.frame if isinstance(ev, sp.FrameReceived) else None

    async def closed_by_parent(self) -> bool:
        return await asyncio.wait_for(self.reader.read(65536), 20) == b""

    def send(self, frame: sp.Frame) -> None:
        self.writer.write(self.conn.send(frame))

    def close(self) -> None:
        self.writer.close()


def run(tmp_path: Path, body: Callable[[StreamParent, int, FakeClock], Awaitable[None]]) -> None:
    port = free_port()
    conf = tmp_path / "tether.conf"
    conf.write_text(
        f"[stream]\n enabled = yes\n api keys = other-key {KEY}\n"
        f" bind = 127.0.0.1:{port}\n tls = no\n"
    )
    clock = FakeClock()

    async def main() -> None:
        parent = StreamParent(load_config(conf), lambda: "parent", 600, clock=clock)
        await parent.start()
        try:
            await body(parent, port, clock)
        finally:
            await parent.stop()

    asyncio.run(main())


async def until(check: Callable[[], bool]) -> None:
    """Wait for the parent's task to get there (it runs in this loop)."""
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the parent did not get there")


def test_an_address_guessing_keys_is_refused_until_its_failures_age_out(tmp_path: Path) -> None:
    async def body(parent: StreamParent, port: int, clock: FakeClock) -> None:
        for _ in range(FAILED_HELLOS):
            peer, answer = await Peer.hello(port, key="guess")
            assert isinstance(answer, sp.Refused) and answer.code == "bad_api_key"
            peer.close()
        # Now even the right key is refused from this address ...
        peer, answer = await Peer.hello(port)
        assert isinstance(answer, sp.Refused) and answer.code == "rate_limited"
        assert answer.retry_after_seconds >= FAILURE_WINDOW
        peer.close()
        assert parent.children == {}
        # ... until the failures are older than the window.
        clock.now += FAILURE_WINDOW + 1
        peer, answer = await Peer.hello(port)
        assert isinstance(answer, sp.Welcome)
        peer.close()

    run(tmp_path, body)


def test_a_clone_is_kept_beside_the_original_and_flagged(tmp_path: Path) -> None:
    async def body(parent: StreamParent, port: int, clock: FakeClock) -> None:
        first, a1 = await Peer.hello(port, guid="same-guid", host="web-1")
        clone, a2 = await Peer.hello(port, guid="same-guid", host="web-2")
        assert isinstance(a1, sp.Welcome) and isinstance(a2, sp.Welcome)
        await until(lambda: len(parent.children) == 2)
        original, copy = parent.children["same-guid"], parent.children["same-guid~web-2"]
        assert original.connected and copy.connected
        assert original.clone_of is None and copy.clone_of == "same-guid"
        assert parent.lookup("web-2") is copy and parent.lookup("same-guid") is original
        # Their data stays apart.
        for peer, value in ((first, 1.0), (clone, 2.0)):
            peer.send(sp.ChartDef(id="c", dimensions=[("d", "d")]))
            peer.send(sp.Samples(at=990, values={"c": [value]}))
        await until(lambda: all("c" in ch.store.charts for ch in (original, copy)))
        await until(lambda: original.store.charts["c"].last_t == copy.store.charts["c"].last_t)
        assert original.store.charts["c"].dimensions[0].last_value == 1.0
        assert copy.store.charts["c"].dimensions[0].last_value == 2.0
        first.close()
        clone.close()

    run(tmp_path, body)


def test_the_same_machine_reconnecting_replaces_its_older_connection(tmp_path: Path) -> None:
    async def body(parent: StreamParent, port: int, clock: FakeClock) -> None:
        old, _ = await Peer.hello(port, guid="g", host="web", boot="boot-1")
        await until(lambda: "g" in parent.children and parent.children["g"].connected)
        new, answer = await Peer.hello(port, guid="g", host="web", boot="boot-2")
        assert isinstance(answer, sp.Welcome)
        assert await old.closed_by_parent()
        child = parent.children["g"]
        await until(lambda: child.connections == 2)
        assert list(parent.children) == ["g"] and child.connected and child.boot_id == "boot-2"
        new.close()
        await until(lambda: not child.connected)

    run(tmp_path, body)


def test_sample_times_the_child_cannot_have_are_refused(tmp_path: Path) -> None:
    async def body(parent: StreamParent, port: int, clock: FakeClock) -> None:
        for at, why in ((2**39, "in the future"), (1001, None)):
            peer, _ = await Peer.hello(port, guid=f"g{at}", host=f"h{at}")
            peer.send(sp.ChartDef(id="c", dimensions=[("d", "d")]))
            peer.send(sp.Samples(at=at, values={"c": [1.0]}))
            if why:
                assert await peer.closed_by_parent()
                assert why in parent.children[f"g{at}"].last_error
            else:
                await until(lambda a=at: parent.children[f"g{a}"].samples == 1)  # type: ignore[misc]
            peer.close()

    run(tmp_path, body)
