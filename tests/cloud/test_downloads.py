"""/downloads/: the agent wheel and its wheelhouse, served by a real Cloud, with
checksums; nothing else on the Cloud's disk is reachable through it; and
`tether-cloud agent-bundle` for other platforms."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, free_port
from tests.fixtures.containers import agent_bundle
from tests.fixtures.rawhttp import RawConnection
from tether import __version__
from tether.cloud import downloads


@pytest.fixture
def bundled(start_cloud: Callable[..., Cloud]) -> Cloud:
    return start_cloud("--agent-bundle", str(agent_bundle().path))


def test_listing_in_json_has_every_file_with_its_checksum(bundled: Cloud) -> None:
    r = bundled.api("GET", "/downloads/?format=json", token="")
    assert r.status_code == 200
    doc = r.json()
    assert doc["version"] == __version__ and doc["complete"] is True
    assert doc["agent_wheel"] == f"tether-{__version__}-py3-none-any.whl"
    names = {f["name"] for f in doc["files"]}
    for dep in ("msgspec", "cryptography", "websockets", "psutil", "httpx"):
        assert any(n.startswith(dep + "-") for n in names), dep
    sums = bundled.api("GET", "/downloads/SHA256SUMS", token="").text.splitlines()
    assert sorted(sums) == sorted(f"{f['sha256']}  {f['name']}" for f in doc["files"])
    wheel = bundled.api("GET", f"/downloads/{doc['agent_wheel']}", token="")
    assert wheel.status_code == 200
    [entry] = [f for f in doc["files"] if f["name"] == doc["agent_wheel"]]
    assert hashlib.sha256(wheel.content).hexdigest() == entry["sha256"]
    assert entry["url"] == f"{bundled.url}/downloads/{doc['agent_wheel']}"
    with zipfile.ZipFile(BytesIO(wheel.content)) as z:
        assert "tether/claim/kickstart.sh" in z.namelist()
        assert (
            "tether-agent = " in z.read(f"tether-{__version__}.dist-info/entry_points.txt").decode()
        )


def test_listing_is_html_for_a_browser_and_json_by_accept(bundled: Cloud) -> None:
    page = bundled.api("GET", "/downloads/", token="", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    assert f"Tether agent {__version__}" in page.text and "SHA256SUMS" in page.text
    doc = bundled.api("GET", "/downloads/", token="", headers={"Accept": "application/json"})
    assert doc.json()["version"] == __version__


ATTACKS = [
    "/downloads/../secret.key",
    "/downloads/..%2fsecret.key",
    "/downloads/%2e%2e/%2e%2e/secret.key",
    "/downloads/SHA256SUMS/../../cloud.db",
    "/downloads//etc/passwd",
    "/downloads/cloud.db",
    "/downloads/ca-key.pem",
    "/downloads/nosuch-1.0-py3-none-any.whl",
]


def test_paths_outside_the_bundle_answer_404(bundled: Cloud) -> None:
    assert bundled.ca_file
    for path in ATTACKS:
        with RawConnection(bundled.url, bundled.ca_file) as conn:
            r = conn.request("GET", path)
        assert r.status == 404, (path, r.body[:200])
        assert b"PRIVATE KEY" not in r.body and b"root:" not in r.body, path
        assert b"SQLite" not in r.body, path


def test_without_a_bundle_the_cloud_builds_one_at_first_need(cloud: Cloud) -> None:
    """The default: the running Tether's wheel plus this platform's wheelhouse,
    made into the data dir (this needs the index once, as a Cloud would)."""
    # The first request waits while the Cloud makes the bundle.
    doc = cloud.api("GET", "/downloads/?format=json", token="", timeout=600).json()
    assert doc["complete"] is True, doc["problem"]
    assert doc["platforms"] == [downloads.native_platform()]
    [made] = [p for p in (cloud.data_dir / "agent-bundle").iterdir() if not p.name.startswith(".")]
    assert (made / "SHA256SUMS").read_text() == cloud.api(
        "GET", "/downloads/SHA256SUMS", token=""
    ).text


def test_with_no_index_it_serves_the_agent_wheel_and_says_what_is_missing(
    start_cloud: Callable[..., Cloud], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{free_port()}/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    cloud = start_cloud()
    doc = cloud.api("GET", "/downloads/?format=json", token="", timeout=300).json()
    assert doc["complete"] is False
    assert "--agent-bundle DIR" in doc["problem"]
    assert [f["name"] for f in doc["files"]] == [f"tether-{__version__}-py3-none-any.whl"]


def test_a_tampered_bundle_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "b"
    shutil.copytree(agent_bundle().path, out)
    victim = next(out.glob("msgspec-*.whl"))
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(downloads.BundleError, match="does not match its checksum"):
        downloads.load_bundle(out)
    (out / "SHA256SUMS").write_text("0" * 64 + "  ../cloud.db\n")
    with pytest.raises(downloads.BundleError, match="not a file of the bundle"):
        downloads.load_bundle(out)


def test_agent_bundle_prepares_another_platform(tmp_path: Path) -> None:
    """`agent-bundle --platform manylinux2014_aarch64`: binary wheels for that
    platform next to this one's, all listed with checksums (needs the index)."""
    out = tmp_path / "bundle"
    r = subprocess.run(
        [
            command("tether-cloud"),
            "agent-bundle",
            "--platform",
            "manylinux2014_aarch64",
            "--python",
            "3.11",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "serve it with: tether-cloud serve --agent-bundle" in r.stdout
    bundle = downloads.load_bundle(out)
    assert "manylinux2014_aarch64 cp311" in bundle.platforms
    names = list(bundle.files)
    assert any(n.startswith("msgspec-") and "aarch64" in n for n in names)
    machine = downloads.native_platform().split()[0].split("-")[-1]  # e.g. x86_64
    assert any(n.startswith("msgspec-") and machine in n for n in names)
    assert json.loads((out / "manifest.json").read_text())["version"] == __version__
    again = subprocess.run(
        [command("tether-cloud"), "agent-bundle", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert again.returncode == 1 and "is not empty" in again.stderr
