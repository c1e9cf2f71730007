#!/usr/bin/env bash
# The JavaScript part of the conformance suite, run by conformance/run.sh with the emulator's
# environment: installs the pinned packages (package-lock.json) under conformance/js/node_modules
# and runs check_clients.cjs. Same skip rule as run.sh: no registry is a failure unless
# B2B_CONFORMANCE_ALLOW_SKIP=1.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "${B2B_CONFORMANCE_ALLOW_SKIP:-0}" = "1" ]; then
        echo "SKIP conformance (JavaScript): node and npm are not installed (B2B_CONFORMANCE_ALLOW_SKIP=1)"
        exit 0
    fi
    echo "FAIL conformance (JavaScript): node and npm are not installed" >&2
    exit 1
fi
if [ ! -d node_modules ] || ! cmp -s package-lock.json node_modules/.package-lock.json.installed; then
    rm -rf node_modules
    if ! npm ci --no-audit --no-fund --silent >npm.log 2>&1; then
        tail -5 npm.log >&2
        rm -rf node_modules npm.log
        if [ "${B2B_CONFORMANCE_ALLOW_SKIP:-0}" = "1" ]; then
            echo "SKIP conformance (JavaScript): the npm packages could not be installed (B2B_CONFORMANCE_ALLOW_SKIP=1)"
            exit 0
        fi
        echo "FAIL conformance (JavaScript): the npm packages could not be installed from the registry" >&2
        exit 1
    fi
    rm -f npm.log
    cp package-lock.json node_modules/.package-lock.json.installed
fi
NODE_EXTRA_CA_CERTS="$SSL_CERT_FILE" node check_clients.cjs
