#!/usr/bin/env bash
# Installs what the test suite needs besides the Rust toolchain: a real etcd
# (the replicated-coordinator tests run a 3-member cluster on loopback),
# promtool (from the prometheus package: checks the metrics' text format),
# Python's venv (deploy/check-manifests.sh installs kubernetes-validate
# from PyPI into one), and the Python tools the tests drive, from PyPI into
# target/tools/python: aiosmtpd (a real SMTP server the notification tests
# mail to), schemathesis (tests the REST API against its OpenAPI document)
# and selenium (drives Debian's chromium + chromium-driver, installed here,
# through the status page). kubectl must be there already.
# Debian/Ubuntu packages; run as root or with sudo. Does nothing when
# everything is already there. ./test.sh runs it when etcd is missing.
set -euo pipefail

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

python_tools() {
    local venv=target/tools/python
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import aiosmtpd, schemathesis, selenium' 2>/dev/null; then
        return
    fi
    echo "==> installing the Python test tools into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'aiosmtpd==1.4.6' 'schemathesis==4.32.5' 'selenium==4.51.0'
}

cd "$(dirname "$0")/.."
if [ ${#missing[@]} -eq 0 ]; then
    python_tools
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "error: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
    as_root=(sudo)
fi

echo "==> installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The package may start a system etcd on the default ports; the tests use
# their own members on free ports, so it is stopped if it was started.
for service in etcd prometheus prometheus-node-exporter; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        "${as_root[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
done
python_tools
