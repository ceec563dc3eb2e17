"""The emulator driven by boto3, the client most sellers use.

Each test starts `meterd emulator` (the binary named by METERD_BIN) on a free loopback port with a
configuration of its own, and talks to it through boto3 with its URL as endpoint.
"""

import os
import subprocess
import time

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

METERD_BIN = os.environ.get("METERD_BIN", "target/debug/meterd")
ACCESS_KEY = "AKIDBOTO3TEST"
SECRET_KEY = "boto3-test-secret"
PRODUCT = "prod-boto3"
SUBSCRIBED = "111122223333"


def start_emulator(tmp_path, extra=""):
    config = tmp_path / "emulator.toml"
    config.write_text(
        f"""
{extra}
[[credentials]]
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"

[catalogue]
subscribed_customers = ["{SUBSCRIBED}"]
"""
    )
    proc = subprocess.Popen(
        [METERD_BIN, "emulator", "--listen", "127.0.0.1:0", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


@pytest.fixture
def emulator(tmp_path):
    proc, url = start_emulator(tmp_path)
    yield url
    proc.terminate()
    assert proc.wait(timeout=10) == 0


def metering(url):
    """A boto3 client that sends each call once (no retries), signed with verified keys."""
    return boto3.client(
        "meteringmarketplace",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 1}),
    )


def hour_start(hours_ago):
    return (int(time.time()) // 3600 - hours_ago) * 3600


def record(customer, quantity, timestamp, dimension="requests"):
    return {
        "Timestamp": timestamp,
        "CustomerAWSAccountId": customer,
        "Dimension": dimension,
        "Quantity": quantity,
    }


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def test_success_and_the_same_record_id_on_an_identical_retry(emulator):
    client = metering(emulator)
    batch = [record(SUBSCRIBED, 5, hour_start(1)), record(SUBSCRIBED, 7, hour_start(1), "storage")]
    first = client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=batch)
    assert [r["Status"] for r in first["Results"]] == ["Success", "Success"]
    assert first["UnprocessedRecords"] == []
    again = client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=batch)
    assert [r["MeteringRecordId"] for r in again["Results"]] == [
        r["MeteringRecordId"] for r in first["Results"]
    ]


def test_duplicate_record_on_a_changed_quantity(emulator):
    client = metering(emulator)
    hour = hour_start(2)
    client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[record(SUBSCRIBED, 5, hour)])
    changed = client.batch_meter_usage(
        ProductCode=PRODUCT, UsageRecords=[record(SUBSCRIBED, 6, hour + 60)]
    )
    assert changed["Results"][0]["Status"] == "DuplicateRecord"
    assert "MeteringRecordId" not in changed["Results"][0]


def test_throttling_past_the_quota(tmp_path):
    # Three requests of burst and a refill too slow to matter: the fourth is over the quota.
    proc, url = start_emulator(tmp_path, "requests_per_second = 0.01\nburst = 3")
    try:
        client = metering(url)
        hour = hour_start(1)
        for _ in range(3):
            client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[record(SUBSCRIBED, 1, hour)])
        with pytest.raises(ClientError) as excinfo:
            client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[record(SUBSCRIBED, 1, hour)])
        assert error_code(excinfo) == "ThrottlingException"
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_timestamp_out_of_bounds(emulator):
    client = metering(emulator)
    # BatchMeterUsage accepts records until 24 hours after them.
    too_old = int(time.time()) - 24 * 3600 - 60
    with pytest.raises(ClientError) as excinfo:
        client.batch_meter_usage(
            ProductCode=PRODUCT,
            UsageRecords=[record(SUBSCRIBED, 1, hour_start(1)), record(SUBSCRIBED, 1, too_old, "x")],
        )
    assert error_code(excinfo) == "TimestampOutOfBoundsException"
    assert type(excinfo.value).__name__ == "TimestampOutOfBoundsException"


def test_twenty_six_records_are_a_validation_error(emulator):
    client = metering(emulator)
    batch = [record(SUBSCRIBED, 1, hour_start(1), f"dim{i}") for i in range(26)]
    with pytest.raises(ClientError) as excinfo:
        client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=batch)
    assert error_code(excinfo) == "ValidationException"
    assert "Member must have length less than or equal to 25" in str(excinfo.value)


def test_customer_not_subscribed_for_an_unknown_customer(emulator):
    client = metering(emulator)
    out = client.batch_meter_usage(
        ProductCode=PRODUCT,
        UsageRecords=[record(SUBSCRIBED, 3, hour_start(1)), record("999999999999", 3, hour_start(1))],
    )
    assert [r["Status"] for r in out["Results"]] == ["Success", "CustomerNotSubscribed"]


def test_meter_usage_dry_run_and_hourly_dedup(emulator):
    client = metering(emulator)
    hour = hour_start(1)
    with pytest.raises(ClientError) as excinfo:
        client.meter_usage(
            ProductCode=PRODUCT, Timestamp=hour, UsageDimension="hosts", UsageQuantity=1, DryRun=True
        )
    assert error_code(excinfo) == "DryRunOperation"
    first = client.meter_usage(ProductCode=PRODUCT, Timestamp=hour, UsageDimension="hosts", UsageQuantity=2)
    same = client.meter_usage(
        ProductCode=PRODUCT, Timestamp=hour + 900, UsageDimension="hosts", UsageQuantity=2
    )
    assert same["MeteringRecordId"] == first["MeteringRecordId"]
    with pytest.raises(ClientError) as excinfo:
        client.meter_usage(ProductCode=PRODUCT, Timestamp=hour, UsageDimension="hosts", UsageQuantity=3)
    assert error_code(excinfo) == "DuplicateRequestException"


def test_a_wrong_secret_is_refused(emulator):
    client = boto3.client(
        "meteringmarketplace",
        endpoint_url=emulator,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key="not-the-secret",
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    with pytest.raises(ClientError) as excinfo:
        client.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[record(SUBSCRIBED, 1, hour_start(1))])
    assert error_code(excinfo) == "InvalidSignatureException"
