"""Shield's own answers: refusals, pages, 502s. Status, headers and a body, framed by the
connection when it writes them (``connection.serialize``).

Every answer Shield writes itself is a ``ShieldAnswer``, so nothing downstream mistakes it for
an upstream response (an outcome-counting throttle never charges Shield's own refusals). It is
a plain object rather than aiohttp's ``web.Response``: nothing here is an aiohttp handler, and
a refusal should cost little under a flood of them.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

from multidict import CIMultiDict


class ShieldAnswer:
    """An answer Shield wrote itself rather than relayed from the upstream.

    ``text`` is sent as UTF-8 with ``content_type`` (``text/plain`` by default) and its charset;
    ``headers`` are added as given (``Server: shield`` unless they name one). ``keep_alive`` is
    None (as the request asks) or False (``force_close``: the connection closes after it)."""

    __slots__ = ("body", "cookies", "headers", "keep_alive", "status")

    def __init__(
        self,
        *,
        status: int = 200,
        text: str = "",
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = text.encode("utf-8")
        self.headers: CIMultiDict[str] = CIMultiDict(headers or ())
        self.headers.setdefault("Content-Type", f"{content_type}; charset=utf-8")
        self.headers.setdefault("Server", "shield")
        self.keep_alive: bool | None = None
        self.cookies: list[str] = []  # Set-Cookie values

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def force_close(self) -> None:
        """Close the connection after this answer."""
        self.keep_alive = False

    def set_cookie(
        self,
        name: str,
        value: str,
        *,
        max_age: int,
        path: str = "/",
        httponly: bool = True,
        samesite: str = "Lax",
        secure: bool = False,
    ) -> None:
        jar: SimpleCookie = SimpleCookie()
        jar[name] = value
        morsel = jar[name]
        morsel["max-age"] = str(max_age)
        morsel["path"] = path
        morsel["samesite"] = samesite
        morsel["httponly"] = httponly
        morsel["secure"] = secure
        self.cookies.append(morsel.OutputString())


def answer(status: int, text: str, *, close: bool = False) -> ShieldAnswer:
    """A plain-text answer; ``close``: the connection closes after it."""
    response = ShieldAnswer(status=status, text=text + "\n")
    if close:
        response.force_close()
    return response
