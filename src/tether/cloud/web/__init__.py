"""The Cloud's web UI: server-rendered pages (Jinja2), JS and CSS from the package.

`routes()` is mounted last in `tether.cloud.app.create_app` since it owns "/".
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tether.cloud import downloads
from tether.cloud.web import (
    account,
    api_tokens,
    clones,
    connect,
    invitations,
    live,
    manage,
    node_link,
    pages,
    room_overview,
    tokens,
)
from tether.cloud.web import audit as audit_page
from tether.cloud.web import bulk_remove as bulk_remove_page
from tether.cloud.web import room_rules as rules_page
from tether.cloud.web.common import STATIC, VENDOR, SecureStatic, secure


async def favicon(request: Request) -> Response:
    """Browsers ask for /favicon.ico whatever the page links: the SVG icon."""
    return secure(FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml"))


def routes() -> list[BaseRoute]:
    sp = "/spaces/{space_id}"
    room = sp + "/rooms/{room_id}"
    node = sp + "/nodes/{node_id}"
    member = sp + "/members/{user_id}"
    get, post = ["GET"], ["POST"]
    return [
        Route("/", pages.home, methods=get),
        Route("/signin", pages.signin_form, methods=get),
        Route("/signin", pages.signin, methods=post),
        Route("/signout", pages.signout, methods=post),
        Route("/spaces", pages.create_space, methods=post),
        Route("/invitations", invitations.invitations_page, methods=get),
        Route("/invitations/{invitation_id}/accept", invitations.accept, methods=post),
        Route("/invitations/{invitation_id}/decline", invitations.decline, methods=post),
        Route("/invite/{token}", invitations.link_page, methods=get),
        Route("/invite/{token}", invitations.link_join, methods=post),
        Route(sp, pages.space_home, methods=get),
        Route(room, pages.room_page, methods=get),
        Route(room + "/nodes.json", pages.room_nodes_json, methods=get),
        Route(room + "/events", live.room_events, methods=get),
        Route(room + "/overview", room_overview.overview_page, methods=get),
        Route(room + "/add", pages.add_nodes_form, methods=get),
        Route(room + "/add", pages.add_nodes, methods=post),
        Route(sp + "/nodes/remove", bulk_remove_page.remove_page, methods=get),
        Route(sp + "/nodes/remove", bulk_remove_page.remove_nodes, methods=post),
        Route(sp + "/audit", audit_page.audit_page, methods=get),
        Route(node, pages.node_page, methods=get),
        Route(node + "/state.json", pages.node_json, methods=get),
        Route(node + "/remove", pages.remove_node, methods=post),
        Route(node + "/clone-conflict", clones.resolve, methods=post),
        Route(sp + "/connect", connect.connect_page, methods=get),
        Route(sp + "/manage", manage.manage_page, methods=get),
        Route(sp + "/rename", manage.rename_space, methods=post),
        Route(sp + "/members", manage.add_member, methods=post),
        Route(member + "/role", manage.change_member, methods=post),
        Route(member + "/remove", manage.remove_member, methods=post),
        Route(member + "/reset-password", account.reset_password, methods=post),
        Route(sp + "/invitations/{invitation_id}/revoke", manage.revoke_invitation, methods=post),
        Route(sp + "/rooms", manage.create_room, methods=post),
        Route(room + "/rename", manage.rename_room, methods=post),
        Route(room + "/delete", manage.delete_room, methods=post),
        Route(sp + "/token/rotate", manage.rotate_token, methods=post),
        Route(sp + "/claim-tokens", tokens.tokens_page, methods=get),
        Route(sp + "/claim-tokens", tokens.create_token, methods=post),
        Route(sp + "/claim-tokens/{token_id}/revoke", tokens.revoke_token, methods=post),
        Route(room + "/rules", rules_page.rules_page, methods=get),
        Route(room + "/rules", rules_page.add_rule, methods=post),
        Route(room + "/rules/{rule_id}/remove", rules_page.remove_rule, methods=post),
        Route("/account", account.account_page, methods=get),
        Route("/account/password", account.change_password, methods=post),
        Route("/account/api-tokens", api_tokens.tokens_page, methods=get),
        Route("/account/api-tokens", api_tokens.create_token, methods=post),
        Route("/account/api-tokens/{prefix}/revoke", api_tokens.revoke_token, methods=post),
        Route("/favicon.ico", favicon, methods=get),
        Route("/ca.pem", connect.ca_pem, methods=get),
        Route("/kickstart.sh", connect.kickstart, methods=get),
        *downloads.routes(),
        Route("/nodes/{node_id}", node_link.node_by_id, methods=get),
        Mount("/ui/static", app=SecureStatic(StaticFiles(directory=STATIC))),
        Mount("/ui/vendor", app=SecureStatic(StaticFiles(directory=VENDOR))),
    ]
