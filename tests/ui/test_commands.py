"""The Connect Nodes commands, per environment (no server needed)."""

from __future__ import annotations

import shlex

import pytest

from tether.claim.cli import parse_args
from tether.cloud.web import commands
from tether.cloud.web.commands import CloudCa

URL = "https://cloud.example.com:19443"
TOKEN = "tct_abcdefgh_" + "x" * 43
ROOMS = ["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"]
CA = CloudCa(URL + "/ca.pem", "AB:CD:EF")


def test_linux_kickstart_and_direct_form_match_the_reference() -> None:
    out = commands.build("linux", URL, TOKEN, ROOMS, None)
    kick = out.steps[0].text
    assert kick == (
        f"bash <(curl -Ss {URL}/kickstart.sh) --claim-token {TOKEN} "
        f"--claim-rooms {','.join(ROOMS)} --claim-url {URL}"
    )
    assert out.direct == f"tether-claim -token={TOKEN} -rooms={','.join(ROOMS)} -url={URL}"
    # The direct form is what tether-claim itself parses.
    parsed = parse_args(shlex.split(out.direct)[1:])
    assert parsed.options.token == TOKEN and parsed.options.url == URL
    assert parsed.options.rooms == ROOMS
    assert not any("cacert" in s.text or "ca.pem" in s.text for s in out.steps)


def test_private_ca_adds_the_download_fingerprint_and_fullchain_steps() -> None:
    out = commands.build("linux", URL, TOKEN, ROOMS, CA)
    first = out.steps[0].text
    assert f"{URL}/ca.pem" in first and "SHA256 Fingerprint=AB:CD:EF" in first
    assert "/var/lib/tether/cloud.d/cloud_fullchain.pem" in first
    assert "curl -Ss --cacert tether-ca.pem" in out.steps[1].text


def test_no_rooms_leaves_the_rooms_flag_out() -> None:
    out = commands.build("linux", URL, TOKEN, [], None)
    assert "--claim-rooms" not in out.steps[0].text and "-rooms" not in str(out.direct)


@pytest.mark.parametrize("env", list(commands.ENVIRONMENTS))
def test_every_environment_carries_url_token_rooms(env: str) -> None:
    out = commands.build(env, URL, TOKEN, ROOMS, CA)
    text = "\n".join(s.text for s in out.steps)
    assert TOKEN in text and URL in text and ",".join(ROOMS) in text
    assert "cloud_fullchain.pem" in text and "AB:CD:EF" in text


def test_docker_forms() -> None:
    run = "\n".join(s.text for s in commands.build("docker-run", URL, TOKEN, ROOMS, None).steps)
    for needle in (
        f"-e TETHER_CLAIM_TOKEN={TOKEN}",
        f"-e TETHER_CLAIM_URL={URL}",
        "-e TETHER_CLAIM_ROOMS=",
        "tetherlib:/var/lib/tether",
    ):
        assert needle in run
    compose = commands.build("docker-compose", URL, TOKEN, ROOMS, None)
    assert "services:" in compose.steps[0].text and compose.steps[1].text == "docker compose up -d"
    exec_ = commands.build("docker-exec", URL, TOKEN, ROOMS, None)
    assert (
        exec_.steps[-1].text == f"docker exec -it tether tether-claim -token={TOKEN} "
        f"-rooms={','.join(ROOMS)} -url={URL}"
    )


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown environment"):
        commands.build("windows", URL, TOKEN, ROOMS, None)


@pytest.mark.parametrize("env", list(commands.ENVIRONMENTS))
def test_a_proxy_reaches_every_environment(env: str) -> None:
    proxy = "socks5h://user:p%40ss@proxy.lan:1080"
    text = "\n".join(s.text for s in commands.build(env, URL, TOKEN, ROOMS, None, proxy).steps)
    assert proxy in text
    plain = "\n".join(s.text for s in commands.build(env, URL, TOKEN, ROOMS, None).steps)
    assert "proxy" not in plain.lower()


def test_proxy_forms() -> None:
    out = commands.build("linux", URL, TOKEN, [], None, "http://10.0.0.1:3128")
    assert out.steps[0].text.endswith("--claim-proxy http://10.0.0.1:3128")
    assert out.direct is not None and out.direct.endswith("-proxy=http://10.0.0.1:3128")
    assert parse_args(shlex.split(out.direct)[1:]).options.proxy == "http://10.0.0.1:3128"
    for bad in ("ftp://x:1", "proxy.lan:1080", "http://", "http://a b"):
        with pytest.raises(ValueError, match="the proxy must be"):
            commands.build("linux", URL, TOKEN, [], None, bad)
