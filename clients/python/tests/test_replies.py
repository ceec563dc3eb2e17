"""Exact replies of the real daemon, as the client hands them to the application."""

import json
import re
import time

import pytest

from meterd import Ack, Client, RefusedError

from conftest import DEADLINE_SECS, hour_start


def event(customer="111122223333", dimension="requests", quantity=1, **extra):
    return {"customer_aws_account_id": customer, "dimension": dimension, "quantity": quantity, **extra}


def outcome(result):
    if isinstance(result, Ack):
        return result
    return (result.code, result.message, result.id)


def test_accepted_events_and_resent_ids(meterd):
    daemon = meterd()
    with Client(daemon.socket, timeout=10) as client:
        generated = client.send(event())
        assert re.fullmatch(r"[0-9a-f]{32}", generated.id), generated
        assert generated.duplicate is False
        assert client.send(event(id="order-1", tags={"team": "a"})) == Ack("order-1", False)
        assert client.send(event(id="order-1", tags={"team": "a"})) == Ack("order-1", True)
        # meterd stored the first event under the id the client made up.
        assert client.send(event(id=generated.id)) == Ack(generated.id, True)
    assert daemon.metric("meterd_events_accepted_total") == 2
    assert daemon.metric("meterd_events_duplicate_total") == 2


def test_send_many_answers_every_event_in_order(meterd):
    daemon = meterd()
    now = int(time.time())
    too_old = now - DEADLINE_SECS - 3600
    ahead = now + 3600
    long_line = event(id="h", dimension="x" * 70_000)
    long_bytes = len(json.dumps(long_line, separators=(",", ":")))
    events = [
        event(id="a"),
        event(customer="12ab", id="b"),
        event(id="c", colour="red"),
        event(id="d", dimension="cpu"),
        {"customer_aws_account_id": "111122223333", "quantity": 1, "id": "e"},
        event(id="f", timestamp=too_old),
        event(id="g", timestamp=ahead),
        long_line,
        event(customer="444455556666", quantity=2147483647, id="i", timestamp=hour_start(now)),
        event(customer="444455556666", quantity=1, id="j", timestamp=hour_start(now)),
        event(id=""),
        event(quantity=-1, id="l"),
    ]
    with Client(daemon.socket, timeout=10) as client:
        results = client.send_many(events)
    future = results[6]
    assert (future.code, future.id) == ("future_timestamp", "g")
    lead = re.fullmatch(rf"timestamp {ahead} is (\d+)s ahead of meterd's clock", future.message)
    assert lead and 3590 <= int(lead.group(1)) <= 3600, future.message
    fields = "`customer_aws_account_id`, `customer_identifier`, `license_arn`, `product_code`, `dimension`, `quantity`, `timestamp`, `tags`, `id`"
    assert [outcome(r) for i, r in enumerate(results) if i != 6] == [
        Ack("a", False),
        ("invalid_field", "`customer_aws_account_id` must be digits only", "b"),
        ("invalid_field", f"unknown field `colour`, expected one of {fields}", None),
        ("unknown_dimension", 'dimension "cpu" is not in aws.dimensions', "d"),
        ("missing_field", "`dimension` is required", "e"),
        (
            "out_of_window",
            f"timestamp {too_old} is in an hour past the submit deadline ({DEADLINE_SECS}s after its start); "
            "the service would refuse it",
            "f",
        ),
        ("line_too_long", f"line of {long_bytes} bytes is longer than 65536", None),
        Ack("i", False),
        (
            "quantity_overflow",
            "the hour's total for this customer and dimension would reach 2147483648, above 2147483647",
            "j",
        ),
        ("invalid_field", "`id` must be 1 to 128 bytes", None),
        ("invalid_field", "`quantity` must be an integer from 0 to 2147483647, got -1", "l"),
    ]
    # A refusal carries the event as sent, with the id the client gave it.
    assert results[1].event == events[1]
    assert daemon.metric("meterd_events_accepted_total") == 2


def test_send_raises_a_typed_error_with_the_wire_code(meterd):
    daemon = meterd()
    with Client(daemon.socket, timeout=10) as client:
        with pytest.raises(RefusedError) as refused:
            client.send(event(dimension="cpu"))
    error = refused.value
    assert error.code == "unknown_dimension"
    assert error.message == 'dimension "cpu" is not in aws.dimensions'
    assert str(error) == 'unknown_dimension: dimension "cpu" is not in aws.dimensions'
    assert re.fullmatch(r"[0-9a-f]{32}", error.id)
    assert error.event == event(dimension="cpu", id=error.id)
    assert error.retryable is False


def test_events_name_their_product(meterd):
    daemon = meterd()
    with Client(daemon.socket, timeout=10) as client:
        assert client.send(event(id="p-1", product_code="prod-clients")) == Ack("p-1", False)
        # The same usage without the field is the same event of the one configured product.
        assert client.send(event(id="p-1")) == Ack("p-1", True)
        with pytest.raises(RefusedError) as refused:
            client.send(event(id="p-2", product_code="prod-other"))
    message = '`product_code` "prod-other" is not a configured product (configured: "prod-clients")'
    assert outcome(refused.value) == ("unknown_product", message, "p-2")
    assert refused.value.retryable is False
