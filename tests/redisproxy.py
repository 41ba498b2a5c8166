"""A TCP proxy in front of a real redis-server that can corrupt or refuse chosen connections.

A connection is chosen by what its client sent (every one of some markers: a command name, a
channel): `inject` writes raw bytes to the clients of the chosen connections, as a broken or
hostile network path would, and `refuse` closes every chosen connection, now and whenever one is
made again. Faults on one command (chosen by a marker in what the client sends with it, or by
several markers that must all be there):
`drop_reply` forwards the command, lets Redis run it, and closes the connection instead of
delivering the answer (a reply lost on the way back: the client cannot tell whether it ran);
`stall` forwards nothing more on that connection, either way (a peer that stops answering);
`cut` closes the connection instead of forwarding the command (it never reaches Redis); `hold`
keeps the command until the test releases it, then forwards it (a slow path, on one command).
`silence` makes every new connection hang unanswered (a Redis that accepts and stays silent).
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
    sent: bytearray = field(default_factory=bytearray)  # what the client sent (first 64 kB)
    lock: threading.Lock = field(default_factory=threading.Lock)
    awaiting: Fault | None = None  # a drop-reply fault whose command went to Redis on this link
    stalled: bool = False

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class RedisProxy:
    """Listens on a free port and forwards every connection to `target_port`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._links: list[_Link] = []
        self._refused: list[tuple[bytes, ...]] = []
        self._faults: list[Fault] = []
        self._silent = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_reply(self, marker: bytes | tuple[bytes, ...], *, reply: bytes = b"", times: int = 1) -> Fault:
        """The next `times` commands that carry `marker` (and whose answer carries `reply`) run in
        Redis; their connections close before the answer reaches the client."""
        fault = Fault(marker, times, "drop", reply)
        with self._lock:
            self._faults.append(fault)
        return fault

    def stall(self, marker: bytes | tuple[bytes, ...], *, times: int = 1) -> Fault:
        """The next `times` commands carrying `marker` are not forwarded, nor anything after them on
        their connections."""
        return self._add(Fault(marker, times, "stall"))

    def cut(self, marker: bytes | tuple[bytes, ...], *, times: int = 1) -> Fault:
        """The next `times` commands carrying `marker` never reach Redis: their connections close."""
        return self._add(Fault(marker, times, "cut"))

    def hold(self, marker: bytes | tuple[bytes, ...]) -> Fault:
        """The next command carrying `marker` waits in the proxy (and its connection with it) until
        the fault's `release()`; then it goes to Redis."""
        return self._add(Fault(marker, 1, "hold"))

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def silence(self, silent: bool = True) -> None:
        """While silent, new connections are accepted and never answered (nor forwarded)."""
        with self._lock:
            self._silent = silent

    def inject(self, markers: tuple[bytes, ...], data: bytes, *, unless: bytes | None = None) -> int:
        """Send `data` to every client that sent all `markers` (and not `unless`); how many got it."""
        chosen = [link for link in self._chosen(markers) if unless is None or unless not in link.sent]
        for link in chosen:
            with link.lock:
                link.client.sendall(data)
        return len(chosen)

    def refuse(self, markers: tuple[bytes, ...]) -> None:
        """Close every connection whose client sent all `markers`, now and from now on."""
        with self._lock:
            self._refused.append(markers)
        for link in self._chosen(markers):
            link.close()

    def allow(self) -> None:
        """Stop refusing."""
        with self._lock:
            self._refused.clear()

    def close(self) -> None:
        """Stop listening and cut every connection."""
        self._listener.close()
        with self._lock:
            links, self._links = self._links, []
            for fault in self._faults:
                fault.release()
        for link in links:
            link.close()

    def _chosen(self, markers: tuple[bytes, ...]) -> list[_Link]:
        with self._lock:
            return [link for link in self._links if _sent_all(link, markers)]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            with self._lock:
                silent = self._silent
            if silent:
                server.close()
                self._hold(client)
                continue
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._upstream, args=(link,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(link,), daemon=True).start()

    def _hold(self, client: socket.socket) -> None:
        """Keep a silent connection open, reading and answering nothing, until the proxy closes."""
        held = _Link(client, socket.socket())
        with self._lock:
            self._links.append(held)

    def _fault_for(self, data: bytes) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.left > 0 and fault.carried_by(data):
                    if fault.kind != "drop":  # a dropped reply is used up when its answer comes
                        fault.left -= 1
                        fault.hits += 1
                    return fault
        return None

    def _drops(self, link: _Link, reply: bytes) -> bool:
        """Whether this answer is the one a drop-reply fault waits for (then it is used up)."""
        fault, link.awaiting = link.awaiting, None
        if fault is None or fault.reply not in reply:
            return False
        with self._lock:
            if fault.left <= 0:
                return False
            fault.left -= 1
        fault.hit.set()
        return True

    def _upstream(self, link: _Link) -> None:
        try:
            while data := link.client.recv(65536):
                if len(link.sent) < 65536:
                    link.sent += data
                with self._lock:
                    refused = any(_sent_all(link, markers) for markers in self._refused)
                if refused or link.stalled:
                    break
                fault = self._fault_for(data)
                if fault is not None and fault.kind == "stall":
                    link.stalled = True
                    fault.hit.set()
                    continue  # nothing more goes either way; the client waits
                if fault is not None and fault.kind == "cut":
                    fault.hit.set()
                    break
                if fault is not None and fault.kind == "hold":
                    fault.hit.set()
                    fault.released.wait(60)
                    fault = None
                link.awaiting = fault
                link.server.sendall(data)
        except OSError:
            pass
        if not link.stalled:
            link.close()

    def _downstream(self, link: _Link) -> None:
        try:
            while data := link.server.recv(65536):
                if link.awaiting is not None and self._drops(link, data):
                    break  # Redis ran the command; its answer never reaches the client
                if link.stalled:
                    continue
                with link.lock:
                    link.client.sendall(data)
        except OSError:
            pass
        link.close()


@dataclass(eq=False)
class Fault:
    """One planned fault: on commands carrying `marker`, `left` more times."""

    marker: bytes | tuple[bytes, ...]
    left: int
    kind: str
    reply: bytes = b""
    hit: threading.Event = field(default_factory=threading.Event)
    hits: int = 0  # how many commands it caught (stall, cut, hold)
    released: threading.Event = field(default_factory=threading.Event)

    def carried_by(self, data: bytes) -> bool:
        """Whether `data` carries the fault's marker (every one of its markers)."""
        markers = self.marker if isinstance(self.marker, tuple) else (self.marker,)
        return all(marker in data for marker in markers)

    def release(self) -> None:
        """A held command goes on to Redis."""
        self.released.set()

    def end(self) -> None:
        """Catch no more commands."""
        self.left = 0


def _sent_all(link: _Link, markers: tuple[bytes, ...]) -> bool:
    return all(marker in link.sent for marker in markers)
