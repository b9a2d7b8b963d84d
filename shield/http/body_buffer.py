"""Body bytes that arrived and are not read yet, the sender paused while too many wait.

Both sides of Shield hold one: a client's request body (read by the proxy as it goes up) and the
upstream's answer (read as it goes back to the client). Past ``high_water`` buffered bytes
``pause`` is called, once; when a read leaves at most ``low_water``, ``resume`` is. So a fast
sender and a slow reader cost at most about ``high_water`` of memory, whichever side is slow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class BodyBuffer:
    __slots__ = ("_chunks", "_high_water", "_low_water", "_pause", "_resume", "paused", "size")

    def __init__(
        self, *, high_water: int, low_water: int, pause: Callable[[], None], resume: Callable[[], None]
    ) -> None:
        self._chunks: deque[bytes] = deque()
        self.size = 0  # bytes buffered
        self._high_water = high_water
        self._low_water = low_water
        self._pause = pause
        self._resume = resume
        self.paused = False

    def add(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)
        if self.size > self._high_water and not self.paused:
            self.paused = True
            self._pause()

    def take(self, limit: int = -1) -> bytes:
        """The oldest piece buffered, or its first ``limit`` bytes (``limit < 0``: all of it).
        There must be one (``size`` is not 0)."""
        chunks = self._chunks
        data = chunks.popleft()
        if len(data) > limit >= 0:
            chunks.appendleft(data[limit:])
            data = data[:limit]
        self.size -= len(data)
        if self.paused and self.size <= self._low_water:
            self._drained()
        return data

    def take_all(self) -> bytes:
        """Everything buffered, as one piece."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.size = 0
        if self.paused:
            self._drained()
        return data

    def clear(self) -> None:
        """Drop what is buffered (nobody will read it), and let the sender go on."""
        self._chunks.clear()
        self.size = 0
        if self.paused:
            self._drained()

    def _drained(self) -> None:
        self.paused = False
        self._resume()
