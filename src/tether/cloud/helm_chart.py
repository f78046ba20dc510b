"""The Helm chart the Cloud serves, so `helm install tether https://CLOUD/helm/tether-VERSION.tgz`
needs nothing from the internet.

The chart's files are a copy of `packaging/helm/tether/` carried in the
Cloud's package (`tether/cloud/helm/tether/`; a test keeps the two identical).
The archive is made from them in memory, the way `helm package` lays it out
(one top directory `tether/`), and reproducibly: the same files give the same
bytes, so its SHA-256 is stable for a release.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import re
import tarfile
from pathlib import Path

CHART_DIR = Path(__file__).with_name("helm") / "tether"
NAME = "tether"
_VERSION = re.compile(r"^version:\s*[\"']?([0-9A-Za-z.+-]+)[\"']?\s*$", re.M)
# The chart's files: Chart.yaml, values.yaml and the templates (no README in the package).
_PATTERNS = ("Chart.yaml", "values.yaml", "templates/*.yaml")


def chart_files() -> list[Path]:
    return sorted(p for pattern in _PATTERNS for p in CHART_DIR.glob(pattern))


def version() -> str:
    """The chart's `version` (Chart.yaml), which names the archive as helm does."""
    found = _VERSION.search((CHART_DIR / "Chart.yaml").read_text())
    if not found:
        raise ValueError(f"{CHART_DIR / 'Chart.yaml'} has no version")
    return found.group(1)


def archive_name() -> str:
    return f"{NAME}-{version()}.tgz"


@functools.lru_cache(maxsize=1)
def archive() -> bytes:
    """The chart as a .tgz: fixed mode, owner and times, files in sorted order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in chart_files():
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{NAME}/{path.relative_to(CHART_DIR).as_posix()}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def sha256() -> str:
    return hashlib.sha256(archive()).hexdigest()
