"""Reconnection, resending and the timeout against a scripted stand-in for meterd's socket, so
that what arrives on each connection can be asserted byte for byte."""

import json
import re
import socket
import threading
import time

import pytest

from meterd import Ack, Client, ClientClosed, MeterdError, MeterdTimeout


class FakeMeterd:
    """A Unix socket server that runs `script(connections)` in a thread."""

    def __init__(self, path, script):
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.server.settimeout(10)
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script):
        try:
            script(self)
        except BaseException as err:  # reported by join()
            self.error = err

    def accept(self):
        conn, _ = self.server.accept()
        conn.settimeout(10)
        return conn, conn.makefile("rb")

    @staticmethod
    def hang_up(conn, reader):
        reader.close()  # the socket stays open while its file object is
        conn.close()

    def join(self):
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.server.close()
        if self.error:
            raise self.error


def ok(line, duplicate=False):
    reply = {"ok": True, "id": json.loads(line)["id"]}
    if duplicate:
        reply["duplicate"] = True
    return (json.dumps(reply) + "\n").encode()


EVENTS = [{"customer_identifier": f"c-{i}", "dimension": "requests", "quantity": i} for i in range(3)]


def test_unanswered_events_are_resent_under_the_same_ids(workdir):
    seen = []

    def script(fake):
        # First connection: all three events arrive, one is answered, then the connection breaks.
        conn, reader = fake.accept()
        first = [reader.readline() for _ in EVENTS]
        seen.append(first)
        conn.sendall(ok(first[0]))
        fake.hang_up(conn, reader)
        # Second connection: only the two unanswered events, unchanged; one had been stored.
        conn, reader = fake.accept()
        second = [reader.readline() for _ in EVENTS[1:]]
        seen.append(second)
        conn.sendall(ok(second[0], duplicate=True) + ok(second[1]))
        assert reader.readline() == b""  # the client closes
        fake.hang_up(conn, reader)

    fake = FakeMeterd(workdir / "fake.sock", script)
    with Client(workdir / "fake.sock", timeout=10) as client:
        results = client.send_many(EVENTS)
    fake.join()
    first, second = seen
    assert second == first[1:]
    ids = [json.loads(line)["id"] for line in first]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 3
    assert [json.loads(line) for line in first] == [dict(e, id=i) for e, i in zip(EVENTS, ids)]
    assert results == [Ack(ids[0]), Ack(ids[1], True), Ack(ids[2])]


def test_timeout_names_the_unanswered_events_and_they_are_not_resent(workdir):
    seen = []
    answered = threading.Event()

    def script(fake):
        conn, reader = fake.accept()
        seen.append([reader.readline(), reader.readline()])
        answered.wait(10)  # no answer until the client has given up
        fake.hang_up(conn, reader)
        conn, reader = fake.accept()
        line = reader.readline()
        seen.append([line])
        conn.sendall(ok(line))
        assert reader.readline() == b""
        fake.hang_up(conn, reader)

    fake = FakeMeterd(workdir / "fake.sock", script)
    with Client(workdir / "fake.sock", timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(MeterdTimeout) as timeout:
            client.send_many([dict(EVENTS[0], id="x"), EVENTS[1]])
        waited = time.monotonic() - started
        answered.set()
        assert 0.3 <= waited < 2, waited
        error = timeout.value
        assert isinstance(error, TimeoutError) and isinstance(error, MeterdError)
        generated = error.unanswered[1]["id"]
        assert error.unanswered == [dict(EVENTS[0], id="x"), dict(EVENTS[1], id=generated)]
        assert error.results == [None, None]
        assert str(error).startswith(f"meterd at {workdir / 'fake.sock'} answered 0 of 2 events within 0.3s")
        # The next call uses a new connection that carries only its own event.
        assert client.send(dict(EVENTS[2], id="y"), timeout=10) == Ack("y")
    fake.join()
    assert [json.loads(line)["id"] for line in seen[0]] == ["x", generated]
    assert [json.loads(line)["id"] for line in seen[1]] == ["y"]


def test_no_socket_times_out_with_the_connection_error(workdir):
    with Client(workdir / "absent.sock", timeout=0.2) as client:
        with pytest.raises(MeterdTimeout) as timeout:
            client.send(EVENTS[0])
    assert "answered 0 of 1 events within 0.2s" in str(timeout.value)
    assert "No such file or directory" in str(timeout.value)


def test_close_fails_waiting_calls_and_later_ones(workdir):
    received = threading.Event()

    def script(fake):
        conn, reader = fake.accept()
        reader.readline()
        received.set()
        assert reader.readline() == b""  # closed by the client, unanswered
        fake.hang_up(conn, reader)

    fake = FakeMeterd(workdir / "fake.sock", script)
    client = Client(workdir / "fake.sock", timeout=10)
    failures = []

    def call():
        try:
            client.send(EVENTS[0])
        except MeterdError as err:
            failures.append(err)

    caller = threading.Thread(target=call)
    caller.start()
    assert received.wait(10)
    client.close()
    caller.join(timeout=10)
    fake.join()
    assert [type(e) for e in failures] == [ClientClosed]
    with pytest.raises(ClientClosed):
        client.send(EVENTS[0])
