"""Decoding one untrusted MessagePack frame, with no I/O: the one bounded
decode the link (`frames.decode`) and the stream (`stream.decode_body`) share.

The decoder's types bound every string and list; this adds the rest of the
rule: a frame nested too deep, malformed or of another version is refused
with a reason, as the caller's own error type, and never raises anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import msgspec


class _Versioned(Protocol):
    @property
    def v(self) -> int: ...


F = TypeVar("F", bound=_Versioned)


def decode_versioned(
    decoder: msgspec.msgpack.Decoder[F],
    data: bytes,
    *,
    version: int,
    speaks: str,
    error: Callable[[str], Exception],
    explain: Callable[[bytes, Exception], str],
) -> F:
    """The frame in `data`, else `error(reason)` raised: nested too deep,
    malformed (`explain` says how), or not of `version` (of the `speaks`
    protocol, as the reason names it)."""
    try:
        frame = decoder.decode(data)
    except RecursionError:  # msgspec recurses per level, also to skip an unknown field
        raise error("malformed frame: values nest too deep") from None
    except (msgspec.MsgspecError, ValueError) as exc:  # bad UTF-8 raises ValueError
        raise error(explain(data, exc)) from None
    if frame.v != version:
        raise error(f"unsupported {speaks} version {frame.v} (this side speaks {version})")
    return frame
