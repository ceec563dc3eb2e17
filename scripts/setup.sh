#!/usr/bin/env bash
# Installs what the tests need when it is missing, on Debian or Ubuntu: the Python venv (boto3,
# pytest, moto's SQS server) and the Debian packages the suites use. Called by scripts/test.sh (`tests`) and
# .ci/run (`ci`: also what scripts/package-check.sh needs). As root it installs with apt-get;
# otherwise it names the missing packages and the command that installs them, and fails.
#
#   systemd          systemd-analyze: tests/systemd_units.rs verifies the units
#   golang-go        the Go client library's suite (clients/go)
#   nodejs           the Node.js client library's suite (clients/node)
#   strace           tests/durability_strace.rs reads every ack's fdatasync off the system calls
#   postgresql       fleet mode's tests start throwaway clusters (tests/common/pg.rs: initdb, pg_ctl)
#   rpm, man-db, binutils (ci)  scripts/package-check.sh: rpm -qlp, man, strip
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-tests}
case "$what" in tests | ci) ;; *) echo "usage: scripts/setup.sh [tests|ci]" >&2; exit 2 ;; esac
root=false
[ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null && root=true

if ! .venv/bin/python -c "import boto3, pytest, moto.server" 2>/dev/null; then
    echo "== creating .venv with boto3, pytest and moto"
    if ! python3 -m venv .venv; then
        # Debian's python3 makes venvs only with python3-venv.
        if ! $root; then
            echo "scripts/setup.sh: python3 cannot make a venv; install python3-venv (apt-get install python3-venv)" >&2
            exit 1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
        rm -rf .venv
        python3 -m venv .venv
    fi
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/boto3/requirements.txt
fi

missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v go >/dev/null || missing+=(golang-go)
command -v node >/dev/null || missing+=(nodejs)
command -v strace >/dev/null || missing+=(strace)
# tests/common/pg.rs finds initdb on PATH or in Debian's /usr/lib/postgresql/*/bin.
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ "$what" = ci ]; then
    command -v rpm >/dev/null || missing+=(rpm)
    command -v man >/dev/null || missing+=(man-db)
    command -v strip >/dev/null || missing+=(binutils)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! $root; then
    echo "scripts/setup.sh: the tests need these Debian packages, which are missing: ${missing[*]}" >&2
    echo "install them as root (apt-get install ${missing[*]}), or run this script as root" >&2
    exit 1
fi
echo "== installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
