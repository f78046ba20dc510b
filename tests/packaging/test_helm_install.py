"""Connect Nodes' Kubernetes command is a `helm install` of the chart the Cloud
serves: every `--set` key is a value of packaging/helm/tether/values.yaml, the
chart rendered with the shown values (tests/fixtures/helm.py, as `helm
template` would) is valid against the current Kubernetes schema (strict) and
claims with exactly what the page was given, the Secret shown holds the keys
the chart reads, and the archive the real Cloud serves at the URL shown is
that chart."""

from __future__ import annotations

import html
import io
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.fixtures.cloud import Cloud
from tests.fixtures.helm import render_chart
from tests.fixtures.packaging import REPO
from tests.fixtures.ui import session_client
from tether.cloud import helm_chart
from tether.cloud.web import commands

CHART = REPO / "packaging" / "helm" / "tether"
URL = "https://cloud.example.com:19443"
TOKEN = "tct_abcdefgh_" + "x" * 43
ROOMS = ["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"]
CA = commands.CloudCa(URL + "/ca.pem", "AB:CD")
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def words(text: str) -> list[list[str]]:
    """Each shell command shown, as the shell splits it."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip()]


def helm_set(arg: str) -> dict[str, str]:
    """One `--set` argument as helm's strvals reads it: pairs split on
    unescaped commas, a backslash escaping the next character."""
    pairs: list[str] = [""]
    chars = iter(arg)
    for ch in chars:
        if ch == "\\":
            pairs[-1] += next(chars)
        elif ch == ",":
            pairs.append("")
        else:
            pairs[-1] += ch
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        assert eq, f"--set {arg!r}: {pair!r} has no value (helm refuses it)"
        out[key] = value
    return out


def helm_install(out: commands.Instructions) -> tuple[str, dict[str, str], dict[str, str]]:
    """(chart reference, {option: value}, {--set key: value}) of the install shown."""
    [argv] = [w for s in out.steps for w in words(s.text) if w[:2] == ["helm", "install"]]
    assert argv[2] == "tether"
    chart, options, sets = argv[3], {}, {}
    rest = iter(argv[4:])
    for flag in rest:
        value = next(rest)
        if flag == "--set":
            sets.update(helm_set(value))
        else:
            options[flag] = value
    return chart, options, sets


def value_of(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{key!r} is not a value of packaging/helm/tether/values.yaml")
        node = node[part]
    return node


def overrides(sets: dict[str, str]) -> dict[str, Any]:
    """The --set values as the nested map helm merges over values.yaml."""
    out: dict[str, Any] = {}
    for key, value in sets.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


CASES = [
    (ROOMS, None, ""),
    ([], None, ""),
    (ROOMS[:1], CA, "socks5h://user:p%40ss@proxy.lan:1080"),
    (ROOMS, CA, "http://proxy.lan:3128"),
]


@pytest.mark.parametrize(("rooms", "ca", "proxy"), CASES)
def test_every_set_key_is_a_chart_value_and_the_render_is_valid(
    rooms: list[str], ca: commands.CloudCa | None, proxy: str
) -> None:
    out = commands.build("kubernetes", URL, TOKEN, rooms, ca, proxy)
    chart, options, sets = helm_install(out)
    assert chart == f"{URL}/helm/{helm_chart.archive_name()}"
    assert options["--namespace"] == commands.K8S_NAMESPACE
    # With a private CA helm fetches the chart trusting the CA just checked.
    assert options.get("--ca-file") == (commands.CA_NAME if ca else None)
    for key in sets:
        assert not isinstance(value_of(VALUES, key), dict), key
    with pytest.raises(KeyError, match="not a value"):
        value_of(VALUES, "cloud.urls")  # a misspelt key would be caught
    rendered = render_chart(CHART, overrides(sets), namespace=options["--namespace"])
    version = latest_version()
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)
    # The parent claims with what the page was given, commas and all.
    [parent] = [d for d in rendered if d["kind"] == "Deployment"]
    [agent] = parent["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["TETHER_CLAIM_URL"] == URL
    assert env["TETHER_CLAIM_ROOMS"] == ",".join(rooms)
    assert env["TETHER_CLAIM_PROXY"] == proxy


def test_the_secret_shown_is_the_one_the_chart_reads() -> None:
    out = commands.build("kubernetes", URL, TOKEN, ROOMS, CA)
    [create] = [w for s in out.steps for w in words(s.text) if w[3:5] == ["create", "secret"]]
    assert create[:3] == ["kubectl", "-n", commands.K8S_NAMESPACE]
    assert create[5:7] == ["generic", value_of(VALUES, "cloud.claimSecret")]
    literals = dict(a.removeprefix("--from-literal=").split("=", 1) for a in create[7:])
    assert literals["token"] == TOKEN
    assert literals["stream-api-key"] == "$(openssl rand -hex 16)"  # as shlex sees it
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for d in render_chart(CHART)
        if d["kind"] in ("Deployment", "DaemonSet")
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {(commands.K8S_SECRET, k) for k in literals}
    # The CA ConfigMap the page creates is the one the chart mounts.
    [cm] = [w for s in out.steps for w in words(s.text) if w[3:5] == ["create", "configmap"]]
    assert cm[5] == value_of(VALUES, "cloud.caConfigMap") == commands.K8S_CA_CONFIGMAP
    assert cm[6] == f"--from-file=cloud_fullchain.pem={commands.CA_NAME}"
    # The token is in the Secret only, never in a --set (helm keeps values in the release).
    assert TOKEN not in str(helm_install(out))


def test_set_values_round_trip_through_helms_escaping() -> None:
    for value in ("a,b", "a\\,b", "x\\y", "plain"):
        assert helm_set(f"k={commands.helm_value(value)}") == {"k": value}


def _chart_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*.yaml"))
        if p.is_file()
    }


def test_the_cloud_carries_the_packaged_chart_byte_for_byte() -> None:
    assert _chart_files(helm_chart.CHART_DIR) == _chart_files(CHART), (
        "copy packaging/helm/tether/{Chart,values}.yaml and templates/ to "
        "src/tether/cloud/helm/tether/"
    )
    assert helm_chart.archive() == helm_chart.archive()  # reproducible (cached or not)


def test_the_page_shows_a_chart_the_cloud_serves(cloud: Cloud, tmp_path: Path) -> None:
    """What Connect Nodes shows for Kubernetes, installed from what the Cloud serves."""
    room = cloud.room_ids[1]
    c = session_client(cloud, cloud.admin_email, str(cloud.admin_password))
    page = c.get(f"/spaces/{cloud.space_id}/connect", params={"env": "kubernetes", "room": room})
    c.close()
    assert page.status_code == 200
    shown = [
        html.unescape(t)
        for t in re.findall(r'<code class="command" id="step-\d+">(.*?)</code>', page.text, re.S)
    ]
    ca = commands.CloudCa(cloud.url + "/ca.pem", cloud.ca_sha256 or "")
    out = commands.build("kubernetes", cloud.url, cloud.claim_token, [room], ca)
    assert shown == [s.text for s in out.steps]  # exactly the builder's text
    chart, options, sets = helm_install(out)
    assert sets["cloud.rooms"] == room and options["--ca-file"] == commands.CA_NAME
    # As helm --ca-file does: TLS verified against the Cloud's CA.
    with cloud.client() as c:
        r = c.get(chart)
        missing = c.get(f"{cloud.url}/helm/tether-0.0.0-not-this.tgz")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert missing.status_code == 404
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = tar.getnames()
        assert all(n.startswith("tether/") for n in names)  # helm's layout: one top directory
        tar.extractall(tmp_path, filter="data")
    served = tmp_path / "tether"
    assert _chart_files(served) == _chart_files(CHART)
    meta = yaml.safe_load((served / "Chart.yaml").read_text())
    assert chart.endswith(f"/helm/{meta['name']}-{meta['version']}.tgz")
    version = latest_version()
    for obj in render_chart(served, overrides(sets)):
        kubernetes_validate.validate(obj, version, strict=True)
