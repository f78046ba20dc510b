"""The copy-ready commands of the Connect Nodes page, one per environment.

Pure functions of (Cloud URL, token, rooms, CA): easy to test, and the only
place that knows how each environment claims a node.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

ENVIRONMENTS: dict[str, str] = {
    "linux": "Linux",
    "docker-run": "Docker run",
    "docker-compose": "Docker compose",
    "docker-exec": "Docker exec",
    "macos": "macOS",
    "kubernetes": "Kubernetes",
}
LIB_DIR = "/var/lib/tether"
IMAGE = "tether/agent:latest"
CA_NAME = "tether-ca.pem"


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


def _ca_download(ca: CloudCa) -> Step:
    # -k only for this one download: the fingerprint check right after is what
    # establishes trust, as with any self-signed CA fetched over the network.
    text = (
        f"curl -fsSk -o {CA_NAME} {q(ca.url)}\n"
        f"openssl x509 -in {CA_NAME} -noout -fingerprint -sha256\n"
        f"# must print: SHA256 Fingerprint={ca.sha256}"
    )
    return Step(
        "Trust this Cloud's private CA",
        text,
        note="This Cloud uses its own certificate authority. Download it and compare the "
        "fingerprint with the one printed here before you go on; stop if they differ.",
    )


def _ca_install(lib_dir: str) -> str:
    return f"sudo install -D -m 0644 {CA_NAME} {lib_dir}/cloud.d/cloud_fullchain.pem"


def _kickstart(
    url: str, token: str, rooms: str, ca: CloudCa | None, proxy: str, extra: str = ""
) -> str:
    fetch = f"curl -Ss --cacert {CA_NAME}" if ca else "curl -Ss"
    rooms_arg = f" --claim-rooms {q(rooms)}" if rooms else ""
    proxy_arg = f" --claim-proxy {q(proxy)}" if proxy else ""
    return (
        f"bash <({fetch} {q(url + '/kickstart.sh')}){extra} --claim-token {q(token)}"
        f"{rooms_arg} --claim-url {q(url)}{proxy_arg}"
    )


def claim_command(
    url: str, token: str, rooms: str, proxy: str = "", program: str = "tether-claim"
) -> str:
    rooms_arg = f" -rooms={q(rooms)}" if rooms else ""
    proxy_arg = f" -proxy={q(proxy)}" if proxy else ""
    return f"{program} -token={q(token)}{rooms_arg} -url={q(url)}{proxy_arg}"


PROXY_SCHEMES = ("socks5://", "socks5h://", "http://", "https://")


def check_proxy(proxy: str) -> str:
    """The proxy as typed, if it is a form tether-claim accepts; else ValueError."""
    proxy = proxy.strip()
    if proxy in ("", "none", "env"):
        return proxy
    if (
        proxy.startswith(PROXY_SCHEMES)
        and proxy.split("://", 1)[1]
        and not any(c.isspace() for c in proxy)
    ):
        return proxy
    raise ValueError(
        "the proxy must be none, env, socks5://, socks5h:// or http://[user:pass@]host:port"
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
    rooms = ",".join(room_ids)
    out = Instructions(environment)
    if environment in ("linux", "macos"):
        lib_dir = LIB_DIR if environment == "linux" else "/usr/local/var/lib/tether"
        extra = "" if environment == "linux" else " --prefix /usr/local"
        if ca:
            step = _ca_download(ca)
            step.text += "\n" + _ca_install(lib_dir)
            out.steps.append(step)
        out.steps.append(
            Step(
                "Install the agent if needed and connect the node",
                _kickstart(url, token, rooms, ca, proxy, extra),
                note="Run it as root or as the user the agent runs as. "
                "It prints: Agent was successfully claimed.",
            )
        )
        direct = claim_command(url, token, rooms, proxy)
        if environment == "macos":
            direct = claim_command(url, token, rooms, proxy, "tether-claim --prefix /usr/local")
        out.direct = direct
        out.steps.append(
            Step(
                "Or, where the agent is already installed, claim directly",
                direct,
            )
        )
    elif environment == "docker-run":
        if ca:
            out.steps.append(_ca_download(ca))
        lines = [
            "docker run -d --name=tether \\",
            "  -p 19999:19999 \\",
            "  -v tetherconfig:/etc/tether \\",
            f"  -v tetherlib:{LIB_DIR} \\",
        ]
        if ca:
            lines.append(f'  -v "$PWD/{CA_NAME}:{LIB_DIR}/cloud.d/cloud_fullchain.pem:ro" \\')
        lines += [
            "  -v /proc:/host/proc:ro \\",
            "  -v /sys:/host/sys:ro \\",
            "  -v /etc/os-release:/host/etc/os-release:ro \\",
            "  --restart unless-stopped \\",
            f"  -e TETHER_CLAIM_TOKEN={q(token)} \\",
            f"  -e TETHER_CLAIM_URL={q(url)} \\",
        ]
        if rooms:
            lines.append(f"  -e TETHER_CLAIM_ROOMS={q(rooms)} \\")
        if proxy:
            lines.append(f"  -e TETHER_CLAIM_PROXY={q(proxy)} \\")
        lines.append(f"  {IMAGE}")
        out.steps.append(
            Step(
                "Start the agent container; it connects itself on first start",
                "\n".join(lines),
                note=f"Keep the {LIB_DIR} volume: it holds the node's identity, so restarts "
                "do not create new nodes.",
            )
        )
    elif environment == "docker-compose":
        if ca:
            out.steps.append(_ca_download(ca))
        vols = [
            "      - tetherconfig:/etc/tether",
            f"      - tetherlib:{LIB_DIR}",
        ]
        if ca:
            vols.append(f"      - ./{CA_NAME}:{LIB_DIR}/cloud.d/cloud_fullchain.pem:ro")
        vols += [
            "      - /proc:/host/proc:ro",
            "      - /sys:/host/sys:ro",
            "      - /etc/os-release:/host/etc/os-release:ro",
        ]
        env = [
            f"      - TETHER_CLAIM_TOKEN={token}",
            f"      - TETHER_CLAIM_URL={url}",
        ]
        if rooms:
            env.append(f"      - TETHER_CLAIM_ROOMS={rooms}")
        if proxy:
            env.append(f"      - TETHER_CLAIM_PROXY={proxy}")
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
            ]
        )
        out.steps.append(Step("Save as docker-compose.yml", text, language="yaml"))
        out.steps.append(Step("Start it", "docker compose up -d"))
    elif environment == "docker-exec":
        if ca:
            step = _ca_download(ca)
            step.text += f"\ndocker cp {CA_NAME} tether:{LIB_DIR}/cloud.d/cloud_fullchain.pem"
            out.steps.append(step)
        direct = claim_command(url, token, rooms, proxy)
        out.direct = direct
        out.steps.append(
            Step(
                "Connect a running agent container (replace tether with its name)",
                f"docker exec -it tether {direct}",
                note="It prints: Agent was successfully claimed.",
            )
        )
    else:  # kubernetes
        if ca:
            step = _ca_download(ca)
            step.text += (
                f"\nkubectl create configmap tether-ca --from-file=cloud_fullchain.pem={CA_NAME}"
            )
            out.steps.append(step)
        out.steps.append(
            Step(
                "Store the claiming token in a Secret",
                f"kubectl create secret generic tether-claim --from-literal=token={q(token)}",
            )
        )
        env = [
            "env:",
            "  - name: TETHER_CLAIM_TOKEN",
            "    valueFrom:",
            "      secretKeyRef: {name: tether-claim, key: token}",
            "  - name: TETHER_CLAIM_URL",
            f"    value: {url!s}",
        ]
        if rooms:
            env += ["  - name: TETHER_CLAIM_ROOMS", f'    value: "{rooms}"']
        if proxy:
            env += ["  - name: TETHER_CLAIM_PROXY", f'    value: "{proxy}"']
        env += [
            "volumeMounts:",
            "  - name: tetherlib  # a PersistentVolumeClaim: the node's identity lives here",
            f"    mountPath: {LIB_DIR}",
        ]
        if ca:
            env += [
                "  - name: tether-ca",
                f"    mountPath: {LIB_DIR}/cloud.d/cloud_fullchain.pem",
                "    subPath: cloud_fullchain.pem",
            ]
        out.steps.append(
            Step(
                "Add to the agent container of your parent pod's manifest",
                "\n".join(env),
                language="yaml",
                note="Use a PersistentVolumeClaim for tetherlib: without it every pod restart "
                "would claim a new node.",
            )
        )
    return out
