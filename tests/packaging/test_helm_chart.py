"""packaging/helm/tether/: rendered as `helm template` would (tests/fixtures/helm.py;
no helm binary is installable here), every object is valid against the current
Kubernetes schema (strict); the parent is claimed from the user's Secret with
its state on a PersistentVolumeClaim; the children stream to the parent's
Service; and real agents started with the rendered tether.conf files and the
environment the kubelet would give them stream, each node's child keeping its
identity when its pod is re-created with an empty volume."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.fixtures.agent import AgentLauncher, RunningAgent
from tests.fixtures.common import free_port, poll
from tests.fixtures.helm import UnsupportedTemplate, render_chart, render_text
from tests.fixtures.packaging import ENTRYPOINT, REPO
from tether.agent.node_name_identity import guid_for_node

CHART = REPO / "packaging" / "helm" / "tether"
SECRET = {"token": "tct_abcdefgh_" + "x" * 43, "stream-api-key": "k8s-stream-key-0123456789"}


def objects(**overrides: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in render_chart(CHART, overrides)}


def container(obj: dict[str, Any]) -> dict[str, Any]:
    [c] = obj["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_the_chart_is_a_helm_chart() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "tether" and meta["version"]
    assert "helm" in (CHART / "README.md").read_text().lower()


def test_templates_keep_to_the_subset_the_renderer_checks() -> None:
    with pytest.raises(UnsupportedTemplate, match="subset"):
        render_text("{{ if .Values.x }}y{{ end }}", {"x": 1}, {})
    with pytest.raises(UnsupportedTemplate, match="no value"):
        render_text("{{ .Values.missing }}", {}, {})
    with pytest.raises(UnsupportedTemplate, match="not a scalar"):
        render_text("{{ .Values.m }}", {"m": {"a": 1}}, {})
    assert render_text("{{ .Values.s | quote }}", {"s": 'a"b'}, {}) == '"a\\"b"'
    render_chart(CHART)  # every template renders


def test_every_object_is_valid_against_the_current_schema_strict() -> None:
    version = latest_version()
    rendered = objects(cloud={"url": "https://cloud.example.com:19443", "rooms": "r1,r2"})
    for obj in rendered.values():
        kubernetes_validate.validate(obj, version, strict=True)
    # Strict means strict: a misspelt field is refused.
    typo = copy.deepcopy(rendered[("Deployment", "tether-parent")])
    typo["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="volumeMount"):
        kubernetes_validate.validate(typo, version, strict=True)


def test_no_secret_in_the_chart_and_every_object_in_the_release_namespace() -> None:
    rendered = objects()
    kinds = sorted(k for k, _ in rendered)
    assert "Secret" not in kinds
    assert {"Deployment", "DaemonSet", "Service", "PersistentVolumeClaim", "ClusterRole"} <= set(
        kinds
    )
    for (kind, _), obj in render_ns("observability").items():
        if kind not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "observability", kind


def render_ns(namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in render_chart(CHART, namespace=namespace)}


def test_the_parent_is_claimed_from_the_users_secret_with_state_on_a_claim() -> None:
    rendered = objects(cloud={"url": "https://c:1", "rooms": "r1", "proxy": "socks5h://p:1080"})
    dep = rendered[("Deployment", "tether-parent")]
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    c = container(dep)
    env = {e["name"]: e for e in c["env"]}
    assert env["TETHER_CLAIM_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "tether-claim",
        "key": "token",
    }
    assert env["TETHER_CLAIM_URL"]["value"] == "https://c:1"
    assert env["TETHER_CLAIM_ROOMS"]["value"] == "r1"
    assert env["TETHER_CLAIM_PROXY"]["value"] == "socks5h://p:1080"
    assert env["TETHER_CLAIM_CA"]["valueFrom"]["configMapKeyRef"]["optional"] is True
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    state = volumes[mounts["/var/lib/tether"]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", state) in rendered
    assert spec["securityContext"]["fsGroup"] == c["securityContext"]["runAsUser"]
    # Options only: the image's entrypoint prepares (CA, claim notes) and runs the agent.
    child = container(rendered[("DaemonSet", "tether-child")])
    for args in (c["args"], child["args"]):
        assert args[0] == "-c" and args[1].startswith("/etc/tether/conf/")
    assert 'exec tether-agent -D "$@"' in ENTRYPOINT.read_text()


def test_children_stream_to_the_parents_service_with_rbac_for_labels() -> None:
    rendered = objects()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    svc = rendered[("Service", values["stream"]["parentHost"])]
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    conf = rendered[("ConfigMap", "tether-conf")]["data"]
    assert f"destination = {svc['metadata']['name']}:{ports['stream']}" in conf["child.conf"]
    assert f"bind = 0.0.0.0:{ports['stream']}" in conf["parent.conf"]
    ds = rendered[("DaemonSet", "tether-child")]
    env = {e["name"]: e for e in container(ds)["env"]}
    assert env["TETHER_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "TETHER_CLAIM_TOKEN" not in env  # children are never claimed themselves
    [rule] = rendered[("ClusterRole", "tether-tether")]["rules"]
    assert set(rule["resources"]) == {"pods", "nodes"}
    assert set(rule["verbs"]) == {"get", "list", "watch"}
    binding = rendered[("ClusterRoleBinding", "tether-tether")]
    assert binding["subjects"][0]["name"] == ds["spec"]["template"]["spec"]["serviceAccountName"]


def _kubelet_env(obj: dict[str, Any], node_name: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it from the Secret."""
    out: dict[str, str] = {}
    for e in container(obj)["env"]:
        src = e.get("valueFrom", {})
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "fieldRef" in src:
            out[e["name"]] = node_name
        elif "secretKeyRef" in src:
            out[e["name"]] = SECRET[src["secretKeyRef"]["key"]]
    out.pop("TETHER_HOST_ROOT", None)  # the test machine is the node
    for k in [k for k in out if k.startswith("TETHER_CLAIM_")]:
        del out[k]  # no Cloud here: the claim itself is tested in test_kubernetes.py
    return out


def test_rendered_agents_stream_and_a_nodes_child_keeps_its_identity(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    port = free_port()
    rendered = objects(stream={"parentHost": "127.0.0.1", "port": port})
    conf = rendered[("ConfigMap", "tether-conf")]["data"]
    launch = AgentLauncher(tmp_path_factory)
    try:
        parent = launch(
            config=conf["parent.conf"],
            env=_kubelet_env(rendered[("Deployment", "tether-parent")], ""),
        )
        ds = rendered[("DaemonSet", "tether-child")]

        def pod_on(node: str) -> RunningAgent:  # a new pod: a fresh emptyDir
            return launch(config=conf["child.conf"], env=_kubelet_env(ds, node))

        def children() -> dict[str, dict[str, Any]]:
            stream = parent.info()["stream"] or {}
            return {c["machine_guid"]: c for c in stream.get("children", [])}

        a1, b = pod_on("node-a"), pod_on("node-b")
        assert a1.info()["machine_guid"] == guid_for_node("node-a")
        assert b.info()["machine_guid"] == guid_for_node("node-b")
        poll(
            lambda: len(children()) == 2 and all(c["reachable"] for c in children().values()),
            60,
            "both children streaming",
        )
        a1.stop()
        poll(lambda: not children()[guid_for_node("node-a")]["reachable"], 60, "node-a gone")
        a2 = pod_on("node-a")  # re-created (an upgrade): empty volume, same node
        assert a2.prefix != a1.prefix
        assert a2.info()["machine_guid"] == guid_for_node("node-a")
        again = poll(
            lambda: (c := children().get(guid_for_node("node-a"))) and c["reachable"] and c,
            60,
            "node-a back",
        )
        assert again["connections"] == 2 and len(children()) == 2

        # Its charts arrive as the new pod collects them (reachable comes first).
        def uptime_points() -> int:
            path = f"/host/{guid_for_node('node-a')}/api/v1/data"
            r = parent.get(path, chart="system.uptime")
            return int(r.json()["points"]) if r.status_code == 200 else 0

        poll(uptime_points, 30, "node-a's system.uptime through the parent")
    finally:
        launch.stop_all()


def test_the_rendered_child_conf_needs_no_key_in_the_file() -> None:
    conf = objects()[("ConfigMap", "tether-conf")]["data"]
    assert SECRET["stream-api-key"] not in conf["child.conf"] + conf["parent.conf"]
    assert "api key" not in conf["child.conf"]
