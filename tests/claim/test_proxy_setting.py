"""The one proxy parser claim and link share: forms, credentials, env, precedence."""

from __future__ import annotations

import pytest

from tether.net.proxy import ProxyConfigError, claim_proxy, mask_url, resolve_proxy

CLOUD = "https://cloud.example.com:8443"


@pytest.mark.parametrize("setting", ["none", "NONE", " none ", ""])
def test_none_means_direct(setting: str) -> None:
    choice = resolve_proxy(setting, CLOUD, env={"https_proxy": "http://p:3128"})
    assert choice.url is None
    assert choice.kind == "none"


@pytest.mark.parametrize(
    ("setting", "kind", "url"),
    [
        ("socks5://10.0.0.1:1080", "socks5", "socks5://10.0.0.1:1080"),
        ("socks5h://proxy.example.com:1080", "socks5h", "socks5h://proxy.example.com:1080"),
        ("http://proxy.example.com:3128", "http", "http://proxy.example.com:3128"),
        ("HTTP://Proxy.Example.com:3128/", "http", "http://proxy.example.com:3128"),
        ("socks5h://proxy.example.com", "socks5h", "socks5h://proxy.example.com:1080"),
    ],
)
def test_url_forms(setting: str, kind: str, url: str) -> None:
    choice = resolve_proxy(setting, CLOUD, env={})
    assert (choice.kind, choice.url) == (kind, url)


def test_credentials_percent_decoded_once_and_masked() -> None:
    choice = resolve_proxy("socks5h://al%40ce:p%40ss%3Aw%2Frd%25@127.0.0.1:1080", CLOUD, env={})
    assert choice.username == "al@ce"
    assert choice.password == "p@ss:w/rd%"
    # Re-encoded exactly once, so httpx/websockets decode back to the same password.
    assert choice.url == "socks5h://al%40ce:p%40ss%3Aw%2Frd%25@127.0.0.1:1080"
    shown = choice.display()
    assert "p%40ss" not in shown and "p@ss" not in shown
    assert "al%40ce:***@127.0.0.1:1080" in shown


def test_raw_at_sign_in_password_splits_at_last_at() -> None:
    choice = resolve_proxy("http://bob:pa@ss@127.0.0.1:3128", CLOUD, env={})
    assert (choice.username, choice.password, choice.host) == ("bob", "pa@ss", "127.0.0.1")


@pytest.mark.parametrize(
    "setting",
    [
        "ftp://p:21",
        "socks4://p:1080",
        "proxy.example.com:3128",
        "http://",
        "http://p:99999",
        "http://p:3128/path",
    ],
)
def test_invalid_settings_name_setting_and_forms(setting: str) -> None:
    with pytest.raises(ProxyConfigError) as info:
        resolve_proxy(setting, CLOUD, env={}, source="-proxy")
    msg = str(info.value)
    assert "-proxy" in msg
    assert "socks5h://" in msg or "port" in msg


def test_https_proxy_is_accepted_with_default_port_443() -> None:
    # TLS to the proxy, then CONNECT (issue 12): tests/link/test_claim_proxy_kept.py
    # runs it for real through stunnel4 in front of tinyproxy.
    choice = resolve_proxy("https://u:p%40ss@proxy.example", CLOUD, env={}, source="-proxy")
    assert (choice.kind, choice.port, choice.password) == ("https", 443, "p@ss")
    assert choice.display() == "https://u:***@proxy.example:443 (from -proxy)"


def test_invalid_setting_never_echoes_password() -> None:
    with pytest.raises(ProxyConfigError) as info:
        resolve_proxy("ftp://u:topsecret@p:21", CLOUD, env={})
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize(
    "name", ["https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
)
def test_env_reads_each_variable(name: str) -> None:
    choice = resolve_proxy("env", CLOUD, env={name: "http://u:p@10.1.1.1:3128"})
    assert choice.url == "http://u:p@10.1.1.1:3128"
    assert choice.source == f"environment variable {name}"


def test_env_order_https_first_and_plain_host_means_http() -> None:
    env = {"http_proxy": "http://a:1", "HTTPS_PROXY": "b.example:3128"}
    choice = resolve_proxy("env", CLOUD, env=env)
    assert choice.url == "http://b.example:3128"
    assert choice.source == "environment variable HTTPS_PROXY"


def test_env_socks_proxy() -> None:
    choice = resolve_proxy("env", CLOUD, env={"socks_proxy": "socks5://127.0.0.1:9050"})
    assert choice.kind == "socks5"


def test_env_without_variables_is_direct() -> None:
    assert resolve_proxy("env", CLOUD, env={}).url is None


@pytest.mark.parametrize(
    ("no_proxy", "bypass"),
    [
        ("*", True),
        ("cloud.example.com", True),
        (".example.com", True),
        ("example.com", True),
        ("*.example.com", True),
        ("other.com, localhost", False),
        ("cloud.example.com:8443", True),
        ("cloud.example.com:443", False),
        ("xample.com", False),
    ],
)
def test_no_proxy(no_proxy: str, bypass: bool) -> None:
    env = {"https_proxy": "http://p:3128", "NO_PROXY": no_proxy}
    choice = resolve_proxy("env", CLOUD, env=env)
    assert (choice.url is None) is bypass


def test_claim_precedence() -> None:
    env = {"https_proxy": "http://envproxy:3128"}
    common = {"config_file": "/etc/tether/tether.conf", "target_url": CLOUD, "env": env}
    forced = claim_proxy(noproxy=True, cli_proxy="http://cli:1", config_proxy="env", **common)
    assert forced.url is None and forced.source == "-noproxy"
    cli = claim_proxy(noproxy=False, cli_proxy="http://cli:1", config_proxy="env", **common)
    assert cli.url == "http://cli:1" and cli.source == "-proxy"
    conf = claim_proxy(noproxy=False, cli_proxy=None, config_proxy="env", **common)
    assert conf.url == "http://envproxy:3128"
    conf2 = claim_proxy(noproxy=False, cli_proxy=None, config_proxy="socks5h://s:1080", **common)
    assert conf2.source == "[cloud] proxy in /etc/tether/tether.conf"
    default = claim_proxy(noproxy=False, cli_proxy=None, config_proxy="none", **common)
    assert default.url is None


def test_mask_url_without_credentials_unchanged() -> None:
    assert mask_url("http://127.0.0.1:3128") == "http://127.0.0.1:3128"
