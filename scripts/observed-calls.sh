#!/usr/bin/env bash
# The IAM grants of the three functions, derived from what they call (issue 12, defect 9).
#
# Records every SDK call the handlers make across the e2e suite (RESYNC_CALL_LOG: the
# function, the IAM action it needs, the kind of resource it was made on; see
# cli/src/aws/calls.rs), on the embedded emulator and against moto's server and
# LocalStack (as .ci/run does), and compares the union with
# tests/deploy/observed-calls.json (check) or rewrites that file (update). The deploy
# suite (`cargo test`) and infra's `npm test` check template.yaml and the CDK synth
# against the committed file: a call without its grant, or a grant no call uses, fails
# them.
#
# Usage:
#   scripts/observed-calls.sh check|update        record the suites, then compare/write
#   scripts/observed-calls.sh check|update DIR    use the calls already recorded in DIR
#                                                 (RESYNC_CALL_LOG=DIR during the e2e runs;
#                                                 what .ci/run does)
# Recording against moto needs `pip install 'moto[server]==5.2.1'`, against LocalStack
# ../shared/localstack/setup.sh run once; without one, the others are recorded (a
# warning says so). CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
if [[ "$mode" != check && "$mode" != update ]]; then
  echo "usage: scripts/observed-calls.sh check|update [DIR]" >&2
  exit 2
fi
dir=${2:-}

if [[ -z "$dir" ]]; then
  dir=$(mktemp -d)
  emulators=""
  trap 'kill $emulators 2>/dev/null || true' EXIT
  echo "==> e2e suite on the embedded emulator, calls recorded in $dir"
  RESYNC_CALL_LOG="$dir" cargo test -q -p resync-tests --test e2e
  if python3 -c 'import moto.server' >/dev/null 2>&1; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    moto_log=$(mktemp)
    python3 -m moto.server -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
    moto_pid=$!
    emulators="$emulators $moto_pid"
    for _ in $(seq 1 100); do
      if curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then break; fi
      if ! kill -0 $moto_pid 2>/dev/null; then cat "$moto_log"; echo "moto did not start" >&2; exit 1; fi
      sleep 0.2
    done
    echo "==> e2e suite against moto on port $port, calls recorded in $dir"
    RESYNC_CALL_LOG="$dir" RESYNC_TEST_ENDPOINT="http://127.0.0.1:$port" cargo test -q -p resync-tests --test e2e
  else
    echo "warning: moto is not installed; not recorded against moto" >&2
  fi
  kit=../shared/localstack
  if [[ -f "$kit/start.sh" && -x "${LOCALSTACK_HOME:-$HOME/.cache/resync-localstack}/venv/bin/python" ]]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    out=$(LOCALSTACK_PORT=$port bash "$kit/start.sh")
    ls_pid=${out##*pid=}; ls_pid=${ls_pid%% *}
    emulators="$emulators $ls_pid"
    echo "==> e2e suite against LocalStack on port $port, calls recorded in $dir"
    RESYNC_CALL_LOG="$dir" RESYNC_TEST_ENDPOINT="http://127.0.0.1:$port" cargo test -q -p resync-tests --test e2e
  else
    echo "warning: LocalStack is not set up ($kit/setup.sh); not recorded against LocalStack" >&2
  fi
fi

echo "==> $mode tests/deploy/observed-calls.json against the calls in $dir"
RESYNC_CALL_LOG="$dir" RESYNC_OBSERVED_CALLS="$mode" \
  cargo test -q -p resync-tests --test deploy -- --exact iam::the_observed_calls_are_the_committed_ones --nocapture
