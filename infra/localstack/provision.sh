#!/usr/bin/env bash
# Waits until LocalStack answers (deadline 120 s), then provisions the stack of a sync
# configuration there with `resync provision` — the same code the tests provision the
# embedded emulator and moto with. Idempotent: run it again and nothing changes.
# Usage: provision.sh [config] [stack]
# Env: AWS_ENDPOINT_URL (default http://localhost:4566); RESYNC_BIN, a built `resync`
# binary to run (CI passes its debug build), else `cargo run --release` builds one.
set -euo pipefail
cd "$(dirname "$0")/../.."
config=${1:-config/resync.yaml}
stack=${2:-resync}
export AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-http://localhost:4566}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_REGION=${AWS_REGION:-us-east-1}
deadline=$(( $(date +%s) + 120 ))
until curl -fsS "$AWS_ENDPOINT_URL/_localstack/health" 2>/dev/null | grep -q '"sqs": "\(available\|running\)"'; do
  if [ "$(date +%s)" -ge "$deadline" ]; then echo "LocalStack did not answer at $AWS_ENDPOINT_URL" >&2; exit 1; fi
  sleep 1
done
if [ -n "${RESYNC_BIN:-}" ]; then
  "$RESYNC_BIN" provision --config "$config" --stack "$stack"
else
  cargo run --release -q -p resync -- provision --config "$config" --stack "$stack"
fi
