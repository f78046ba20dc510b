"""The agent the Cloud serves: a wheel of the Cloud's own Tether plus a
wheelhouse of every dependency, so a node installs with nothing fetched from
anywhere else (kickstart.sh runs `pip install --no-index --find-links`).

A bundle is one flat directory of wheels with `SHA256SUMS` (sha256sum's
format) and `manifest.json` (version, agent wheel, platforms). It comes from:

- `--agent-bundle DIR` (serve / quickstart): a bundle made elsewhere with
  `tether-cloud agent-bundle`, e.g. for an air-gapped Cloud; served as it is.
- otherwise, at first need, DATA_DIR/agent-bundle/KEY: the wheel of the
  running Tether (packed from its own files, no build tool or index needed)
  and, while a package index is reachable, the wheelhouse for this machine's
  platform (`pip wheel`). KEY changes with the running code, so an upgraded
  Cloud serves its new version.

Routes: `GET /downloads/` lists (HTML, or JSON with `?format=json` or
`Accept: application/json`); `GET /downloads/NAME` serves a file the manifest
lists, and nothing else (404). `GET /helm/tether-VERSION.tgz` serves the Helm
chart (tether.cloud.helm_chart).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import html
import importlib.metadata
import io
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

import tether
from tether import __version__
from tether.cloud import helm_chart

SUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
PIP_TIMEOUT = 900.0


class BundleError(Exception):
    """A bundle cannot be made or read; the message says why and what to do."""


@dataclass(frozen=True)
class BundleFile:
    name: str
    sha256: str
    size: int


@dataclass
class Bundle:
    path: Path
    version: str
    agent_wheel: str
    platforms: list[str]
    files: dict[str, BundleFile]
    # Why the wheelhouse is incomplete (only the agent wheel), when it is.
    problem: str | None = None

    def as_json(self, base_url: str) -> dict[str, Any]:
        return {
            "version": self.version,
            "agent_wheel": self.agent_wheel,
            "platforms": self.platforms,
            "complete": self.problem is None,
            "problem": self.problem,
            "checksums": f"{base_url}/downloads/{SUMS}",
            "files": [
                {
                    "name": f.name,
                    "sha256": f.sha256,
                    "size": f.size,
                    "url": f"{base_url}/downloads/{f.name}",
                }
                for f in sorted(self.files.values(), key=lambda f: f.name)
            ],
        }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def seal(
    out: Path, version: str, agent_wheel: str, platforms: list[str], problem: str | None
) -> Bundle:
    """Write SHA256SUMS and manifest.json for the wheels in `out`."""
    files = {
        p.name: BundleFile(p.name, sha256_file(p), p.stat().st_size)
        for p in sorted(out.glob("*.whl"))
    }
    (out / SUMS).write_text("".join(f"{f.sha256}  {f.name}\n" for f in files.values()))
    manifest = {
        "version": version,
        "agent_wheel": agent_wheel,
        "platforms": platforms,
        "problem": problem,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle(out, version, agent_wheel, platforms, files, problem)


def load_bundle(path: Path) -> Bundle:
    """Read a bundle and check every file against SHA256SUMS."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        sums = (path / SUMS).read_text().splitlines()
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"{path} is not an agent bundle ({exc}): make one with "
            "`tether-cloud agent-bundle --output DIR`"
        ) from exc
    files: dict[str, BundleFile] = {}
    for line in sums:
        digest, _, name = line.partition("  ")
        f = path / name
        # Only plain names: a bundle never points outside itself.
        if not name or "/" in name or name.startswith(".") or not f.is_file():
            raise BundleError(f"{path}/{SUMS} lists {name!r}, which is not a file of the bundle")
        if sha256_file(f) != digest:
            raise BundleError(f"{f} does not match its checksum in {SUMS}: make the bundle again")
        files[name] = BundleFile(name, digest, f.stat().st_size)
    if manifest.get("agent_wheel") not in files:
        raise BundleError(f"{path}/{MANIFEST} names an agent wheel the bundle does not hold")
    return Bundle(
        path,
        str(manifest["version"]),
        str(manifest["agent_wheel"]),
        [str(p) for p in manifest.get("platforms", [])],
        files,
        manifest.get("problem"),
    )


# -- the wheel of the running Tether -----------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _package_files() -> list[tuple[str, bytes]]:
    root = Path(tether.__file__).parent
    out: list[tuple[str, bytes]] = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root.parent)
        if f.is_file() and "__pycache__" not in rel.parts and f.suffix not in (".pyc", ".pyo"):
            out.append((rel.as_posix(), f.read_bytes()))
    return out


def source_key() -> str:
    """Changes whenever the running Tether's code or metadata changes."""
    h = hashlib.sha256(__version__.encode())
    for name, data in _package_files():
        h.update(name.encode() + b"\0" + data + b"\0")
    dist = importlib.metadata.distribution("tether")
    h.update((dist.read_text("METADATA") or "").encode())
    return h.hexdigest()[:16]


def build_agent_wheel(out_dir: Path) -> Path:
    """tether-VERSION-py3-none-any.whl from the running Tether's own files and
    installed metadata: works for a source tree and an installed Cloud alike,
    without an index or a build backend."""
    dist = importlib.metadata.distribution("tether")
    metadata = dist.read_text("METADATA")
    entry_points = dist.read_text("entry_points.txt")
    if not metadata or dist.version != __version__:
        raise BundleError(
            f"the installed metadata of tether ({dist.version}) is not that of the running "
            f"code ({__version__}): reinstall it (pip install -e . or the wheel)"
        )
    info = f"tether-{__version__}.dist-info"
    wheel_meta = (
        "Wheel-Version: 1.0\nGenerator: tether-cloud\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entries = [
        *_package_files(),
        (f"{info}/METADATA", metadata.encode()),
        (f"{info}/WHEEL", wheel_meta.encode()),
    ]
    if entry_points:
        entries.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, data in entries:
        writer.writerow([name, _record_hash(data), len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    entries.append((f"{info}/RECORD", record.getvalue().encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"tether-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            # A fixed date: the same code gives the same bytes (and checksum).
            zi = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    return path


# -- the wheelhouse ----------------------------------------------------------


def _pip(args: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        check=False,
    )
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-6:])
        raise BundleError(f"pip {args[0]} failed:\n{tail}")


def native_platform() -> str:
    return f"{sysconfig.get_platform()} cp{sys.version_info.major}{sys.version_info.minor}"


def make_bundle(output: Path, platforms: Sequence[str] = (), pythons: Sequence[str] = ()) -> Bundle:
    """A bundle in `output` (which must not exist or be empty): the agent wheel,
    every dependency as a wheel for this machine (`pip wheel`, which also turns
    pure-Python sdists into wheels), then, for each --platform and --python, the
    binary wheels (`pip download --only-binary :all:`). Needs an index."""
    if output.exists() and any(output.iterdir()):
        raise BundleError(f"{output} is not empty: give a new directory with --output")
    output.mkdir(parents=True, exist_ok=True)
    wheel = build_agent_wheel(output)
    _pip(["wheel", "-q", "--find-links", str(output), "-w", str(output), str(wheel)])
    done = [native_platform()]
    for py in pythons or [f"{sys.version_info.major}.{sys.version_info.minor}"]:
        for plat in platforms:
            _pip(
                [
                    "download",
                    "-q",
                    "--only-binary",
                    ":all:",
                    "--platform",
                    plat,
                    "--python-version",
                    py,
                    "--implementation",
                    "cp",
                    "--find-links",
                    str(output),
                    "-d",
                    str(output),
                    str(wheel),
                ]
            )
            done.append(f"{plat} cp{py.replace('.', '')}")
    return seal(output, __version__, wheel.name, done, None)


@dataclass
class BundleSource:
    """Where this Cloud's bundle comes from; made once, at first need."""

    data_dir: Path
    configured: Path | None = None
    _bundle: Bundle | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> Bundle:
        with self._lock:
            if self._bundle is None:
                self._bundle = self._load()
            return self._bundle

    def _load(self) -> Bundle:
        if self.configured is not None:
            return load_bundle(self.configured)
        root = self.data_dir / "agent-bundle"
        key = source_key()
        cache = root / key
        if (cache / MANIFEST).is_file():
            return load_bundle(cache)
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            make_bundle(work)
        except BundleError as exc:
            shutil.rmtree(work, ignore_errors=True)
            return self._wheel_only(root / f"{key}.wheel-only", exc)
        with contextlib.suppress(OSError):  # another Cloud process may have won the race
            work.rename(cache)
        shutil.rmtree(work, ignore_errors=True)
        return load_bundle(cache)

    @staticmethod
    def _wheel_only(out: Path, why: BundleError) -> Bundle:
        """No index here: serve the agent wheel alone and say what is missing
        (not cached as a bundle: the next start tries the wheelhouse again)."""
        shutil.rmtree(out, ignore_errors=True)
        wheel = build_agent_wheel(out)
        problem = (
            f"the wheelhouse could not be made here ({why}); nodes that lack the "
            "dependencies cannot install. Make a bundle where an index is reachable "
            "(tether-cloud agent-bundle --output DIR) and serve with --agent-bundle DIR"
        )
        return seal(out, __version__, wheel.name, [], problem)


# -- the routes ----------------------------------------------------------------


def _source(request: Request) -> BundleSource:
    state = request.app.state
    src: BundleSource | None = getattr(state, "agent_bundle", None)
    if src is None:
        settings = state.settings
        src = BundleSource(settings.data_dir, getattr(settings, "agent_bundle", None))
        state.agent_bundle = src
    return src


def _headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", "default-src 'none'")
    return response


def _not_found(what: str) -> Response:
    return _headers(
        JSONResponse(
            {"errorMsgKey": "ErrNotFound", "errorMessage": f"{what}: see /downloads/"},
            status_code=404,
        )
    )


async def _bundle_or_error(request: Request) -> Bundle | Response:
    try:
        return await run_in_threadpool(_source(request).get)
    except BundleError as exc:
        return _headers(
            JSONResponse(
                {"errorMsgKey": "ErrAgentBundle", "errorMessage": str(exc)}, status_code=503
            )
        )


def _wants_json(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


async def listing(request: Request) -> Response:
    bundle = await _bundle_or_error(request)
    if isinstance(bundle, Response):
        return bundle
    base = request.app.state.settings.url
    doc = bundle.as_json(base)
    if _wants_json(request):
        return _headers(JSONResponse(doc))
    rows = "".join(
        f'<tr><td><a href="{html.escape(f["name"])}">{html.escape(f["name"])}</a></td>'
        f"<td>{f['size']}</td><td><code>{f['sha256']}</code></td></tr>"
        for f in doc["files"]
    )
    problem = f"<p><strong>{html.escape(bundle.problem)}</strong></p>" if bundle.problem else ""
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Tether agent downloads'
        f"</title></head><body><h1>Tether agent {html.escape(bundle.version)}</h1>{problem}"
        f"<p>Platforms: {html.escape(', '.join(bundle.platforms) or 'none')}. "
        f'Checksums: <a href="{SUMS}">{SUMS}</a>. Install with kickstart.sh, or '
        "<code>pip install --no-index --find-links DIR tether</code> from these files."
        f"</p><table><tr><th>file</th><th>bytes</th><th>SHA-256</th></tr>{rows}</table>"
        "</body></html>"
    )
    return _headers(HTMLResponse(page))


async def download(request: Request) -> Response:
    name = request.path_params["name"]
    bundle = await _bundle_or_error(request)
    if isinstance(bundle, Response):
        return bundle
    # Only names the bundle lists: nothing else on disk is reachable from here.
    if name in (SUMS, MANIFEST):
        return _headers(FileResponse(bundle.path / name, media_type="text/plain; charset=utf-8"))
    if name not in bundle.files:
        return _not_found(f"no file {name!r} here")
    return _headers(
        FileResponse(bundle.path / name, media_type="application/octet-stream", filename=name)
    )


async def chart(request: Request) -> Response:
    """The Helm chart, so `helm install tether CLOUD/helm/tether-VERSION.tgz`
    works from the Cloud alone (Connect Nodes, Kubernetes)."""
    name = helm_chart.archive_name()
    if request.path_params["name"] != name:
        return _not_found(f"no chart here but /helm/{name}")
    return _headers(
        Response(
            helm_chart.archive(),
            media_type="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    )


def routes() -> list[Route]:
    return [
        Route("/downloads/", listing, methods=["GET"]),
        Route("/downloads/{name:path}", download, methods=["GET"]),
        Route("/helm/{name}", chart, methods=["GET"]),
    ]


# -- `tether-cloud agent-bundle` ---------------------------------------------


def cmd_agent_bundle(output: Path, platforms: Sequence[str], pythons: Sequence[str]) -> str:
    """Make a bundle; the text to print."""
    bundle = make_bundle(output, platforms, pythons)
    size = sum(f.size for f in bundle.files.values())
    return (
        f"agent bundle for tether {bundle.version} in {output}: {len(bundle.files)} wheels, "
        f"{size / 2**20:.1f} MiB, platforms {', '.join(bundle.platforms)}\n"
        f"serve it with: tether-cloud serve --agent-bundle {output}"
    )
