"""The sample upstream behind ``shield demo``: a tiny service with the routes an attack targets.

Routes: ``POST /api/register``, ``POST /api/login``, ``GET /api/data``, ``GET /download``
(a large streamed body, ``?size=`` bytes), ``POST /upload`` (streamed, answers the byte count
and SHA-256), ``GET /ws`` (WebSocket echo) and ``GET /`` (an index page).
"""

from __future__ import annotations

import hashlib
import json
import secrets

from aiohttp import WSMsgType, web

DOWNLOAD_CHUNK = b"shield-demo-".ljust(64 * 1024, b".")
USERS = web.AppKey("users", dict[str, str])


async def index(request: web.Request) -> web.Response:
    return web.Response(
        text="<!doctype html><title>Demo service</title><h1>Demo service</h1>"
        "<p>This is the upstream application. Shield stands in front of it.</p>\n",
        content_type="text/html",
    )


async def _credentials(request: web.Request) -> tuple[str, str]:
    try:
        payload = await request.json()
        return str(payload["username"]), str(payload["password"])
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "send JSON {username, password}"}),
            content_type="application/json",
        ) from None


async def register(request: web.Request) -> web.Response:
    username, password = await _credentials(request)
    users = request.app[USERS]
    if username in users:
        return web.json_response({"error": "user exists"}, status=409)
    users[username] = password
    return web.json_response({"registered": username}, status=201)


async def login(request: web.Request) -> web.Response:
    username, password = await _credentials(request)
    if request.app[USERS].get(username) != password:
        return web.json_response({"error": "wrong username or password"}, status=401)
    return web.json_response({"user": username, "session": secrets.token_hex(16)})


async def data(request: web.Request) -> web.Response:
    return web.json_response({"items": [{"id": i, "name": f"item {i}"} for i in range(1, 4)]})


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", 100 * 1024 * 1024))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    left = size
    while left > 0:
        chunk = DOWNLOAD_CHUNK[: min(left, len(DOWNLOAD_CHUNK))]
        await response.write(chunk)
        left -= len(chunk)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    received = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        received += len(chunk)
    return web.json_response({"received": received, "sha256": digest.hexdigest()})


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


def build_demo_app() -> web.Application:
    app = web.Application(client_max_size=1024**2)
    app[USERS] = {"alice": "wonderland"}
    app.router.add_get("/", index)
    app.router.add_get("/signup", signup_page)
    app.router.add_post("/api/register", register)
    app.router.add_post("/api/login", login)
    app.router.add_get("/api/data", data)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", echo)
    return app


async def signup_page(request: web.Request) -> web.Response:
    """The sign-up form a browser reaches once it solved Shield's challenge."""
    return web.Response(
        text="<!doctype html><title>Sign up</title><h1>Sign up</h1>"
        "<form method=post action=/api/register><input name=username><button>Join</button></form>\n",
        content_type="text/html",
    )


def try_lines(public: str, admin: str, ctl_token: str | None = None) -> str:
    """What ``shield demo`` prints: commands to see Shield at work."""
    ctl = (
        f"""
In another shell, operate it at runtime (the demo's token, new each start; in a checkout
the command is .venv/bin/shield):
  export SHIELD_CTL_TOKEN={ctl_token}
  shield ctl --admin {admin} status
  shield ctl --admin {admin} close api-anonymous --for 10m --message 'API paused'
  shield ctl --admin {admin} open api-anonymous
"""
        if ctl_token
        else ""
    )
    return f"""
Shield is running in front of the demo service.

  Public:  {public}    Admin (metrics, health): {admin}
  Status page: {public}/status    Challenge (open in a browser): {public}/signup

Each request prints one JSON line (the access log) with the rule and decision.
{ctl}
Try:
  curl -i {public}/api/data
  curl -i -X POST {public}/api/login -H 'Content-Type: application/json' \\
       -d '{{"username": "alice", "password": "wonderland"}}'
  curl -i -X POST {public}/api/register -H 'Content-Type: application/json' \\
       -d '{{"username": "bob", "password": "builder"}}'
  curl -s -o /dev/null -w '%{{size_download}} bytes\\n' '{public}/download?size=104857600'
  head -c 10000000 /dev/zero | curl -s -X POST --data-binary @- {public}/upload
  curl -s {admin}/metrics | grep ^shield_

Stop with Ctrl-C.
"""
