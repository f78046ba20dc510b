"""The node's CA files as tether.net.tls reads them: a missing one adds
nothing, a broken one is refused with its path and the fix (in-process: the
rule is a pure function of the files)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tether.net.tls import TLSConfigError, client_ssl_context, proxy_ssl_context
from tether.paths import AgentPaths


def _paths(tmp_path: Path) -> AgentPaths:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    return paths


def test_missing_ca_files_leave_the_system_cas(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    system = ssl.create_default_context(ssl.Purpose.SERVER_AUTH).cert_store_stats()
    assert client_ssl_context(paths).cert_store_stats() == system
    assert proxy_ssl_context(paths).cert_store_stats() == system


def test_a_broken_cloud_fullchain_is_named_with_the_fix(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    paths.cloud_fullchain_file.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError) as err:
        client_ssl_context(paths)
    text = str(err.value)
    assert text.startswith(
        f"cannot load the Cloud certificate chain {paths.cloud_fullchain_file}: "
    )
    assert text.endswith(
        ". It must hold PEM certificates (-----BEGIN CERTIFICATE-----); fix or remove it."
    )


def test_a_broken_proxy_ca_is_named_with_the_fix(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    paths.proxy_ca_file.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError) as err:
        proxy_ssl_context(paths)
    text = str(err.value)
    assert text.startswith(f"cannot load the proxy's CA {paths.proxy_ca_file}: ")
    assert text.endswith(". It must hold PEM certificates; fix or remove it.")
