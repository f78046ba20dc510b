"""The Connect Nodes commands, per environment (no Cloud needed; the ones that
run a command run the real tether-claim)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.common import clean_env, command, free_port
from tether.claim.cli import parse_args
from tether.cloud.web import commands
from tether.cloud.web.commands import CloudCa

URL = "https://cloud.example.com:19443"
TOKEN = "tct_abcdefgh_" + "x" * 43
ROOMS = ["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"]
CA = CloudCa(URL + "/ca.pem", "AB:CD:EF")


def words(text: str) -> list[str]:
    """A shown shell command as the shell splits it (backslash-newline joins lines)."""
    return shlex.split(text.replace("\\\n", " "), comments=True)


def test_linux_kickstart_and_direct_form_match_the_reference() -> None:
    out = commands.build("linux", URL, TOKEN, ROOMS, None)
    [kick, direct] = [s.text for s in out.steps]
    assert kick == (
        f"curl -fsS -o /tmp/tether-kickstart.sh {URL}/kickstart.sh && "
        f"bash /tmp/tether-kickstart.sh --claim-token {TOKEN} "
        f"--claim-rooms {','.join(ROOMS)} --claim-url {URL}"
    )
    assert (
        out.direct == direct == (f"tether-claim -token={TOKEN} -rooms={','.join(ROOMS)} -url={URL}")
    )
    # The direct form is what tether-claim itself parses.
    parsed = parse_args(shlex.split(out.direct)[1:])
    assert parsed.options.token == TOKEN and parsed.options.url == URL
    assert parsed.options.rooms == ROOMS
    assert not any("-k " in s.text or "fingerprint" in s.text for s in out.steps)


def test_private_ca_rides_in_the_command_as_its_fingerprint() -> None:
    ca = CloudCa(URL + "/ca.pem", ":".join(["AB"] * 32))
    out = commands.build("linux", URL, TOKEN, ROOMS, ca)
    [kick, direct] = [s.text for s in out.steps]  # no separate CA step: kickstart checks it
    # -k for the CA only; the script comes over TLS verified by that CA.
    assert kick.startswith(f"curl -fsS -k -o /tmp/tether-ca.pem {URL}/ca.pem && ")
    assert f"curl -fsS --cacert /tmp/tether-ca.pem -o /tmp/tether-kickstart.sh {URL}/" in kick
    assert kick.count(" -k ") == 1
    assert f" --claim-ca-fingerprint {ca.sha256} " in kick
    parsed = parse_args(shlex.split(direct)[1:])
    assert parsed.options.ca_fingerprint == f"sha256:{ca.sha256}"


def test_the_first_download_takes_the_claims_proxy() -> None:
    for proxy, curl in (
        ("socks5h://u:p@proxy.lan:1080", "curl -fsS -x socks5h://u:p@proxy.lan:1080 -o"),
        ("none", "curl -fsS --noproxy '*' -o"),
        ("env", "curl -fsS -o"),
    ):
        kick = commands.build("linux", URL, TOKEN, [], None, proxy).steps[0].text
        assert kick.startswith(curl) and kick.endswith(f"--claim-proxy {proxy}"), kick


def test_private_ca_download_step_is_checked_for_containers() -> None:
    out = commands.build("docker-run", URL, TOKEN, ROOMS, CA)
    first = out.steps[0].text
    assert f"curl -fsSk -o tether-ca.pem {URL}/ca.pem" in first
    assert "grep -qix 'sha256 Fingerprint=AB:CD:EF'" in first
    assert "rm -f tether-ca.pem" in first  # a CA that does not match is not kept
    assert '-v "$PWD/tether-ca.pem:/var/lib/tether/cloud.d/cloud_fullchain.pem:ro"' in (
        out.steps[1].text
    )


def test_no_rooms_leaves_the_rooms_flag_out() -> None:
    out = commands.build("linux", URL, TOKEN, [], None)
    assert "--claim-rooms" not in out.steps[0].text and "-rooms" not in str(out.direct)


@pytest.mark.parametrize("env", list(commands.ENVIRONMENTS))
def test_every_environment_carries_url_token_rooms(env: str) -> None:
    out = commands.build(env, URL, TOKEN, ROOMS, CA)
    text = "\n".join(s.text for s in out.steps)
    # Helm reads a comma in --set as the next key=value: there it is escaped.
    rooms = "\\,".join(ROOMS) if env == "kubernetes" else ",".join(ROOMS)
    assert TOKEN in text and URL in text and rooms in text
    assert "AB:CD:EF" in text  # the CA's fingerprint, checked before it is trusted


def test_docker_run_reads_the_host_through_host_root() -> None:
    [step] = commands.build("docker-run", URL, TOKEN, ROOMS, None).steps
    argv = words(step.text)
    assert argv[:3] == ["docker", "run", "-d"] and argv[-1] == commands.IMAGE
    env = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-e")
    assert env == {
        "TETHER_HOST_ROOT": "/host",
        "TETHER_CLAIM_TOKEN": TOKEN,
        "TETHER_CLAIM_URL": URL,
        "TETHER_CLAIM_ROOMS": ",".join(ROOMS),
    }
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert mounts == [
        "tetherconfig:/etc/tether",
        "tetherlib:/var/lib/tether",
        "tetherlog:/var/log/tether",
        "/proc:/host/proc:ro",
        "/sys:/host/sys:ro",
        "/etc/os-release:/host/etc/os-release:ro",
    ]


def test_docker_compose_is_yaml_with_the_same_settings() -> None:
    proxy = "http://user:p%23ss@proxy.lan:3128"  # '#' would start a YAML comment unquoted
    out = commands.build("docker-compose", URL, TOKEN, ROOMS, CA, proxy)
    [compose] = [s for s in out.steps if s.language == "yaml"]
    assert out.steps[-1].text == "docker compose up -d"
    doc = yaml.safe_load(compose.text)
    svc = doc["services"]["tether"]
    assert svc["image"] == commands.IMAGE
    env = dict(e.split("=", 1) for e in svc["environment"])
    assert env == {
        "TETHER_HOST_ROOT": "/host",
        "TETHER_CLAIM_TOKEN": TOKEN,
        "TETHER_CLAIM_URL": URL,
        "TETHER_CLAIM_ROOMS": ",".join(ROOMS),
        "TETHER_CLAIM_PROXY": proxy,
    }
    assert "/proc:/host/proc:ro" in svc["volumes"]
    assert "/etc/os-release:/host/etc/os-release:ro" in svc["volumes"]
    assert "./tether-ca.pem:/var/lib/tether/cloud.d/cloud_fullchain.pem:ro" in svc["volumes"]
    named = {v.split(":", 1)[0] for v in svc["volumes"] if not v.startswith(("/", "."))}
    assert named == set(doc["volumes"]) == {"tetherconfig", "tetherlib", "tetherlog"}


def test_a_yaml_special_character_in_a_proxy_password_survives_compose() -> None:
    proxy = "socks5h://u:it's&{more}~@proxy.lan:1080"
    compose = commands.build("docker-compose", URL, TOKEN, [], None, proxy).steps[0]
    svc = yaml.safe_load(compose.text)["services"]["tether"]
    assert dict(e.split("=", 1) for e in svc["environment"])["TETHER_CLAIM_PROXY"] == proxy
    run = commands.build("docker-run", URL, TOKEN, [], None, proxy).steps[0]
    assert f"TETHER_CLAIM_PROXY={proxy}" in words(run.text)


def test_docker_exec_runs_the_direct_claim() -> None:
    exec_ = commands.build("docker-exec", URL, TOKEN, ROOMS, None)
    assert (
        exec_.steps[-1].text == f"docker exec -it tether tether-claim -token={TOKEN} "
        f"-rooms={','.join(ROOMS)} -url={URL}"
    )
    [step] = commands.build("docker-exec", URL, TOKEN, ROOMS, CA).steps
    assert step.text.endswith(f"-url={URL} -ca-fingerprint=sha256:AB:CD:EF")


def test_kubernetes_is_a_secret_then_a_helm_install_from_this_cloud() -> None:
    proxy = "socks5h://user:secret@proxy.lan:1080"
    out = commands.build("kubernetes", URL, TOKEN, ROOMS, CA, proxy)
    create = out.steps[0].text.splitlines()
    assert create[0] == "kubectl create namespace tether"
    argv = words("\n".join(create[1:]))
    assert argv[:6] == ["kubectl", "-n", "tether", "create", "secret", "generic"]
    assert argv[6] == commands.K8S_SECRET
    literals = dict(a.removeprefix("--from-literal=").split("=", 1) for a in argv[7:])
    # Only the token and a fresh random stream key: the rest are chart values.
    assert literals == {"token": TOKEN, "stream-api-key": "$(openssl rand -hex 16)"}
    # The CA goes into a ConfigMap in the same namespace, after it exists.
    assert out.steps[1].text.splitlines()[-1] == (
        "kubectl -n tether create configmap tether-ca --from-file=cloud_fullchain.pem=tether-ca.pem"
    )
    install, rollout = out.steps[2].text.rsplit("\n", 1)
    assert words(install) == [
        "helm",
        "install",
        "tether",
        f"{URL}/helm/tether-0.1.0.tgz",
        "--ca-file",
        "tether-ca.pem",
        "--namespace",
        "tether",
        "--set",
        f"cloud.url={URL}",
        "--set",
        f"cloud.rooms={ROOMS[0]}\\,{ROOMS[1]}",  # helm splits --set on a bare comma
        "--set",
        f"cloud.proxy={proxy}",
    ]
    assert rollout == "kubectl -n tether rollout status deployment/tether-parent"
    # No CA, no rooms, no proxy: only the URL is set, and no --ca-file.
    [_, plain] = commands.build("kubernetes", URL, TOKEN, [], None).steps
    assert words(plain.text.rsplit("\n", 1)[0])[-4:] == [
        "--namespace",
        "tether",
        "--set",
        f"cloud.url={URL}",
    ]
    assert "--ca-file" not in plain.text and plain.text.count("--set") == 1


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown environment"):
        commands.build("windows", URL, TOKEN, ROOMS, None)


@pytest.mark.parametrize("env", list(commands.ENVIRONMENTS))
def test_a_proxy_reaches_every_environment(env: str) -> None:
    proxy = "socks5h://user:p%40ss@proxy.lan:1080"
    text = "\n".join(s.text for s in commands.build(env, URL, TOKEN, ROOMS, None, proxy).steps)
    assert proxy in text
    plain = commands.build(env, URL, TOKEN, ROOMS, None).steps
    # Without one, no command passes a proxy (the manifest's comment only names the key).
    shown = "\n".join(s.text for s in plain if s.language != "yaml" or env == "docker-compose")
    assert "proxy" not in shown.lower()


def test_proxy_forms() -> None:
    out = commands.build("linux", URL, TOKEN, [], None, "http://10.0.0.1:3128")
    assert out.steps[0].text.startswith("curl -fsS -x http://10.0.0.1:3128 ")
    assert out.steps[0].text.endswith("--claim-proxy http://10.0.0.1:3128")
    assert out.direct is not None and out.direct.endswith("-proxy=http://10.0.0.1:3128")
    assert parse_args(shlex.split(out.direct)[1:]).options.proxy == "http://10.0.0.1:3128"
    for bad in ("ftp://x:1", "proxy.lan:1080", "http://", "http://a b"):
        with pytest.raises(ValueError, match=r"the proxy|no spaces") as caught:
            commands.build("linux", URL, TOKEN, [], None, bad)
        assert "socks5h://" in str(caught.value)  # it says what would work


def _claim_accepts_proxy(proxy: str, prefix: Path) -> bool:
    """Whether the real tether-claim takes `proxy`: it then tries to reach it
    (exit 4: nothing listens there), else refuses the setting (exit 1)."""
    r = subprocess.run(
        [
            command("tether-claim"),
            "--prefix",
            str(prefix),
            f"-token={TOKEN}",
            "-url=https://127.0.0.1:9",
            f"-proxy={proxy}",
            "-noreload",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert r.returncode in (1, 4), r.stderr
    return r.returncode == 4


def test_the_page_offers_exactly_the_proxies_tether_claim_accepts(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: an accepted proxy fails to connect
    candidates = [
        f"socks5://127.0.0.1:{port}",
        f"socks5h://user:pass@127.0.0.1:{port}",
        f"http://127.0.0.1:{port}",
        f"http://user:p%40ss@127.0.0.1:{port}",
        f"https://127.0.0.1:{port}",
        f"ftp://127.0.0.1:{port}",
        f"socks4://127.0.0.1:{port}",
        f"127.0.0.1:{port}",
        f"http://127.0.0.1:{port}/path",
    ]
    for proxy in candidates:
        try:
            commands.check_proxy(proxy)
            offered = True
        except ValueError as exc:
            offered = False
            assert "socks5h://" in str(exc), exc
        assert offered == _claim_accepts_proxy(proxy, tmp_path / "node"), proxy
    # What the page's placeholder lists are accepted forms too.
    for form in commands.proxy_forms().removesuffix(", env or none").split(", "):
        commands.check_proxy(form)


def test_the_proxy_note_says_what_uses_it() -> None:
    assert "TETHER_CLAIM_PROXY" in commands.proxy_use("docker-run")
    assert commands.proxy_use("kubernetes") == commands.proxy_use("docker-compose")
    assert "cloud.d/cloud.conf" in commands.proxy_use("linux")


def test_docker_compose_agrees_with_the_packaged_compose_file() -> None:
    packaged = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "packaging/docker/docker-compose.yml").read_text()
    )
    shown = commands.build("docker-compose", URL, TOKEN, ROOMS, None, "http://p:3128").steps[0]
    ui = yaml.safe_load(shown.text)
    want, got = packaged["services"]["tether"], ui["services"]["tether"]
    for key in ("image", "container_name", "ports", "restart", "volumes"):
        assert got[key] == want[key], key
    assert set(ui["volumes"]) == set(packaged["volumes"])
    names = {e.split("=", 1)[0] for e in want["environment"]}
    assert {e.split("=", 1)[0] for e in got["environment"]} == names
