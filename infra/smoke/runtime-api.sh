#!/usr/bin/env bash
# The three Lambda binaries through the Lambda Runtime API (cargo lambda watch) against
# the embedded AWS emulator (resync emulator); see runtime_api.py for what it proves.
# Installs what it needs: cargo-lambda (PyPI, ships zig) and boto3.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! cargo lambda --version >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'cargo-lambda==1.9.2'
fi
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check boto3
exec python3 infra/smoke/runtime_api.py "$@"
