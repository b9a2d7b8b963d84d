"""WebSocket upgrades, relayed frame by frame in both directions.

The upstream handshake happens first, so an upstream refusal becomes a plain HTTP answer and the
subprotocol the upstream chose is the one echoed to the client. Close codes travel both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from ssl import SSLContext

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from shield.headers import filter_request_headers

log = logging.getLogger("shield.websocket")

# Headers the WebSocket handshake manages itself and that must not be copied from the client.
_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)


def is_websocket_upgrade(headers: Mapping[str, str]) -> bool:
    upgrade = headers.get("Upgrade")
    if upgrade is None or upgrade.lower() != "websocket":
        return False
    connection = headers.get("Connection", "")
    return "upgrade" in (token.strip().lower() for token in connection.split(","))


class WebSocketRelay:
    """Owns the client session used only for upstream WebSocket handshakes."""

    def __init__(
        self, upstream_url: str, *, tls: SSLContext | bool, connect_timeout: float, max_msg_size: int
    ) -> None:
        self._base = URL(upstream_url)
        self._ssl = tls
        self._connect_timeout = connect_timeout
        self._max_msg_size = max_msg_size
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def relay(
        self,
        request: web.BaseRequest,
        target: bytes,
        extra_headers: list[tuple[bytes, bytes]],
        request_id: str | None = None,
    ) -> web.StreamResponse:
        """Relay ``request`` (on aiohttp's server) to the upstream; ``extra_headers`` are
        Shield's forwarding headers, ``X-Request-ID`` among them."""
        path, _, query = target.decode("latin-1").partition("?")
        scheme = "wss" if self._base.scheme == "https" else "ws"
        url = URL.build(
            scheme=scheme,
            host=self._base.raw_host or "",
            port=self._base.port,
            path=path,
            query_string=query,
            encoded=True,
        )
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in filter_request_headers(request.raw_headers)
            if name.lower() not in _HANDSHAKE
        ]
        headers += [(n.decode("latin-1"), v.decode("latin-1")) for n, v in extra_headers]
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
        ]
        try:
            upstream = await self._client().ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                autoping=False,
                autoclose=False,
                max_msg_size=self._max_msg_size,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                ssl=self._ssl,
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(
                status=exc.status if exc.status >= 400 else 502,
                text="WebSocket refused upstream.\n",
            )
        except (aiohttp.ClientError, OSError, TimeoutError):
            return web.Response(status=502, text="The upstream is unavailable.\n")

        downstream = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (),
            autoping=False,
            autoclose=False,
            max_msg_size=self._max_msg_size,
            compress=False,
        )
        downstream.headers["Server"] = "shield"
        if request_id is not None:
            downstream.headers["X-Request-ID"] = request_id
        to_upstream = to_client = None
        try:
            await downstream.prepare(request)
            to_upstream = asyncio.create_task(_pump(downstream, upstream))
            to_client = asyncio.create_task(_pump(upstream, downstream))
            await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if not downstream.prepared:
                raise
            # aiohttp cancels the handler when the client's connection closes, and that is how
            # most sessions end: the client closes as soon as the close handshake is done, often
            # before this task has run again. The session took place: it is answered, not lost.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            for task in (to_upstream, to_client):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            await upstream.close()
            if not downstream.closed:
                await downstream.close()
        return downstream


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Copy frames from source to sink until either side closes; pass the close code on."""
    while True:
        message = await source.receive()
        kind = message.type
        if kind is WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif kind is WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif kind is WSMsgType.PING:
            await sink.ping(message.data)
        elif kind is WSMsgType.PONG:
            await sink.pong(message.data)
        elif kind is WSMsgType.CLOSE:
            await sink.close(code=_sendable(message.data, 1000), message=(message.extra or "").encode())
            return
        else:  # CLOSING (the other pump is relaying a close to source), CLOSED, ERROR
            default = 1000 if kind is WSMsgType.CLOSING else 1011
            with contextlib.suppress(Exception):
                await sink.close(code=_sendable(source.close_code, default))
            return


def _sendable(code: object, default: int) -> int:
    """``code`` if it may appear in a Close frame, else ``default``: a frame without a code
    arrives as 0, and 1005, 1006 and 1015 must never be sent (RFC 6455 §7.4.1)."""
    if isinstance(code, int) and code >= 1000 and code not in (1005, 1006, 1015):
        return code
    return default
