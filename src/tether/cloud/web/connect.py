"""Connect Nodes (admins only), and the two files nodes fetch: the installer
script and, when the Cloud uses its private CA, the CA certificate."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

from tether.cloud import address
from tether.cloud.settings import CloudSettings
from tether.cloud.store import claim_tokens
from tether.cloud.store import spaces as space_store
from tether.cloud.tls import cert_sha256, server_names
from tether.cloud.web import commands
from tether.cloud.web.common import in_db, member_space, nav, page, render, secure, signed_in

KICKSTART = Path(__file__).parent.parent.parent / "claim" / "kickstart.sh"


def private_ca_file(settings: CloudSettings) -> Path | None:
    """The CA agents must trust, when the Cloud serves with its own private CA."""
    if settings.insecure_http or settings.cert_file is not None:
        return None
    path = settings.data_dir / "ca.pem"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=8)
def _fingerprint(path: Path, mtime: float) -> str:
    del mtime  # part of the cache key only
    return cert_sha256(path)


@functools.lru_cache(maxsize=8)
def _names(path: Path, mtime: float) -> tuple[str, ...]:
    del mtime  # part of the cache key only
    return tuple(server_names(path))


def served_names(settings: CloudSettings) -> tuple[str, ...] | None:
    """The names the certificate this Cloud serves is valid for (None: plain HTTP)."""
    path = settings.served_cert_file
    if path is None or not path.is_file():
        return None
    try:
        return _names(path, path.stat().st_mtime)
    except ValueError:
        return None


def private_ca(settings: CloudSettings, url: str) -> commands.CloudCa | None:
    path = private_ca_file(settings)
    if path is None:
        return None
    return commands.CloudCa(f"{url}/ca.pem", _fingerprint(path, path.stat().st_mtime))


def cloud_url(request: Request) -> str:
    """The Cloud URL for the commands: --public-url, else the address this page
    was asked through."""
    settings: CloudSettings = request.app.state.settings
    host = request.headers.get("host", "")
    return address.url_for_page(settings.public_url, settings.scheme, host, settings.url)


@page
async def connect_page(request: Request) -> Response:
    user = await signed_in(request)
    sid = request.path_params["space_id"]
    settings: CloudSettings = request.app.state.settings
    environment = request.query_params.get("env", "linux")
    if environment not in commands.ENVIRONMENTS:
        environment = "linux"
    chosen = {r.lower() for r in request.query_params.getlist("room")}

    def load(s: Session) -> dict[str, Any]:
        # The role check comes before the token is read: members get a 403
        # page that never held it.
        space, role = member_space(s, user, sid, "admin")
        ctx = nav(s, user, space, role)
        token, row = claim_tokens.ensure(s, request.app.state.secret_box, space.id, user.user_id)
        rooms = [r for r in space_store.rooms(s, space.id) if not r.is_all_nodes]
        selected = [r.id for r in rooms if r.id in chosen]
        ctx.update(
            title="Connect Nodes",
            choices=[{"id": r.id, "name": r.name, "checked": r.id in chosen} for r in rooms],
            token_prefix=row.prefix,
            token=token,
            selected=selected,
        )
        return ctx

    ctx = await in_db(request, load, write=True)  # ensure() may create the first token
    url = cloud_url(request)
    ca = private_ca(settings, url)
    proxy, proxy_error = request.query_params.get("proxy", "").strip(), ""
    try:
        commands.check_proxy(proxy)
    except ValueError as exc:
        proxy, proxy_error = "", f"Not used: {exc}."
    ctx.update(
        environments=commands.ENVIRONMENTS,
        environment=environment,
        ca=ca,
        cloud_url=url,
        address_warnings=address.warnings(url, served_names(settings), on_page=True),
        proxy=proxy,
        proxy_error=proxy_error,
        proxy_typed=request.query_params.get("proxy", ""),
        proxy_forms=commands.proxy_forms(),
        proxy_use=commands.proxy_use(environment),
        instructions=commands.build(environment, url, ctx.pop("token"), ctx["selected"], ca, proxy),
    )
    return render(request, "connect.html", ctx)


async def ca_pem(request: Request) -> Response:
    """The private CA certificate (public information), for nodes to trust."""
    path = private_ca_file(request.app.state.settings)
    if path is None:
        return secure(
            PlainTextResponse(
                "This Cloud does not use a private CA: its certificate is trusted through the "
                "system CAs (or it serves plain HTTP).\n",
                status_code=404,
            )
        )
    return secure(FileResponse(path, media_type="application/x-pem-file", filename="tether-ca.pem"))


async def kickstart(_request: Request) -> Response:
    return secure(FileResponse(KICKSTART, media_type="text/x-shellscript; charset=utf-8"))
