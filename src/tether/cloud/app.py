"""The Cloud's ASGI app. Other parts add their routes in `create_app`."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

import tether
from tether.cloud import (
    api,
    auth,
    claim,
    composite,
    lifecycle_api,
    limits,
    link,
    node_auth,
    openapi,
    outage,
    readiness,
    relay,
    shared_limits,
    web,
)
from tether.cloud.alerts import api as alerts_api
from tether.cloud.alerts import web as alerts_web
from tether.cloud.alerts.worker import AlertWorker
from tether.cloud.db import Database, migrate
from tether.cloud.errors import (
    ApiError,
    api_error_handler,
    client_gone_handler,
    internal_error_handler,
)
from tether.cloud.headers import SecurityHeaders
from tether.cloud.routing import make_router
from tether.cloud.secret_store import make_secret_store
from tether.cloud.secrets import SecretBox
from tether.cloud.settings import CloudSettings
from tether.cloud.web import invitations, live

log = logging.getLogger("tether.cloud")


async def health(_request: Request) -> Response:
    """Liveness: 200 when the Cloud answers."""
    return JSONResponse({"status": "ok"})


async def run_shutdown_hooks(app: Starlette) -> None:
    """Run the `on_shutdown` hooks once (the server calls this before uvicorn
    closes connections; the lifespan calls it again, which does nothing)."""
    if getattr(app.state, "shutdown_done", False):
        return
    app.state.shutdown_done = True
    for hook in app.state.on_shutdown:
        try:
            await hook()
        except Exception:
            log.exception("shutdown hook failed")


def create_app(settings: CloudSettings, db: Database | None = None) -> Starlette:
    """Build the app. `app.state` holds `settings`, `db` (tether.cloud.db.Database:
    `.engine`, `.sessions`, `.session()`), `secret_box`, `claim_limiter` and
    `on_shutdown`, a list of async callables run first at shutdown (close links),
    `router` (tether.cloud.routing.Router), `secret_store` (node authentication's
    challenges and link tokens: tether.cloud.secret_store.SecretStore) and `links`
    (tether.cloud.link.LinkService)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if db is None:
        db = Database(settings.db_url)
        migrate(db.engine)
    on_shutdown: list[Callable[[], Awaitable[None]]] = []

    router = make_router(settings.nats_url, settings.nats_subject_prefix)
    secret_store = make_secret_store(settings, db)
    links = link.LinkService(settings, db, router, secret_store)
    # Closing the links comes first (server.py runs it before uvicorn closes
    # connections itself); running it again at lifespan shutdown is a no-op.
    on_shutdown.append(links.stop)
    # Reachability alerts and the notification outbox (tether.cloud.alerts):
    # stopped after the links, whose closes start no alert (Cloud-side close).
    alert_worker = AlertWorker(settings, db, router.process_id, SecretBox(settings.secret_key_file))
    on_shutdown.append(alert_worker.stop)
    # The Nodes view's live pushes (tether.cloud.web.live): ends its streams at shutdown.
    node_watcher = live.NodeWatcher(db)
    on_shutdown.append(node_watcher.stop)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await links.start()
        auth.share_invalidations(auth.auth_cache(app), router)
        app.state.started = True  # /api/ready says yes from now on
        await alert_worker.start()
        await node_watcher.start()
        yield
        await run_shutdown_hooks(app)
        db.dispose()

    routes: list[BaseRoute] = [
        Route("/api/health", health, methods=["GET"]),
        Route("/api/ready", readiness.ready, methods=["GET"]),
        Route("/api/openapi.json", openapi.openapi_json, methods=["GET"]),
        *auth.routes(),
        *claim.routes(),
        *api.routes(),
        *node_auth.routes(),
        *lifecycle_api.routes(),
        *link.routes(),
        *relay.routes(),
        *composite.routes(),
        *alerts_api.routes(),
        *alerts_web.routes(),
        # Other parts add their route lists here; the UI is mounted last since it owns "/".
        *web.routes(),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: api_error_handler,
            ClientDisconnect: client_gone_handler,  # no traceback for a client gone mid-body
            **outage.handlers(),  # 503 ErrDatabaseUnavailable while the database is down
            Exception: internal_error_handler,  # JSON 500 with Connection: close
        },
        # CSP, nosniff, no-store on /api/; frame denial on pages; HSTS on HTTPS.
        middleware=[Middleware(SecurityHeaders)],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.secret_box = SecretBox(settings.secret_key_file)
    # Limits on guesses: in scale-out mode (PostgreSQL and NATS: several
    # processes) counted once for all of them in the database, else in memory.
    windows = (
        shared_limits.shared_windows(db.engine.url)
        if settings.nats_url and not db.is_sqlite
        else limits.in_memory(time.monotonic)
    )
    # Failed claims per address (IPv6 per /64) per minute.
    app.state.claim_limiter = windows("claim", settings.claim_failures_per_minute, 60.0)
    app.state.login_limits = auth.LoginLimits(windows=windows)
    # Wrong invite-link tokens per address per minute (tether.cloud.web.invitations).
    app.state.invite_limiter = windows("invite", invitations.WRONG_LINKS_PER_MINUTE, 60.0)
    app.state.on_shutdown = on_shutdown
    app.state.router = router
    app.state.links = links
    app.state.alert_worker = alert_worker
    app.state.node_watcher = node_watcher
    app.state.secret_store = secret_store
    app.state.auth_limiter = node_auth.AuthLimits(
        settings.auth_failures_per_minute,
        settings.auth_requests_per_address_per_minute,
        windows=windows,
    )
    app.state.version = getattr(tether, "__version__", "0")
    outage.install(app, db.engine)
    return app
