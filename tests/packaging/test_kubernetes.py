"""packaging/kubernetes/ (the plain manifest of docs/containers.md: one claimed
agent per node, no parent; Connect Nodes shows the Helm chart instead, see
test_helm_install.py) is valid against the current Kubernetes schema (strict),
keeps the node's identity on the node keyed by its node name, reads the host
under /host, and leaves the claim settings to the Secret docs/containers.md
has the user create. A pod started the way the manifest says (its env resolved
from that Secret and the CA ConfigMap, its state directory from the hostPath
and the node name) claims once per node."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.fixtures.cloud import Cloud
from tests.fixtures.packaging import ENTRYPOINT, REPO, ContainerStarter
from tether.cloud.web import commands
from tether.paths import AgentPaths

MANIFEST = REPO / "packaging" / "kubernetes" / "tether-agent.yaml"
CONTAINERS_DOC = REPO / "docs" / "containers.md"
ROOT = AgentPaths(Path("/"))  # TETHER_PREFIX=/ in the image
URL = "https://cloud.example.com:19443"
TOKEN = "tct_abcdefgh_" + "x" * 43
CA = commands.CloudCa(URL + "/ca.pem", "AB:CD")


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def daemonset() -> dict[str, Any]:
    [ds] = [d for d in docs() if d["kind"] == "DaemonSet"]
    return ds


def pod_spec() -> dict[str, Any]:
    return dict(daemonset()["spec"]["template"]["spec"])


def agent_container() -> dict[str, Any]:
    [agent] = pod_spec()["containers"]
    return dict(agent)


def shown(environment: str = "kubernetes", **kw: Any) -> commands.Instructions:
    return commands.build(
        environment, URL, TOKEN, kw.get("rooms", ["r1", "r2"]), kw.get("ca"), kw.get("proxy", "")
    )


def doc_secret(url: str, token: str, rooms: str, proxy: str = "") -> dict[str, str]:
    """The Secret docs/containers.md has the user create for the manifest:
    {key: value}, the optional keys only when given."""
    out = {"token": token, "url": url}
    if rooms:
        out["rooms"] = rooms
    if proxy:
        out["proxy"] = proxy
    return out


def test_the_docs_create_the_secret_and_configmap_the_manifest_reads() -> None:
    text = CONTAINERS_DOC.read_text()
    for key in doc_secret(URL, TOKEN, "r1", "http://p:3128"):
        assert f"{key}=" in text.split("## Kubernetes", 1)[1], key
    assert "kubectl apply -f packaging/kubernetes/tether-agent.yaml" in text


def test_valid_against_the_current_kubernetes_schema_strict() -> None:
    version = latest_version()
    assert tuple(int(p) for p in version.split(".")[:2]) >= (1, 35)
    for doc in docs():
        kubernetes_validate.validate(doc, version, strict=True)
    # Strict means strict: a misspelt field is refused, not ignored.
    typo = copy.deepcopy(daemonset())
    mount = typo["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    mount["subPathExp"] = mount.pop("subPathExpr")
    with pytest.raises(kubernetes_validate.ValidationError, match="subPathExp"):
        kubernetes_validate.validate(typo, version, strict=True)


def test_no_object_an_apply_would_overwrite() -> None:
    kinds = [d["kind"] for d in docs()]
    assert kinds == ["DaemonSet"]  # the Secret, the ConfigMap and the namespace are the user's
    assert "stringData" not in MANIFEST.read_text() and "REPLACE" not in MANIFEST.read_text()


def test_the_manifest_reads_exactly_the_documented_secret() -> None:
    literals = doc_secret(URL, TOKEN, "r1,r2", "http://proxy.lan:3128")
    assert daemonset()["metadata"]["namespace"] == commands.K8S_NAMESPACE
    env = {e["name"]: e for e in agent_container()["env"]}
    refs = {
        n: e["valueFrom"]["secretKeyRef"]
        for n, e in env.items()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {r["name"] for r in refs.values()} == {commands.K8S_SECRET}
    assert {n: r["key"] for n, r in refs.items()} == {
        "TETHER_CLAIM_TOKEN": "token",
        "TETHER_CLAIM_URL": "url",
        "TETHER_CLAIM_ROOMS": "rooms",
        "TETHER_CLAIM_PROXY": "proxy",
    }
    assert set(literals) == {r["key"] for r in refs.values()}
    # Keys left out when empty are optional in the manifest, the others are not.
    minimal = doc_secret(URL, TOKEN, "")
    for ref in refs.values():
        assert ref.get("optional", False) == (ref["key"] not in minimal), ref
    # The CA: the same ConfigMap Connect Nodes creates for the chart, optional
    # (a Cloud with a public certificate).
    cm = env["TETHER_CLAIM_CA"]["valueFrom"]["configMapKeyRef"]
    assert (cm["name"], cm["key"]) == (commands.K8S_CA_CONFIGMAP, "cloud_fullchain.pem")
    assert (
        f"kubectl -n tether create configmap {cm['name']} --from-file={cm['key']}="
        in CONTAINERS_DOC.read_text()
    )
    assert cm["optional"] is True
    assert "TETHER_CLAIM_CA" in ENTRYPOINT.read_text()  # the entrypoint installs it


def _subpath_by_node_name(container: dict[str, Any]) -> dict[str, str]:
    """{mountPath: volume} of the mounts keyed by $(NODE_NAME), checking the variable."""
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    return {
        m["mountPath"]: m["name"]
        for m in container["volumeMounts"]
        if m.get("subPathExpr") == "$(NODE_NAME)"
    }


def test_state_lives_on_the_node_under_its_node_name() -> None:
    spec = pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    agent = agent_container()
    keyed = _subpath_by_node_name(agent)
    lib = keyed[commands.LIB_DIR]
    assert commands.LIB_DIR == str(ROOT.lib_dir)
    assert volumes[lib]["hostPath"] == {"path": "/var/lib/tether-k8s", "type": "DirectoryOrCreate"}
    assert volumes[keyed[str(ROOT.log_dir)]]["hostPath"]["type"] == "DirectoryOrCreate"
    # The init container hands the same directories to the image's user.
    [init] = spec["initContainers"]
    assert _subpath_by_node_name(init) == keyed
    uid = str(agent["securityContext"]["runAsUser"])
    assert init["command"][:2] == ["chown", f"{uid}:{uid}"]
    assert set(init["command"][2:]) == set(keyed)
    dockerfile = (REPO / "packaging/docker/Dockerfile").read_text()
    assert re.search(rf"^ARG TETHER_UID={uid}$", dockerfile, re.M)
    assert agent["image"] == init["image"] == commands.IMAGE


def test_the_host_is_mounted_under_host_root_read_only() -> None:
    spec = pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    agent = agent_container()
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["TETHER_HOST_ROOT"] == commands.HOST_ROOT
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    for path in commands.HOST_MOUNTS:
        mount = mounts[commands.HOST_ROOT + path]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["hostPath"]["path"] == path
    # The same mounts and setting as the page's docker run command.
    run = shown("docker-run").steps[0].text
    for path in commands.HOST_MOUNTS:
        assert f"-v {path}:{commands.HOST_ROOT}{path}:ro" in run
    assert f"-e TETHER_HOST_ROOT={commands.HOST_ROOT}" in run


def test_probe_and_network() -> None:
    spec = pod_spec()
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    probe = agent_container()["livenessProbe"]["exec"]["command"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert probe[0] in scripts and probe[-1] == "ping"


def _pod_env(cloud: Cloud, node_name: str) -> dict[str, str]:
    """The agent container's environment as the kubelet would build it from the
    manifest, the documented Secret and the CA ConfigMap."""
    assert cloud.ca_file
    secret = doc_secret(cloud.url, cloud.claim_token, cloud.room_ids[1])
    configmap = {"cloud_fullchain.pem": Path(cloud.ca_file).read_text()}
    out: dict[str, str] = {}
    for e in agent_container()["env"]:
        source = e.get("valueFrom", {})
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "spec.nodeName"
            out[e["name"]] = node_name
        elif "secretKeyRef" in source and source["secretKeyRef"]["key"] in secret:
            out[e["name"]] = secret[source["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in source:
            out[e["name"]] = configmap[source["configMapKeyRef"]["key"]]
        else:
            assert source["secretKeyRef"].get("optional"), e
    # The test machine is the "host": its own /proc is what /host/proc would be.
    del out["TETHER_HOST_ROOT"]
    return out


def _pod_on(node_name: str, host: Path, pod: Path) -> Path:
    """A fresh pod's prefix whose /var/lib/tether is the hostPath's $(NODE_NAME) subPath."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    keyed = _subpath_by_node_name(agent_container())
    state = host / volumes[keyed[commands.LIB_DIR]]["hostPath"]["path"].lstrip("/") / node_name
    state.mkdir(parents=True, exist_ok=True)
    lib = AgentPaths(pod).lib_dir
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.symlink_to(state, target_is_directory=True)
    return pod


def test_a_pod_claims_once_per_node_and_never_again(
    cloud: Cloud, start_container: ContainerStarter, tmp_path: Path
) -> None:
    host = tmp_path / "host"

    def start(node: str, pod: str) -> str:
        run = start_container(_pod_on(node, host, tmp_path / pod), _pod_env(cloud, node))
        run.wait_for(lambda: run.info()["aclk-available"], f"the link of {pod} on {node}")
        node_id = run.paths.claimed_id_file.read_text().strip()
        run.stop()
        return node_id

    first = start("node-a", "pod-1")
    # Upgraded or re-created on the same node: a new pod, the same identity.
    assert start("node-a", "pod-2") == first
    second = start("node-b", "pod-3")
    assert second != first
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-audit")
    claimed = [a["node_id"] for a in r.json() if a["result"] == "claimed"]
    assert sorted(claimed) == sorted([first, second])
    listed = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes").json()
    # Each in the room the Secret names (and All nodes, as every node).
    assert {n["id"]: set(n["rooms"]) for n in listed} == {
        first: set(cloud.room_ids[:2]),
        second: set(cloud.room_ids[:2]),
    }
    assert json.dumps(listed).count(cloud.claim_token) == 0
