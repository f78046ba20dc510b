"""A minimal asyncio HTTP/1.1 keep-alive client for the benchmarks.

design.md measured httpx's pool as slow under concurrency, so the load
generators use this instead: one connection, one request at a time, bodies by
Content-Length or chunked. Enough for the Cloud's JSON API and the agent's
local API; not a general client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the peer sent something this client cannot read."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpConnection:
    """One keep-alive connection to `base_url` (http or https)."""

    def __init__(
        self, base_url: str, ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0
    ) -> None:
        u = urlsplit(base_url)
        self.secure = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.secure else 80)
        self.host_header = u.netloc
        self.ssl_context = ssl_context if self.secure else None
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl_context, limit=1 << 22),
            self.timeout,
        )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        if self._writer is None:
            await self.connect()
        try:
            return await asyncio.wait_for(
                self._exchange(method, path, body, headers or {}), self.timeout
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            await self.close()
            raise HttpError(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    async def _exchange(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> Reply:
        assert self._reader is not None and self._writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        got: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                k, _, v = line.partition(":")
                got[k.strip().lower()] = v.strip()
        if got.get("transfer-encoding", "").lower() == "chunked":
            data = await self._read_chunked()
        else:
            data = await self._reader.readexactly(int(got.get("content-length", "0")))
        if got.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, got, data)

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)
