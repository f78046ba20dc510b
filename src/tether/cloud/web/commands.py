"""The copy-ready commands of the Connect Nodes page, one per environment.

Pure functions of (Cloud URL, token, rooms, CA, proxy): easy to test, and the
only place that knows how each environment claims a node. `scripts/quickstart`
prints the Linux ones. Kubernetes is a `helm install` of the chart this Cloud
serves (tether.cloud.helm_chart, the one in `packaging/helm/tether/`), with
`--set` keys of its values.yaml.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from tether.cloud import helm_chart
from tether.net.proxy import SCHEMES, ProxyConfigError, parse_proxy_url

ENVIRONMENTS: dict[str, str] = {
    "linux": "Linux",
    "docker-run": "Docker run",
    "docker-compose": "Docker compose",
    "docker-exec": "Docker exec",
    "macos": "macOS",
    "kubernetes": "Kubernetes",
}
LIB_DIR = "/var/lib/tether"
LOG_DIR = "/var/log/tether"
IMAGE = "tether/agent:latest"
CA_NAME = "tether-ca.pem"
# Containers read the host's /proc, /sys and os-release from here.
HOST_ROOT = "/host"
HOST_MOUNTS = ("/proc", "/sys", "/etc/os-release")
K8S_NAMESPACE = "tether"
K8S_SECRET = "tether-claim"  # noqa: S105 (the Secret's name, not a secret)
K8S_CA_CONFIGMAP = "tether-ca"
_YAML_PLAIN = re.compile(r"[A-Z_]+=[A-Za-z0-9_=:/.,@%+\-\[\]]*")


@dataclass(frozen=True)
class CloudCa:
    """The Cloud's private CA, when it uses one (agents must be told to trust it)."""

    url: str  # where nodes download it, e.g. https://cloud:19443/ca.pem
    sha256: str  # colon-separated hex, as `openssl x509 -fingerprint -sha256` prints


@dataclass
class Step:
    title: str
    text: str
    language: str = "bash"
    note: str = ""


@dataclass
class Instructions:
    environment: str
    steps: list[Step] = field(default_factory=list)
    # The plain `tether-claim` form, where the environment has one.
    direct: str | None = None


def q(value: str) -> str:
    return shlex.quote(value)


def proxy_forms() -> str:
    """The proxy kinds tether-claim accepts, for the page's placeholder and errors."""
    examples = {
        "socks5": "socks5://proxy:1080",
        "socks5h": "socks5h://user:pass@proxy:1080",
        "http": "http://proxy:3128",
        "https": "https://proxy:3129",
    }
    return ", ".join(examples.get(s, f"{s}://proxy:port") for s in SCHEMES) + ", env or none"


# What a proxy given on the page is used for, per environment (the claim
# settings of containers are also the agent's settings at every start).
_PROXY_USE_CLAIM = (
    "The claim uses it and the node keeps it (cloud.d/cloud.conf), so its link goes "
    "through the same proxy; kickstart also downloads the agent through it."
)
_PROXY_USE_CONTAINER = (
    "TETHER_CLAIM_PROXY: the claim uses it, and the agent uses it for its link at every start."
)


def proxy_use(environment: str) -> str:
    """What the proxy typed on the page is used for, in `environment`."""
    if environment in ("docker-run", "docker-compose", "kubernetes"):
        return _PROXY_USE_CONTAINER
    return _PROXY_USE_CLAIM


def check_proxy(proxy: str) -> str:
    """The proxy as typed, if tether-claim (and so the agent's link) accepts it;
    else ValueError saying what is accepted. The check is tether.net.proxy's
    own parser, so the page offers exactly what the claim takes."""
    proxy = proxy.strip()
    if proxy in ("", "none", "env"):
        return proxy
    if any(c.isspace() for c in proxy):
        raise ValueError(f"a proxy URL has no spaces; use {proxy_forms()}")
    try:
        parse_proxy_url(proxy, "typed here")
    except ProxyConfigError as exc:
        scheme = proxy.split("://", 1)[0].lower() if "://" in proxy else ""
        if scheme == "https":
            raise ValueError(
                "tether-claim does not support HTTPS proxies (TLS to the proxy) yet; "
                f"use {proxy_forms()}"
            ) from None
        raise ValueError(f"{exc}".replace("proxy setting", "the proxy", 1)) from None
    return proxy


def _ca_download(ca: CloudCa) -> Step:
    # -k only for this one download: the fingerprint check right after is what
    # establishes trust, as with any self-signed CA fetched over the network. A
    # CA that does not match is deleted, so no later step can use it. OpenSSL
    # 1.1 prints "SHA256 Fingerprint=", 3.x "sha256 Fingerprint=": -i.
    text = (
        f"curl -fsSk -o {CA_NAME} {q(ca.url)}\n"
        f"openssl x509 -in {CA_NAME} -noout -fingerprint -sha256 \\\n"
        f"  | grep -qix {q('sha256 Fingerprint=' + ca.sha256)} && echo 'CA fingerprint OK' \\\n"
        f"  || {{ echo 'Wrong CA (not this Cloud): stop here' >&2; rm -f {CA_NAME}; }}"
    )
    return Step(
        "Trust this Cloud's private CA",
        text,
        note="This Cloud uses its own certificate authority, SHA-256 fingerprint "
        f"{ca.sha256}. The download is kept only if its fingerprint is that one.",
    )


KICKSTART_FILE = "/tmp/tether-kickstart.sh"  # noqa: S108 (the node's shell, not ours)


CA_FILE = "/tmp/tether-ca.pem"  # noqa: S108 (the node's shell, not ours)


def _kickstart(
    url: str, token: str, rooms: str, ca: CloudCa | None, proxy: str, extra: str = ""
) -> str:
    """Download kickstart.sh (through the proxy, if any), then run it.

    With a private CA, nothing is trusted before the CA is: the CA is
    downloaded with -k and kept only if its SHA-256 is the one this command
    carries; kickstart.sh itself is then fetched over TLS verified against
    that CA (a script fetched with -k could have been changed on the way),
    and kickstart checks the CA again before it installs anything."""
    fetch = "curl -fsS"
    # The first downloads go the way the claim will: curl takes the same
    # proxy URLs, reads the *_proxy variables itself (env), or none.
    if proxy == "none":
        fetch += " --noproxy '*'"
    elif proxy and proxy != "env":
        fetch += f" -x {q(proxy)}"
    rooms_arg = f" --claim-rooms {q(rooms)}" if rooms else ""
    proxy_arg = f" --claim-proxy {q(proxy)}" if proxy else ""
    claim = f" --claim-token {q(token)}{rooms_arg} --claim-url {q(url)}{proxy_arg}"
    if ca is None:
        return (
            f"{fetch} -o {KICKSTART_FILE} {q(url + '/kickstart.sh')} && "
            f"bash {KICKSTART_FILE}{extra}{claim}"
        )
    # OpenSSL 1.1 prints "SHA256 Fingerprint=", 3.x "sha256 Fingerprint=": -i.
    expected = q("sha256 Fingerprint=" + ca.sha256)
    return (
        f"{fetch} -k -o {CA_FILE} {q(ca.url)} && "
        f"{{ openssl x509 -in {CA_FILE} -noout -fingerprint -sha256 | grep -qix {expected} "
        f"|| {{ echo 'Wrong CA: this is not your Cloud. Stop.' >&2; false; }}; }} && "
        f"{fetch} --cacert {CA_FILE} -o {KICKSTART_FILE} {q(url + '/kickstart.sh')} && "
        f"bash {KICKSTART_FILE}{extra} --claim-ca-file {CA_FILE} "
        f"--claim-ca-fingerprint {q(ca.sha256)}{claim}"
    )


def claim_command(
    url: str,
    token: str,
    rooms: str,
    proxy: str = "",
    program: str = "tether-claim",
    ca: CloudCa | None = None,
) -> str:
    rooms_arg = f" -rooms={q(rooms)}" if rooms else ""
    ca_arg = f" -ca-fingerprint={q('sha256:' + ca.sha256)}" if ca else ""
    proxy_arg = f" -proxy={q(proxy)}" if proxy else ""
    return f"{program} -token={q(token)}{rooms_arg} -url={q(url)}{ca_arg}{proxy_arg}"


def _volumes(ca_source: str | None) -> list[str]:
    """The agent container's volumes, SOURCE:TARGET[:ro]: its config, identity
    and logs; the Cloud's CA (from `ca_source`) when it has a private one; the
    host's /proc, /sys and os-release, read-only."""
    vols = ["tetherconfig:/etc/tether", f"tetherlib:{LIB_DIR}", f"tetherlog:{LOG_DIR}"]
    if ca_source is not None:
        vols.append(f"{ca_source}:{LIB_DIR}/cloud.d/cloud_fullchain.pem:ro")
    return vols + [f"{p}:{HOST_ROOT}{p}:ro" for p in HOST_MOUNTS]


def _claim_settings(args: tuple[str, str, str, str]) -> list[tuple[str, str]]:
    """What a container's agent claims with (and links by, for the proxy), in
    order: (name, value), the name as TETHER_CLAIM_<NAME> spells it."""
    url, token, rooms, proxy = args
    settings = [("TOKEN", token), ("URL", url)]
    if rooms:
        settings.append(("ROOMS", rooms))
    if proxy:
        settings.append(("PROXY", proxy))
    return settings


def _environment(args: tuple[str, str, str, str]) -> list[str]:
    """The agent container's environment, NAME=VALUE."""
    claim = [f"TETHER_CLAIM_{name}={value}" for name, value in _claim_settings(args)]
    return [f"TETHER_HOST_ROOT={HOST_ROOT}", *claim]


def _native(
    out: Instructions, environment: str, args: tuple[str, str, str, str], ca: CloudCa | None
) -> None:
    url, token, rooms, proxy = args
    # macOS: under /usr/local, which an admin user may write without sudo.
    extra = "" if environment == "linux" else " --install /usr/local/tether --prefix /usr/local"
    out.steps.append(
        Step(
            "Install the agent from this Cloud, start it and connect the node",
            _kickstart(url, token, rooms, ca, proxy, extra),
            note="Run it as root (or add --install DIR for an unprivileged install). It "
            "installs from this Cloud only, starts the agent as a service and prints: "
            "Agent was successfully claimed.",
        )
    )
    program = "tether-claim" if environment == "linux" else "tether-claim --prefix /usr/local"
    out.direct = claim_command(url, token, rooms, proxy, program, ca)
    out.steps.append(Step("Or, where the agent is already installed, claim directly", out.direct))


def _docker_run(out: Instructions, args: tuple[str, str, str, str], ca: CloudCa | None) -> None:
    if ca:
        out.steps.append(_ca_download(ca))
    lines = ["docker run -d --name=tether \\", "  -p 19999:19999 \\"]
    for vol in _volumes(f"$PWD/{CA_NAME}" if ca else None):
        # Double quotes: the shell expands $PWD but does not split the path.
        lines.append(f'  -v "{vol}" \\' if vol.startswith("$") else f"  -v {vol} \\")
    lines.append("  --restart unless-stopped \\")
    for setting in _environment(args):
        name, _, value = setting.partition("=")
        lines.append(f"  -e {name}={q(value)} \\")
    lines.append(f"  {IMAGE}")
    out.steps.append(
        Step(
            "Start the agent container; it connects itself on first start",
            "\n".join(lines),
            note=f"Keep the {LIB_DIR} volume: it holds the node's identity, so restarts "
            "do not create new nodes.",
        )
    )


def _yaml_value(value: str) -> str:
    """A compose list item: plain when YAML reads it back as typed, else
    double-quoted (a JSON string is valid YAML), e.g. for a '#' in a password."""
    return value if _YAML_PLAIN.fullmatch(value) else json.dumps(value)


def _docker_compose(out: Instructions, args: tuple[str, str, str, str], ca: CloudCa | None) -> None:
    if ca:
        out.steps.append(_ca_download(ca))
    vols = [f"      - {vol}" for vol in _volumes(f"./{CA_NAME}" if ca else None)]
    env = [f"      - {_yaml_value(setting)}" for setting in _environment(args)]
    text = "\n".join(
        [
            "services:",
            "  tether:",
            f"    image: {IMAGE}",
            "    container_name: tether",
            "    hostname: example.com  # this node's name in the Cloud",
            "    ports:",
            "      - 19999:19999",
            "    restart: unless-stopped",
            "    volumes:",
            *vols,
            "    environment:",
            *env,
            "volumes:",
            "  tetherconfig:",
            "  tetherlib:",
            "  tetherlog:",
        ]
    )
    out.steps.append(Step("Save as docker-compose.yml", text, language="yaml"))
    out.steps.append(Step("Start it", "docker compose up -d"))


def _docker_exec(out: Instructions, args: tuple[str, str, str, str], ca: CloudCa | None) -> None:
    url, token, rooms, proxy = args
    out.direct = claim_command(url, token, rooms, proxy, ca=ca)
    out.steps.append(
        Step(
            "Connect a running agent container (replace tether with its name)",
            f"docker exec -it tether {out.direct}",
            note="It prints: Agent was successfully claimed.",
        )
    )


def helm_value(value: str) -> str:
    """`value` as `helm --set` reads it back: a comma would start the next
    key=value pair and a backslash escapes, so both are escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def helm_sets(args: tuple[str, str, str, str]) -> list[tuple[str, str]]:
    """The chart values the page sets, (key of values.yaml, value), in order;
    everything else keeps the chart's default (values.yaml)."""
    url, _token, rooms, proxy = args
    sets = [("cloud.url", url)]
    if rooms:
        sets.append(("cloud.rooms", rooms))
    if proxy:
        sets.append(("cloud.proxy", proxy))
    return sets


def chart_url(url: str) -> str:
    """Where this Cloud serves its Helm chart (tether.cloud.helm_chart)."""
    return f"{url}/helm/{helm_chart.archive_name()}"


def _kubernetes(out: Instructions, args: tuple[str, str, str, str], ca: CloudCa | None) -> None:
    token = args[1]
    # The stream API key only has to be the same on the parent and the
    # children (both read it from this Secret): any random string.
    secret = (
        f"kubectl create namespace {K8S_NAMESPACE}\n"
        f"kubectl -n {K8S_NAMESPACE} create secret generic {K8S_SECRET} \\\n"
        f"  --from-literal={q('token=' + token)} \\\n"
        f'  --from-literal=stream-api-key="$(openssl rand -hex 16)"'
    )
    out.steps.append(
        Step(
            "Create the namespace and the claim Secret (yours: the chart never creates one)",
            secret,
            note="The parent agent claims with this token once and keeps its identity on its "
            "own volume; `helm upgrade` never overwrites the Secret.",
        )
    )
    install = [f"helm install tether {q(chart_url(args[0]))} \\"]
    if ca:
        step = _ca_download(ca)
        step.text += (
            f"\nkubectl -n {K8S_NAMESPACE} create configmap {K8S_CA_CONFIGMAP} "
            f"--from-file=cloud_fullchain.pem={CA_NAME}"
        )
        out.steps.append(step)
        install.append(f"  --ca-file {CA_NAME} \\")  # helm downloads the chart over TLS too
    install.append(f"  --namespace {K8S_NAMESPACE} \\")
    install += [f"  --set {q(key + '=' + helm_value(value))} \\" for key, value in helm_sets(args)]
    install[-1] = install[-1].removesuffix(" \\")
    install.append(f"kubectl -n {K8S_NAMESPACE} rollout status deployment/tether-parent")
    out.steps.append(
        Step(
            "Install the Tether chart from this Cloud",
            "\n".join(install),
            note="One parent agent (a Deployment, claimed into this Space) and a child agent "
            "on every Kubernetes node (a DaemonSet) streaming to it: the cluster is one node "
            "here, each Kubernetes node one of its children. The chart is the one in "
            "packaging/helm/tether/; this Cloud serves it, so no chart repository is needed.",
        )
    )


def build(
    environment: str,
    url: str,
    token: str,
    room_ids: list[str],
    ca: CloudCa | None,
    proxy: str = "",
) -> Instructions:
    """The steps for `environment` (a key of ENVIRONMENTS); `proxy` as for
    tether-claim -proxy= (empty: the node's own [cloud] proxy setting)."""
    proxy = check_proxy(proxy)
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {environment!r}")
    args = (url, token, ",".join(room_ids), proxy)
    out = Instructions(environment)
    if environment in ("linux", "macos"):
        _native(out, environment, args, ca)
    elif environment == "docker-run":
        _docker_run(out, args, ca)
    elif environment == "docker-compose":
        _docker_compose(out, args, ca)
    elif environment == "docker-exec":
        _docker_exec(out, args, ca)
    else:
        _kubernetes(out, args, ca)
    return out
