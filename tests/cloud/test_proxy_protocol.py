"""The PROXY protocol parser (tether.cloud.proxy_protocol), property-tested:
every header it writes it reads back, whatever is cut off it asks for more or
refuses, random bytes only ever give a header or ProxyHeaderError, and the
trust policy refuses a header from an untrusted peer."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.cloud import proxy_protocol as pp
from tether.cloud.proxy_listener import ProxyPolicy, decide, parse_networks

ports = st.integers(min_value=0, max_value=65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
pairs = st.one_of(
    st.tuples(st.tuples(v4, ports), st.tuples(v4, ports)),
    st.tuples(st.tuples(v6, ports), st.tuples(v6, ports)),
)


def read(data: bytes) -> tuple[pp.ProxyHeader, int]:
    """What the listener does: decide, measure, parse."""
    assert pp.begins_header(data[: pp.DECIDE_BYTES]) is True
    length = pp.header_length(data)
    assert length is not None and length <= len(data)
    return pp.parse(data[:length]), length


@given(addresses=pairs, tail=st.binary(max_size=64))
def test_v1_and_v2_read_back_what_was_written_and_leave_the_rest(
    addresses: tuple[tuple[str, int], tuple[str, int]], tail: bytes
) -> None:
    src, dst = addresses
    for version, raw in ((1, pp.v1_header(src, dst)), (2, pp.v2_header(src, dst))):
        header, length = read(raw + b"\x16\x03\x01" + tail)  # a TLS ClientHello follows
        assert length == len(raw)
        assert header == pp.ProxyHeader(version, src, dst)


@given(addresses=pairs)
def test_a_header_cut_short_asks_for_more_never_misreads(
    addresses: tuple[tuple[str, int], tuple[str, int]],
) -> None:
    src, dst = addresses
    for raw in (pp.v1_header(src, dst), pp.v2_header(src, dst)):
        for cut in range(len(raw)):
            part = raw[:cut]
            begins = pp.begins_header(part[: pp.DECIDE_BYTES])
            assert begins in (None, True)
            if begins:  # not enough yet: more is asked for, or the length is beyond
                length = pp.header_length(part)
                assert length is None or length > len(part)


@given(data=st.binary(max_size=300))
def test_random_bytes_give_a_header_or_a_clear_refusal(data: bytes) -> None:
    begins = pp.begins_header(data[: pp.DECIDE_BYTES])
    if not begins:
        return
    try:
        length = pp.header_length(data)
        if length is not None and length <= len(data):
            header = pp.parse(data[:length])
            for address in (header.source, header.destination):
                if address is not None:
                    ipaddress.ip_address(address[0])
                    assert 0 <= address[1] <= 65535
    except pp.ProxyHeaderError as exc:
        assert str(exc)


@given(
    prefix=st.sampled_from([pp.V1_PREFIX, pp.V2_SIGNATURE + b"\x21\x11"]),
    data=st.binary(max_size=200),
)
def test_random_bytes_after_a_signature_never_raise_anything_else(
    prefix: bytes, data: bytes
) -> None:
    raw = prefix + data
    try:
        length = pp.header_length(raw)
        if length is not None and length <= len(raw):
            pp.parse(raw[:length])
    except pp.ProxyHeaderError:
        pass


@given(first=st.integers(min_value=0, max_value=255).filter(lambda b: b not in b"P\r"))
def test_tls_and_http_are_not_headers(first: int) -> None:
    assert pp.begins_header(bytes([first]) + b"\x03\x01\x02\x00") is False


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",  # a port missing
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 65536\r\n",  # port out of range
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n",  # leading zero
        b"PROXY TCP4 ::1 5.6.7.8 80 443\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 ::1 80 443\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 80 443\r\n",  # double space
        b"PROXY UDP4 1.2.3.4 5.6.7.8 80 443\r\n",
        b"PROXY TCP4 999.2.3.4 5.6.7.8 80 443\r\n",
    ],
)
def test_malformed_v1_lines_are_refused(line: bytes) -> None:
    length = pp.header_length(line)
    assert length == len(line)
    with pytest.raises(pp.ProxyHeaderError):
        pp.parse(line)


def test_v1_limits_and_local_forms() -> None:
    with pytest.raises(pp.ProxyHeaderError):
        pp.header_length(b"PROXY " + b"1" * 120)  # no CRLF within 107 bytes
    with pytest.raises(pp.ProxyHeaderError):
        pp.header_length(b"PROXY TCP4 1.2.3.4\n")  # bare LF
    assert pp.parse(b"PROXY UNKNOWN\r\n") == pp.ProxyHeader(1, None, None)
    assert pp.parse(pp.v2_header(None, None)) == pp.ProxyHeader(2, None, None)


def test_malformed_v2_headers_are_refused() -> None:
    good = pp.v2_header(("192.0.2.1", 5000), ("192.0.2.2", 443))
    with pytest.raises(pp.ProxyHeaderError, match="version"):
        pp.parse(good[:12] + b"\x11" + good[13:])
    with pytest.raises(pp.ProxyHeaderError, match="command"):
        pp.parse(good[:12] + b"\x22" + good[13:])
    with pytest.raises(pp.ProxyHeaderError, match="family"):
        pp.parse(good[:13] + b"\x41" + good[14:])
    short = good[:14] + (4).to_bytes(2, "big") + good[16:20]  # INET needs 12 bytes
    with pytest.raises(pp.ProxyHeaderError, match="need 12"):
        pp.parse(short)
    with pytest.raises(pp.ProxyHeaderError, match="at most"):
        pp.header_length(good[:14] + (60000).to_bytes(2, "big"))


def test_who_may_send_a_header() -> None:
    policy = ProxyPolicy(parse_networks(["127.0.0.1", "10.0.0.0/8", "fd00::/8"]))
    assert decide(policy, "10.1.2.3", has_header=True) is None
    assert decide(policy, "::ffff:127.0.0.1", has_header=True) is None  # dual-stack form
    assert decide(policy, "fd00::5", has_header=True) is None
    # The attack: anyone else claiming an address is refused.
    refusal = decide(policy, "192.0.2.66", has_header=True)
    assert refusal is not None and "not a trusted proxy" in refusal
    assert decide(policy, "192.0.2.66", has_header=False) is None
    assert decide(policy, "10.1.2.3", has_header=False) is None  # not required
    required = ProxyPolicy(policy.trusted, required=True)
    refusal = decide(required, "10.1.2.3", has_header=False)
    assert refusal is not None and "--require-proxy-header" in refusal
    with pytest.raises(ValueError, match="--trusted-proxy"):
        parse_networks(["balancer.example"])
