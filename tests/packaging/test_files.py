"""The Dockerfile and compose file agree with the entrypoint, the agent's path
layout and the Cloud's copy-ready commands (Kubernetes: test_kubernetes.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.packaging import ENTRYPOINT, REPO
from tether.cloud.web import commands
from tether.node.config import DEFAULTS
from tether.paths import AgentPaths

yaml = pytest.importorskip("yaml")

DOCKER_DIR = REPO / "packaging" / "docker"
ROOT = AgentPaths(Path("/"))  # TETHER_PREFIX=/ in the image


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER_DIR / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return out


def instr(name: str) -> list[str]:
    return [args for word, args in dockerfile() if word == name]


def test_dockerfile_entrypoint_is_the_copied_script() -> None:
    [entry] = instr("ENTRYPOINT")
    argv = json.loads(entry)  # exec form, so signals reach the agent
    copies = [shlex.split(a) for a in instr("COPY")]
    script = [c for c in copies if c[-2] == "packaging/docker/entrypoint.sh"]
    assert script, "the Dockerfile does not copy packaging/docker/entrypoint.sh"
    assert argv == [script[0][-1]]
    assert "--chmod=0755" in script[0]
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash")
    assert "exec tether-agent -D" in ENTRYPOINT.read_text()


def test_dockerfile_layout_matches_the_agent_paths() -> None:
    # A plain Debian by default; the container tests build on their own Debian base.
    assert instr("FROM") == ["${BASE}"]
    assert "BASE=debian:bookworm-slim" in instr("ARG")
    env = " ".join(instr("ENV"))
    assert re.search(r"\bTETHER_PREFIX=/(\s|$)", env)
    [volumes] = instr("VOLUME")
    assert set(json.loads(volumes)) == {str(ROOT.config_dir), str(ROOT.lib_dir), str(ROOT.log_dir)}
    run = " ".join(instr("RUN"))
    for d in (ROOT.config_dir, ROOT.cloud_dir, ROOT.log_dir, ROOT.run_dir):
        assert str(d) in run, f"{d} is not created in the image"
    assert instr("USER") == ["tether"]
    assert "useradd" in run and " tether" in run
    assert instr("EXPOSE") == [DEFAULTS["web"]["default port"]]


def test_healthcheck_uses_an_installed_command() -> None:
    [health] = instr("HEALTHCHECK")
    cmd = json.loads(health.split("CMD", 1)[1])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[0] == "tether-cli" and cmd[0] in scripts
    assert cmd[-1] == "ping"


def test_build_context_sends_what_the_dockerfile_copies() -> None:
    ignore = (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    build_args = dict(a.split("=", 1) for a in instr("ARG") if "=" in a)
    for args in instr("COPY"):
        for src in [a for a in shlex.split(args) if not a.startswith("--")][:-1]:
            if src.startswith("${"):
                # The wheels (tether-cloud agent-bundle --output build/wheels): made, not kept.
                src = build_args[src[2 : src.index("}")]]
                assert src.rstrip("/") in allowed, f"{src} is excluded from the build context"
                continue
            assert src.rstrip("/") in allowed, f"{src} is excluded from the build context"
            assert (REPO / src).exists()


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCKER_DIR / "docker-compose.yml").read_text()))


def test_compose_matches_the_cloud_commands() -> None:
    doc = _compose()
    svc = doc["services"]["tether"]
    assert svc["image"] == commands.IMAGE
    assert svc["container_name"] == "tether"
    assert svc["build"]["dockerfile"] == "packaging/docker/Dockerfile"
    assert (DOCKER_DIR / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
    mounts = dict(v.split(":", 1) for v in svc["volumes"] if not v.lstrip().startswith("#"))
    named = {k for k in mounts if not k.startswith(("/", "."))}
    assert named <= set(doc["volumes"]), "every named volume is declared"
    assert mounts["tetherlib"] == commands.LIB_DIR == str(ROOT.lib_dir)
    env = dict(e.split("=", 1) for e in svc["environment"])
    assert {"TETHER_CLAIM_TOKEN", "TETHER_CLAIM_URL"} <= set(env)


def test_the_build_context_builds_the_package(tmp_path: Path) -> None:
    """What `pip install /tmp/tether-src` in the image gets: only the files the
    Dockerfile copies. It must build a wheel with the agent's commands in it."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(REPO / "pyproject.toml", ctx)
    shutil.copy(REPO / "README.md", ctx)
    shutil.copytree(
        REPO / "src", ctx / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ctx)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    [wheel] = tmp_path.glob("tether-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        [ep] = [n for n in names if n.endswith("entry_points.txt")]
        entry_points = z.read(ep).decode()
    for script in ("tether-agent", "tether-cli", "tether-claim"):
        assert f"{script} = " in entry_points
    assert "tether/agent/main.py" in names
    assert "tether/claim/kickstart.sh" in names


# Skipped only off CI: .ci/run installs shellcheck, so there a missing one fails.
@pytest.mark.skipif(
    shutil.which("shellcheck") is None and not os.environ.get("CI"),
    reason="shellcheck is not installed (apt-get install shellcheck)",
)
def test_shell_scripts_pass_shellcheck() -> None:
    scripts = [ENTRYPOINT, REPO / "src/tether/claim/kickstart.sh", *sorted(REPO.glob("scripts/*"))]
    r = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stdout
