#!/usr/bin/env bash
# The conformance suite (docs/emulator.md, "Conformance"): Microsoft's own clients, unmodified,
# against `b2b-convert emulator --tls`. Builds a Python virtual environment from the package
# registry (pinned in conformance/python/requirements.txt) under conformance/.venv, starts the
# emulator binary, passes the environment it prints to the checks, and exits non-zero when any
# check fails.
#
# When the registry cannot be reached the suite cannot run: it then fails, unless
# B2B_CONFORMANCE_ALLOW_SKIP=1, when it prints a SKIP line and exits 0. It never passes silently.
#
# B2B_BIN: the binary (default target/release/b2b-convert, what `cargo test --release` builds).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${B2B_BIN:-target/release/b2b-convert}"
VENV=conformance/.venv
WORK="$(mktemp -d)"
EMULATOR_PID=""

cleanup() {
    if [ -n "$EMULATOR_PID" ]; then
        # SIGINT, its Ctrl-C: the emulator stops and removes its CA file.
        kill -INT "$EMULATOR_PID" 2>/dev/null || true
        wait "$EMULATOR_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cannot_run() {
    if [ "${B2B_CONFORMANCE_ALLOW_SKIP:-0}" = "1" ]; then
        echo "SKIP conformance: $1 (B2B_CONFORMANCE_ALLOW_SKIP=1)"
        exit 0
    fi
    echo "FAIL conformance: $1 (set B2B_CONFORMANCE_ALLOW_SKIP=1 to skip instead)" >&2
    exit 1
}

[ -x "$BIN" ] || { echo "FAIL conformance: no binary at $BIN (cargo build --release first)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ] || ! cmp -s conformance/python/requirements.txt "$VENV/requirements.txt"; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" || cannot_run "python3 -m venv failed"
    if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            -r conformance/python/requirements.txt >"$WORK/pip.log" 2>&1; then
        tail -5 "$WORK/pip.log" >&2
        rm -rf "$VENV"
        cannot_run "the Python packages could not be installed from the package registry"
    fi
    cp conformance/python/requirements.txt "$VENV/requirements.txt"
fi

# The emulator: TLS, the device code approved at the first poll, every second invitation
# answered 429 (the retry handler's check), generous buckets.
"$BIN" emulator --tls --listen 127.0.0.1:0 \
    --device-code-approve-after 1 --throttle-every-nth-invitation 2 \
    >"$WORK/emulator.env" 2>"$WORK/emulator.log" &
EMULATOR_PID=$!
for _ in $(seq 1 300); do
    grep -q '^SSL_CERT_FILE=' "$WORK/emulator.env" && break
    kill -0 "$EMULATOR_PID" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q '^SSL_CERT_FILE=' "$WORK/emulator.env"; then
    cat "$WORK/emulator.log" >&2
    echo "FAIL conformance: the emulator printed no SSL_CERT_FILE line" >&2
    exit 1
fi

while IFS='=' read -r name value; do
    [ -n "$name" ] && export "$name=$value"
done <"$WORK/emulator.env"
# requests (azure-core, MSAL) reads its own variable; httpx and OpenSSL read SSL_CERT_FILE.
export REQUESTS_CA_BUNDLE="$SSL_CERT_FILE"
export CONFORMANCE_CERT_PATH="$PWD/tests/fixtures/app-cert-with-key.pem"

status=0
timeout 300 "$VENV/bin/python" conformance/python/check_clients.py || status=$?
if [ -f conformance/js/package.json ]; then
    timeout 300 conformance/js/run.sh || status=1
fi
exit "$status"
