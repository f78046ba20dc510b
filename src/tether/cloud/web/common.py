"""What every UI page shares: templates, security headers, sign-in and CSRF
checks, and the Space/room navigation every page shows."""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import jinja2
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.cloud import auth
from tether.cloud.auth import Principal
from tether.cloud.db import Database
from tether.cloud.errors import ApiError
from tether.cloud.models import NodeRoom, Room, Space
from tether.cloud.secrets import SecretBox, aware
from tether.cloud.store import spaces as space_store

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
VENDOR = HERE.parent.parent / "static" / "vendor"

# No inline script or style anywhere: JS and CSS come from /ui/static only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
LOGIN_CSRF_COOKIE = "tether_login_csrf"

env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def ago(value: dt.datetime | str | None, now: dt.datetime | None = None) -> str:
    """'3 min ago' style text for a timestamp (the JS keeps it current)."""
    if value is None:
        return "never"
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else aware(value)
    secs = int(((now or dt.datetime.now(dt.UTC)) - when).total_seconds())
    if secs < 60:
        return f"{max(secs, 0)} s ago"
    if secs < 3600:
        return f"{secs // 60} min ago"
    if secs < 86400:
        return f"{secs // 3600} h ago"
    return f"{secs // 86400} d ago"


env.filters["ago"] = ago


class UiError(Exception):
    """A problem shown to the user as a page with `status` and `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Redirect(Exception):  # control flow: raised to send the browser elsewhere
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def secure(response: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    # Pages can hold a claiming token: keep them out of every cache.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
    ctx.setdefault("user", None)
    ctx.setdefault("space", None)
    ctx.setdefault("title", "Tether")
    ctx.setdefault("csrf", "")
    ctx.setdefault("flash", None)
    ctx.setdefault("spaces", [])
    html = env.get_template(name).render(request=request, **ctx)
    return secure(HTMLResponse(html, status_code=status))


def redirect(url: str) -> Response:
    return secure(RedirectResponse(url, status_code=303))


Handler = Callable[[Request], Awaitable[Response]]


def page(fn: Handler) -> Handler:
    """Turn UiError/SpaceError/ApiError/Redirect into pages and add the security headers."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            return secure(await fn(request))
        except Redirect as r:
            return redirect(r.url)
        except (UiError, space_store.SpaceError) as exc:
            e = exc if isinstance(exc, UiError) else space_error(exc)
            return render(request, "error.html", await _error_ctx(request, e), e.status)
        except ApiError as e:
            err = UiError(e.status, e.message)
            return render(request, "error.html", await _error_ctx(request, err), e.status)

    return wrapper


async def _error_ctx(request: Request, e: UiError) -> dict[str, Any]:
    try:
        user = await auth.current_user(request)
    except ApiError:
        user = None
    spaces: list[dict[str, str]] = []
    if user is not None:
        uid = user.user_id
        spaces = await in_db(request, lambda s: my_spaces(s, uid))
    return {
        "status": e.status,
        "message": e.message,
        "user": user,
        "title": "Error",
        "csrf": user.csrf if user else "",
        "spaces": spaces,
    }


async def signed_in(request: Request) -> Principal:
    """The browser's user, or a redirect to the sign-in page."""
    user = await auth.current_user(request)
    if user is None or user.via != "session":
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        raise Redirect("/signin?next=" + quote(target, safe=""))
    return user


async def form_of(request: Request, user: Principal) -> FormData:
    """The posted form, after its CSRF token was checked against the session's."""
    form = await request.form()
    value = form.get("csrf_token")
    try:
        auth.check_csrf(request, user, value if isinstance(value, str) else None)
    except ApiError:
        raise UiError(
            403,
            "This form has expired or did not come from this site. "
            "Go back, reload the page and try again.",
        ) from None
    return form


def field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def set_form_csrf(request: Request, response: Response, cookie: str, token: str, path: str) -> None:
    """CSRF for a form used before there is a session (sign-in, an invite
    link): the form must echo this cookie, which another site cannot read."""
    response.set_cookie(
        cookie,
        token,
        max_age=3600,
        httponly=True,
        secure=not request.app.state.settings.insecure_http,
        samesite="strict",
        path=path,
    )


def form_csrf_ok(request: Request, form: FormData, name: str, cookie: str) -> bool:
    """Whether the form's `name` field echoes the cookie set by `set_form_csrf`."""
    sent, kept = field(form, name), request.cookies.get(cookie, "")
    return bool(sent and kept and hmac.compare_digest(sent, kept))


T = TypeVar("T")


async def in_db(request: Request, fn: Callable[[Session], T], write: bool = False) -> T:
    """Run `fn(session)` in one transaction, off the event loop."""
    db: Database = request.app.state.db

    def run() -> T:
        with db.session(write_lock=write) as s:
            return fn(s)

    try:
        return await run_in_threadpool(run)
    except ValueError as exc:
        raise UiError(400, str(exc).capitalize() + ".") from None


async def posted(request: Request, change: Callable[[Session, Principal, FormData], T]) -> T:
    """A form that changes something: the signed-in user, the form once its
    CSRF token is checked, then `change(session, user, form)` in one write
    transaction; what `change` returns."""
    user = await signed_in(request)
    form = await form_of(request, user)
    return await in_db(request, lambda s: change(s, user, form), write=True)


@dataclass(frozen=True)
class Post:
    """What the change of an `action` gets (the UI's side of the API's Ctx):
    the write session, the signed-in user, the checked form and the request."""

    s: Session
    user: Principal
    form: FormData
    request: Request

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    @property
    def sid(self) -> str:
        """The id of the Space in the path (most forms are a Space's)."""
        return self.param("space_id")

    def field(self, name: str) -> str:
        return field(self.form, name)

    @property
    def box(self) -> SecretBox:
        box: SecretBox = self.request.app.state.secret_box
        return box


def action(back: str, change: Callable[[Post], object]) -> Handler:
    """The handler of a form that changes one thing: `change` runs as `posted`
    says, then the browser goes to `back` with the path's ids filled in, e.g.
    "/spaces/{space_id}/manage?done=room-renamed"; refusals become pages (`page`)."""

    @page
    async def handler(request: Request) -> Response:
        await posted(request, lambda s, user, form: change(Post(s, user, form, request)))
        return redirect(back.format_map(request.path_params))

    return handler


async def space_page(
    request: Request,
    user: Principal,
    template: str,
    fill: Callable[[Session, Space, str], dict[str, Any]],
    flash: Mapping[str, str],
    needed: str = "member",
) -> Response:
    """A page of the Space in the path: the user's role checked (at least
    `needed`), the header and sidebar (`nav`) and what `fill(session, space,
    role)` adds, read in one transaction; then the message `?done=` names."""
    sid = request.path_params["space_id"]

    def load(s: Session) -> dict[str, Any]:
        space, role = member_space(s, user, sid, needed)
        ctx = nav(s, user, space, role)
        ctx.update(fill(s, space, role))
        return ctx

    ctx = await in_db(request, load)
    ctx["flash"] = flash.get(request.query_params.get("done", ""))
    return render(request, template, ctx)


# What the UI says when something a page or form names is not there.
NOT_FOUND = {
    "Space": "This Space does not exist or you are not one of its members.",
    "War Room": "This War Room does not exist (it may have been deleted).",
    "Node": "This node is not in the Space (it may have been removed).",
    "Member": "That person is no longer a member of this Space.",
    "Open invitation": "That invitation is no longer open (it was answered or withdrawn).",
    "Invitation": "There is no invitation for your account by that link. "
    "An invitation counts only for the email it was sent to.",
}


def space_error(exc: space_store.SpaceError) -> UiError:
    """A refused Space operation as the UI's error page (403, 404 or 400)."""
    if isinstance(exc, space_store.Forbidden):
        return UiError(
            403,
            f"Only a Space {exc.needed} can do this; you are a {exc.role} of "
            f"{exc.space_name}. Ask one of its admins.",
        )
    if isinstance(exc, space_store.AllNodesRoom):
        return UiError(400, exc.message)
    assert isinstance(exc, space_store.NotFound), exc
    return UiError(404, NOT_FOUND[exc.what])


def member_space(
    s: Session, user: Principal, space_id: str, needed: str = "member"
) -> tuple[Space, str]:
    """The Space and the user's role; a refusal is shown as a 404 or 403 page (`page`)."""
    return space_store.require_role(s, space_id, user.user_id, needed)


def room_counts(s: Session, space_id: str) -> dict[str, int]:
    """Nodes per War Room of a Space, for the sidebar."""
    rows = s.execute(
        select(NodeRoom.room_id, func.count())
        .join(Room, Room.id == NodeRoom.room_id)
        .where(Room.space_id == space_id)
        .group_by(NodeRoom.room_id)
    )
    return {room_id: int(n) for room_id, n in rows}


def my_spaces(s: Session, user_id: str) -> list[dict[str, str]]:
    """The user's Spaces for the header's Space menu."""
    return [
        {"id": sp.id, "name": sp.name, "role": r} for sp, r in space_store.spaces_of(s, user_id)
    ]


def nav(s: Session, user: Principal, space: Space, role: str) -> dict[str, Any]:
    """What the header and sidebar show for a Space."""
    counts = room_counts(s, space.id)
    rooms = [
        {
            "id": r.id,
            "name": r.name,
            "is_all_nodes": r.is_all_nodes,
            "node_count": counts.get(r.id, 0),
        }
        for r in space_store.rooms(s, space.id)
    ]
    return {
        "user": user,
        "csrf": user.csrf or "",
        "space": {"id": space.id, "name": space.name},
        "role": role,
        "is_admin": role == "admin",
        "can_manage": space_store.at_least(role, "manager"),
        "spaces": my_spaces(s, user.user_id),
        "rooms": rooms,
    }


class SecureStatic:
    """Static files with the same security headers as the pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for k, v in SECURITY_HEADERS.items():
                    if k.lower().encode() not in names:
                        headers.append((k.lower().encode(), v.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
