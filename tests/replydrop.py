"""A TCP proxy in front of a real redis-server that loses the reply to a chosen command.

What a network cut or a failover does at the worst moment: Redis received the command and ran it,
and the connection died before its answer reached the client. redis-py then retries the command
on a new connection (common.redis_client sets a Retry), so Redis runs it a second time; a write
that is not safe to run twice shows it.

A command is chosen by markers (every one must appear in what the client sent since its last
answer, e.g. b"EVALSHA" and a value only that call carries). The proxy forwards it, waits for
Redis's answer, throws it away and closes the client's connection. An error answer (-ERR,
-NOSCRIPT: nothing was run) is passed on instead, and the next matching command is chosen.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from tests.stack import free_port


@dataclass(eq=False)
class _Link:
    client: socket.socket
    server: socket.socket
    since_answer: bytearray = field(default_factory=bytearray)  # what the client sent since its last answer
    dropping: bool = False  # the next answer is to be lost

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class ReplyDropper:
    """Listens on a free port, forwards every connection to `target_port`, and loses the answers to
    the first `times` commands that carry every one of `markers` (see `drop`)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dropped: list[bytes] = []  # the commands whose answers were lost, as sent
        self._markers: tuple[bytes, ...] = ()
        self._left = 0
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self, *markers: bytes, times: int = 1) -> None:
        """Lose the answers to the next `times` commands that carry all `markers`."""
        with self._lock:
            self._markers, self._left = markers, times

    def close(self) -> None:
        """Stop listening and cut every connection."""
        self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._upstream, args=(link,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(link,), daemon=True).start()

    def _upstream(self, link: _Link) -> None:
        try:
            while data := link.client.recv(65536):
                with self._lock:
                    link.since_answer += data
                    if self._left > 0 and all(m in link.since_answer for m in self._markers):
                        # Chosen before it is forwarded, so its answer cannot slip through first.
                        link.dropping = True
                link.server.sendall(data)
        except OSError:
            pass
        link.close()

    def _downstream(self, link: _Link) -> None:
        try:
            while data := link.server.recv(65536):
                with self._lock:
                    sent, link.since_answer = bytes(link.since_answer), bytearray()
                    if link.dropping and self._left > 0 and not data.startswith(b"-"):
                        self._left -= 1
                        self.dropped.append(sent)
                        break  # Redis ran it; its answer is lost with the connection
                    link.dropping = False
                link.client.sendall(data)
        except OSError:
            pass
        link.close()
