"""A raw-recording HTTP/1.1 upstream for the differential probe (plain asyncio, no HTTP library).

It keeps every byte it receives, per connection, and answers each request it can frame with raw
answer bytes chosen by request path (``answers``), else ``default_answer``. Framing is minimal on
purpose: a head ends at the first blank line (CRLF CRLF, or bare LF LF), then a chunked body
(trailers included) when Transfer-Encoding mentions ``chunked``, else ``Content-Length`` bytes.
What cannot be framed is kept as raw bytes and not answered. An answer whose head says
``Connection: close`` is followed by closing the connection.

In-process (what ``differential.py`` does)::

    rec = Recorder(); port = await rec.start()
    rec.answers = {"/x": b"HTTP/1.1 204 No Content\\r\\n\\r\\n"}
    ...; rec.requests()  # what arrived since the last rec.reset()

As a module, it logs every chunk received to stdout::

    .venv/bin/python -m tests.attack.recorder --port 8001 [--answer 'HTTP/1.1 200 OK\\r\\n...']
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from dataclasses import dataclass, field

DEFAULT_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEAD_END = re.compile(rb"\r?\n\r?\n")
MAX_HEAD = 1 << 20


@dataclass
class Request:
    """One request framed by the recorder."""

    conn: int
    line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def target(self) -> bytes:
        parts = self.line.split(b" ")
        return parts[1] if len(parts) > 1 else b""

    def values(self, name: str) -> list[bytes]:
        lowered = name.lower().encode()
        return [value for key, value in self.headers if key.strip().lower() == lowered]


@dataclass
class Connection:
    """Every byte one upstream connection received, and what was framed from them."""

    ident: int
    epoch: int
    data: bytearray = field(default_factory=bytearray)
    consumed: int = 0  # bytes of ``data`` framed into requests
    broken: str = ""  # why framing stopped, if it did
    closed: bool = False


def split_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    lines = re.split(rb"\r?\n", head)
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return lines[0], headers


def frame_chunked(data: bytes, start: int) -> tuple[bytes, list[tuple[bytes, bytes]], int] | str | None:
    """(body, trailers, end offset); None when incomplete; an error string when malformed."""
    body = bytearray()
    pos = start
    while True:
        eol = data.find(b"\n", pos)
        if eol < 0:
            return None
        size_text = data[pos:eol].rstrip(b"\r").split(b";")[0].strip(b" \t")
        if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
            return f"bad chunk size {size_text[:20]!r}"
        size = int(size_text, 16)
        pos = eol + 1
        if size == 0:
            trailers: list[tuple[bytes, bytes]] = []
            while True:
                eol = data.find(b"\n", pos)
                if eol < 0:
                    return None
                line = data[pos:eol].rstrip(b"\r")
                pos = eol + 1
                if not line:
                    return bytes(body), trailers, pos
                name, _, value = line.partition(b":")
                trailers.append((name, value.strip(b" \t")))
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        pos += size
        if data[pos : pos + 2] == b"\r\n":
            pos += 2
        elif data[pos : pos + 1] == b"\n":
            pos += 1
        else:
            return "no CRLF after chunk data"


class Recorder:
    """The upstream server; see the module docstring."""

    def __init__(self, verbose: bool = False) -> None:
        self.default_answer = DEFAULT_ANSWER
        self.answers: dict[str, bytes] = {}
        self.verbose = verbose
        self.epoch = 0
        self.conns: list[Connection] = []
        self.log: list[Request] = []
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await self.close_all()
        if self._tasks:  # let the handlers end on their own (a cancelled one logs noise on 3.11)
            await asyncio.wait(self._tasks, timeout=2)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def close_all(self) -> None:
        """Close every open upstream connection (so the next probe starts on fresh ones)."""
        for writer in list(self._writers.values()):
            writer.close()
        self._writers.clear()
        await asyncio.sleep(0)

    async def reset(self) -> None:
        """Start a new probe: drop connections, answers, and begin a new epoch."""
        await self.close_all()
        self.epoch += 1
        self.answers = {}

    def connections(self) -> list[Connection]:
        return [conn for conn in self.conns if conn.epoch == self.epoch]

    def requests(self) -> list[Request]:
        idents = {conn.ident for conn in self.connections()}
        return [request for request in self.log if request.conn in idents]

    def answer_for(self, request: Request) -> bytes:
        path = request.target.split(b"?")[0].decode("latin-1")
        if "://" in path:  # absolute form: keep the path
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return self.answers.get(path, self.answers.get("*", self.default_answer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(len(self.conns), self.epoch)
        self.conns.append(conn)
        self._writers[conn.ident] = writer
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            while not conn.closed:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                conn.data += chunk
                if self.verbose:
                    print(f"conn {conn.ident} +{len(chunk)}: {chunk!r}", flush=True)
                for request in self._frame(conn):
                    self.log.append(request)
                    answer = self.answer_for(request)
                    writer.write(answer)
                    await writer.drain()
                    head = answer.split(b"\r\n\r\n")[0].lower()
                    if re.search(rb"\nconnection:[ \t]*close", head):
                        conn.closed = True
                        break
        except (ConnectionError, OSError):
            pass
        finally:
            conn.closed = True
            self._writers.pop(conn.ident, None)
            writer.close()

    def _frame(self, conn: Connection) -> list[Request]:
        """Requests newly complete in ``conn.data``."""
        found: list[Request] = []
        data = bytes(conn.data)
        while not conn.broken and conn.consumed < len(data):
            start = conn.consumed
            match = HEAD_END.search(data, start)
            if match is None:
                if len(data) - start > MAX_HEAD:
                    conn.broken = "head too long"
                return found
            line, headers = split_head(data[start : match.start()])
            request = Request(conn.ident, line, headers)
            pos = match.end()
            te = b",".join(request.values("transfer-encoding")).lower()
            if b"chunked" in te:
                framed = frame_chunked(data, pos)
                if framed is None:
                    return found
                if isinstance(framed, str):
                    conn.broken = framed
                    return found
                request.body, request.trailers, pos = framed
            else:
                lengths = request.values("content-length")
                if lengths:
                    try:
                        size = int(lengths[0].split(b",")[0])
                    except ValueError:
                        conn.broken = f"bad content-length {lengths[0][:20]!r}"
                        return found
                    if len(data) < pos + size:
                        return found
                    request.body = data[pos : pos + size]
                    pos += size
            conn.consumed = pos
            found.append(request)
        return found


async def _main(port: int, answer: bytes) -> None:
    recorder = Recorder(verbose=True)
    recorder.default_answer = answer
    bound = await recorder.start(port=port)
    print(f"recorder listening on 127.0.0.1:{bound}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="raw-recording HTTP/1.1 upstream (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--answer", default=None, help="raw answer, Python escapes allowed (\\r\\n)")
    args = parser.parse_args()
    answer = DEFAULT_ANSWER
    if args.answer is not None:
        answer = args.answer.encode("latin-1").decode("unicode_escape").encode("latin-1")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, answer))


if __name__ == "__main__":
    main()
