"""The real daemon for the client's tests: `meterd emulator` and `meterd run` as subprocesses on a
temp dir, with their own socket and ports, as tests/common/daemon.rs starts them.

The binary is METERD_BIN (scripts/test.sh sets it), else target/debug/meterd of this repository.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
METERD_BIN = os.path.abspath(os.environ.get("METERD_BIN") or REPO / "target/debug/meterd")
PRODUCT = "prod-clients"
DIMENSIONS = ["requests", "storage_gb"]
# meterd's deadline and the emulator's window: long enough for a clock moved 4 hours ahead.
DEADLINE_SECS = 12 * 3600


def hour_start(now=None):
    return int(now if now is not None else time.time()) // 3600 * 3600


def http(url, method="GET", body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return text


class Emulator:
    def __init__(self, workdir):
        config = workdir / "emulator.toml"
        config.write_text('window = "12h"\n')
        self.log = open(workdir / "emulator.log", "wb")
        self.proc = subprocess.Popen(
            [METERD_BIN, "emulator", "--listen", "127.0.0.1:0", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def control(self, path, method="GET", body=None):
        return json.loads(http(self.url + path, method, body) or "null")

    def records(self):
        return self.control("/_emulator/records")["records"]

    def statuses(self):
        """Per-record statuses summed over every request."""
        total = {}
        for request in self.control("/_emulator/requests")["requests"]:
            for status, n in (request.get("statuses") or {}).items():
                total[status] = total.get(status, 0) + n
        return total

    def set_clock_offset(self, seconds):
        self.control("/_emulator/clock", "POST", {"offset_seconds": seconds})

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=10) == 0
        self.log.close()


class Meterd:
    """One `meterd run` process; its JSON log goes to a file of the work dir."""

    starts = 0

    def __init__(self, workdir, emulator, clock_offset=0):
        Meterd.starts += 1
        self.workdir = workdir
        self.socket = str(workdir / "meterd.sock")
        self.log_path = workdir / f"meterd-{Meterd.starts}.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "METERD_STORAGE__DATA_DIR": str(workdir / "data"),
            "METERD_INGEST__SOCKET": self.socket,
            "METERD_ADMIN__SOCKET": str(workdir / "admin.sock"),
            "METERD_METRICS__LISTEN": "127.0.0.1:0",
            "METERD_AWS__ENDPOINT_URL": emulator.url,
            "METERD_AWS__PRODUCT_CODE": PRODUCT,
            "METERD_AWS__DIMENSIONS": json.dumps(DIMENSIONS),
            "METERD_LOG__FORMAT": "json",
            "METERD_STORAGE__CHECKPOINT_INTERVAL": "100ms",
            "METERD_SUBMIT__SEAL_DELAY": "3h",
            "METERD_SUBMIT__DEADLINE": "12h",
            "METERD_SUBMIT__MAX_REQUESTS_PER_SECOND": "10",
            "METERD_SUBMIT__BACKOFF_BASE": "50ms",
            "METERD_SUBMIT__BACKOFF_MAX": "400ms",
            "METERD_TEST_CLOCK_OFFSET": str(clock_offset),
            "AWS_ACCESS_KEY_ID": "AKIDCLIENTTEST",
            "AWS_SECRET_ACCESS_KEY": "client-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
        }
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [METERD_BIN, "run"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )
        self.metrics = self.wait_log("meterd ready")["metrics"]

    def wait_log(self, needle, within=30.0):
        deadline = time.monotonic() + within
        while True:
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if needle in entry.get("message", ""):
                    return entry
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no log line {needle!r} (exit {self.proc.poll()}):\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def metric(self, sample):
        for line in http(f"http://{self.metrics}/metrics").splitlines():
            if line.startswith(sample + " "):
                return float(line.split(" ")[1])
        raise AssertionError(f"no sample {sample}")

    def wait_metric(self, sample, at_least, within=30.0):
        deadline = time.monotonic() + within
        while (value := self.metric(sample)) < at_least:
            assert time.monotonic() < deadline, f"{sample} is {value} after {within}s, expected >= {at_least}"
            time.sleep(0.01)
        return value

    def kill9(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL

    def terminate(self):
        self.proc.terminate()
        return self.proc.wait(timeout=30)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def workdir():
    # Short, so that socket paths stay under the 108-byte limit of sun_path.
    path = Path(tempfile.mkdtemp(prefix="meterd-py-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def emulator(workdir):
    emu = Emulator(workdir)
    yield emu
    emu.stop()


@pytest.fixture
def meterd(workdir, emulator):
    started = []

    def start(clock_offset=0):
        daemon = Meterd(workdir, emulator, clock_offset)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
