"""SIGKILL meterd while the application is sending through the client; restart it; the client
reconnects and resends what was unanswered under the same ids. Once the hour is sealed and
submitted, the emulator has billed exactly what the application sent, once."""

import threading
import time

from meterd import Ack, Client

from conftest import DIMENSIONS, hour_start

WORKERS = 4
BATCH = 50
LATER = 4 * 3600


def wait_until(condition, within, what):
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {within}s"
        time.sleep(0.005)


def test_sigkill_mid_stream_bills_every_event_once(emulator, meterd):
    hour = hour_start()
    first = meterd()
    client = Client(first.socket, timeout=60)
    stop = threading.Event()
    lock = threading.Lock()
    sent = []  # (event, its Ack) for every event the application sent
    failures = []

    def application(worker):
        n = 0
        try:
            while not stop.is_set():
                batch = [
                    {
                        "customer_aws_account_id": str(100_000_000_000 + worker),
                        "dimension": DIMENSIONS[i % 2],
                        "quantity": i % 7 + 1,
                        "timestamp": hour + 1,
                    }
                    for i in range(n, n + BATCH)
                ]
                n += BATCH
                results = client.send_many(batch)
                assert all(isinstance(r, Ack) for r in results), results
                with lock:
                    sent.extend(zip(batch, results))
        except BaseException as err:
            failures.append(err)

    def acked():
        with lock:
            return len(sent)

    threads = [threading.Thread(target=application, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: acked() >= 2000, 30, "2000 events acknowledged")
        first.kill9()
        at_kill = acked()
        # A new meterd on the same data dir and socket; the client finds it on its own and the
        # application goes on sending.
        second = meterd()
        second.wait_metric("meterd_events_accepted_total", 2000)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures

    ids = [ack.id for _, ack in sent]
    assert len(set(ids)) == len(sent)
    assert at_kill < len(sent)
    resent_stored = sum(ack.duplicate for _, ack in sent)
    # Replies meterd never sent before the kill: what it had stored is answered duplicate by the
    # new meterd, the rest is counted by it; nothing else reached it.
    assert second.metric("meterd_events_duplicate_total") == resent_stored
    assert second.metric("meterd_events_accepted_total") <= len(sent) - at_kill

    # The application resends everything it sent: every event is known under its id.
    again = client.send_many([dict(event, id=ack.id) for event, ack in sent])
    assert again == [Ack(ack.id, True) for _, ack in sent]
    client.close()
    assert second.terminate() == 0

    expected = {}
    for event, _ in sent:
        key = (event["customer_aws_account_id"], event["dimension"])
        expected[key] = expected.get(key, 0) + event["quantity"]
    emulator.set_clock_offset(LATER)
    meterd(clock_offset=LATER)  # the hour is sealed and submitted
    wait_until(lambda: len(emulator.records()) >= len(expected), 60, f"{len(expected)} records billed")
    records = emulator.records()
    billed = {(r["customer_aws_account_id"], r["dimension"]): r["quantity"] for r in records}
    assert len(records) == len(expected) == WORKERS * len(DIMENSIONS)
    assert {r["hour"] for r in records} == {hour}
    assert billed == expected
    assert "DuplicateRecord" not in emulator.statuses()
    print(
        f"{len(sent)} events, {at_kill} acknowledged before the SIGKILL, {resent_stored} stored but "
        f"unanswered (answered duplicate after the restart), {len(records)} records billed"
    )
