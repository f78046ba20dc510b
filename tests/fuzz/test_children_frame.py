"""Property test of the `children` frame's decoder: children lists whose
entries mix the real field names with any values decode to a frame or to the
decoder's documented error, never another exception (tests/fuzz/test_parsers.py
covers the envelope and every frame's top-level fields)."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures.fuzz import FUZZ, decodes_or_refuses, msgpack_values
from tether.protocol.frames import ChildrenUpdate, ChildState, decode

CHILD_FIELDS = sorted(ChildState.__struct_fields__)
good = {
    "id": st.text(min_size=1, max_size=20),
    "machine_guid": st.text(max_size=20),
    "state": st.sampled_from(["live", "offline", "removed"]) | st.text(max_size=20),
}


@st.composite
def child_shaped(draw: st.DrawFn) -> Any:
    out: dict[str, Any] = {k: draw(v) for k, v in good.items() if draw(st.booleans())}
    for name in draw(st.lists(st.sampled_from(CHILD_FIELDS), max_size=6)):
        out[name] = draw(msgpack_values | st.text(max_size=500))
    return draw(st.just(out) | msgpack_values)


@FUZZ
@given(st.lists(child_shaped(), max_size=6), msgpack_values)
def test_any_children_list_decodes_or_is_refused(children: list[Any], full: Any) -> None:
    frame = {"t": "children", "v": 1, "children": children}
    if full is not None:
        frame["full"] = full
    decodes_or_refuses(msgspec.msgpack.encode(frame))


def test_the_children_decoder_accepts_a_good_frame() -> None:
    """The property above cannot pass by refusing everything."""
    data = msgspec.msgpack.encode(
        {"t": "children", "v": 1, "children": [{"id": "a", "machine_guid": "a", "state": "live"}]}
    )
    assert isinstance(decode(data), ChildrenUpdate)
