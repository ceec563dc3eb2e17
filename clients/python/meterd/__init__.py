"""A client for meterd's ingest socket, standard library only.

Events are pipelined over one Unix socket connection shared by every thread that uses the client.
Each event gets an ``id`` when it has none, and an event not answered when the connection breaks
(meterd was restarted or killed) is sent again, under the same id, on the next connection: meterd
answers it ``duplicate`` if it had stored it already, so nothing is lost and nothing counted twice.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional, Union

__all__ = [
    "DEFAULT_SOCKET",
    "RETRYABLE",
    "Ack",
    "Client",
    "ClientClosed",
    "MeterdError",
    "MeterdTimeout",
    "RefusedError",
]

DEFAULT_SOCKET = "/run/meterd/meterd.sock"
#: Wire codes after which sending the same event again (same id) may succeed.
RETRYABLE = frozenset({"overloaded", "storage_error"})

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_CONNECT_TIMEOUT = 1.0


@dataclass(frozen=True)
class Ack:
    """meterd stored the event durably (``duplicate``: it had stored this id before)."""

    id: str
    duplicate: bool = False


class MeterdError(Exception):
    """Base class of the errors this client raises."""


class RefusedError(MeterdError):
    """meterd refused the event; ``code`` is the wire error code (e.g. ``invalid_field``)."""

    def __init__(self, code: str, message: str, id: Optional[str], event: Mapping[str, Any]):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        #: the event's id as meterd echoed it; None when the line had no readable id
        self.id = id
        #: the event as sent, with its id
        self.event = event

    @property
    def retryable(self) -> bool:
        """True for ``overloaded`` and ``storage_error``: resending the same event may succeed."""
        return self.code in RETRYABLE

    def __repr__(self) -> str:
        return f"RefusedError(code={self.code!r}, message={self.message!r}, id={self.id!r})"


class MeterdTimeout(MeterdError, TimeoutError):
    """Not every event was answered within the timeout.

    ``unanswered`` holds those events with their ids: send them again later, unchanged, and meterd
    counts each at most once. ``results`` is what ``send_many`` would have returned, with None for
    each unanswered event.
    """

    def __init__(self, message: str, unanswered: List[dict], results: list):
        super().__init__(message)
        self.unanswered = unanswered
        self.results = results


class ClientClosed(MeterdError):
    """The client was closed before the events were answered."""


Result = Union[Ack, RefusedError]


class _Call:
    """One send or send_many: its results and who waits for them."""

    __slots__ = ("events", "results", "remaining", "done", "abandoned", "error")

    def __init__(self, events: List[dict]):
        self.events = events
        self.results: List[Optional[Result]] = [None] * len(events)
        self.remaining = len(events)
        self.done = threading.Event()
        self.abandoned = False
        self.error: Optional[MeterdError] = None


class _Entry:
    __slots__ = ("call", "index", "id", "line")

    def __init__(self, call: _Call, index: int, id: Any, line: bytes):
        self.call, self.index, self.id, self.line = call, index, id, line


class _Broken(Exception):
    """The connection cannot be used any more; its unanswered events go to the next one."""


class Client:
    """A connection to meterd's ingest socket, safe to share between threads.

    ``timeout`` (seconds) bounds each ``send``/``send_many`` call, reconnections included.
    """

    def __init__(self, path: Union[str, os.PathLike] = DEFAULT_SOCKET, timeout: float = 30.0):
        self.path = os.fspath(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._submitted: collections.deque = collections.deque()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._last_error = "none"
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, event: Mapping[str, Any], timeout: Optional[float] = None) -> Ack:
        """Sends one event; returns its Ack or raises RefusedError / MeterdTimeout."""
        result = self._submit([event], timeout)[0]
        if isinstance(result, RefusedError):
            raise result
        return result

    def send_many(self, events: Iterable[Mapping[str, Any]], timeout: Optional[float] = None) -> List[Result]:
        """Pipelines events; returns one Ack or RefusedError per event, in order.

        Raises MeterdTimeout when some event has no answer within the timeout.
        """
        return self._submit(list(events), timeout)

    def close(self) -> None:
        """Closes the connection; calls still waiting raise ClientClosed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._wake()
        if thread is not None:
            thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _submit(self, events: List[Mapping[str, Any]], timeout: Optional[float]) -> List[Result]:
        if not events:
            return []
        prepared = []
        for event in events:
            event = dict(event)
            if event.get("id") is None:
                event["id"] = uuid.uuid4().hex
            prepared.append(event)
        call = _Call(prepared)
        entries = [_Entry(call, i, e["id"], _encode(e)) for i, e in enumerate(prepared)]
        with self._lock:
            if self._closed:
                raise ClientClosed("the client is closed")
            self._submitted.extend(entries)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="meterd-client", daemon=True)
                self._thread.start()
            self._wake()
        timeout = self.timeout if timeout is None else timeout
        if not call.done.wait(timeout):
            with self._lock:
                call.abandoned = call.remaining > 0
        if call.abandoned:
            unanswered = [e for e, r in zip(prepared, call.results) if r is None]
            raise MeterdTimeout(
                f"meterd at {self.path} answered {len(prepared) - len(unanswered)} of "
                f"{len(prepared)} events within {timeout}s (last connection error: {self._last_error})",
                unanswered,
                list(call.results),
            )
        if call.error is not None:
            raise call.error
        return call.results  # type: ignore[return-value]

    def _wake(self) -> None:
        """Wakes the I/O thread; the caller holds the lock, so the pipe is still open."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the thread is woken already

    def _finish(self, entry: _Entry, result: Result) -> None:
        """Records one answer; the caller holds the lock."""
        call = entry.call
        if call.abandoned or call.results[entry.index] is not None:
            return
        call.results[entry.index] = result
        call.remaining -= 1
        if call.remaining == 0:
            call.done.set()

    def _run(self) -> None:
        """The I/O thread: connects, writes, reads replies in order, reconnects and resends."""
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        conn: Optional[socket.socket] = None
        inflight: collections.deque = collections.deque()  # written or to be written, in order
        inbuf, outbuf = bytearray(), bytearray()
        backoff, retry_at = 0.0, 0.0
        while True:
            with self._lock:
                if self._closed:
                    break
                new = list(self._submitted)
                self._submitted.clear()
                inflight.extend(new)
                if conn is None:
                    # Events of calls that timed out are not sent again.
                    inflight = collections.deque(e for e in inflight if not e.call.abandoned)
            if conn is not None:
                outbuf += b"".join(e.line for e in new)
            elif inflight and time.monotonic() >= retry_at:
                try:
                    conn = _connect(self.path)
                except OSError as err:
                    self._last_error = str(err)
                    backoff = min(max(backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
                    retry_at = time.monotonic() + backoff
                else:
                    backoff = 0.0
                    outbuf = bytearray(b"".join(e.line for e in inflight))
                    selector.register(conn, selectors.EVENT_READ)
            if conn is not None:
                mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if outbuf else 0)
                selector.modify(conn, mask)
                wait = None
            else:
                wait = max(0.0, retry_at - time.monotonic()) if inflight else None
            try:
                for key, mask in selector.select(wait):
                    if key.fileobj == self._wake_r:
                        _drain(self._wake_r)
                        continue
                    if mask & selectors.EVENT_WRITE:
                        sent = conn.send(outbuf)
                        del outbuf[:sent]
                    if mask & selectors.EVENT_READ:
                        data = conn.recv(65536)
                        if not data:
                            raise _Broken("meterd closed the connection")
                        inbuf += data
                        self._replies(inbuf, inflight)
            except (BlockingIOError, InterruptedError):
                pass
            except (OSError, _Broken, ValueError) as err:
                self._last_error = str(err) or type(err).__name__
                if conn is not None:
                    selector.unregister(conn)
                    conn.close()
                    conn = None
                inbuf.clear()
                outbuf.clear()
                retry_at = time.monotonic()
        if conn is not None:
            conn.close()
        selector.close()
        with self._lock:
            for entry in list(inflight) + list(self._submitted):
                call = entry.call
                if not call.done.is_set():
                    call.error = ClientClosed("the client was closed before meterd answered")
                    call.done.set()

    def _replies(self, inbuf: bytearray, inflight: collections.deque) -> None:
        """Matches every complete reply line in ``inbuf`` to the oldest unanswered event."""
        with self._lock:
            while True:
                end = inbuf.find(b"\n")
                if end < 0:
                    return
                reply = json.loads(inbuf[:end])
                if not inflight:
                    raise _Broken(f"meterd sent a reply for no event: {reply}")
                entry = inflight[0]
                echoed = reply.get("id")
                if reply.get("ok") is True:
                    if echoed != entry.id:
                        raise _Broken(f"reply {reply} does not answer event id {entry.id!r}")
                    result: Result = Ack(echoed, reply.get("duplicate") is True)
                else:
                    if echoed is not None and echoed != entry.id:
                        raise _Broken(f"reply {reply} does not answer event id {entry.id!r}")
                    result = _refused(reply, entry)
                del inbuf[: end + 1]
                inflight.popleft()
                self._finish(entry, result)
                if reply.get("error") == "permission_denied":
                    # Every event on this socket would be refused the same way.
                    while inflight:
                        other = inflight.popleft()
                        self._finish(other, _refused(reply, other))


def _refused(reply: Mapping[str, Any], entry: _Entry) -> RefusedError:
    return RefusedError(
        str(reply.get("error")),
        str(reply.get("message", "")),
        reply.get("id"),
        entry.call.events[entry.index],
    )


def _encode(event: Mapping[str, Any]) -> bytes:
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode() + b"\n"


def _connect(path: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(_CONNECT_TIMEOUT)
        conn.connect(path)
        conn.setblocking(False)
    except OSError:
        conn.close()
        raise
    return conn


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
