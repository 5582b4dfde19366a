#!/usr/bin/env bash
# Builds the three Lambda bootstraps as they are deployed (arm64, `lambda` profile,
# stripped; the README's build command) and prints each one's size and zipped size.
# Fails if any bootstrap is over the 8 MB target (8,000,000 bytes).
# Not part of CI: a cold build takes about half an hour on two cores.
#
# Usage: scripts/bootstrap-sizes.sh [--no-build]   (CARGO_TARGET_DIR is honoured)
set -euo pipefail
cd "$(dirname "$0")/.."
limit=8000000
target_dir=${CARGO_TARGET_DIR:-target}
bins=(sync-start delivery finalizer)

if [[ "${1:-}" != "--no-build" ]]; then
  start=$(date +%s)
  cargo lambda build --profile lambda --arm64 --bin sync-start --bin delivery --bin finalizer
  echo "build: $(( $(date +%s) - start )) s"
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
printf '%-12s %10s %10s\n' bootstrap 'MB' 'zipped MB'
for bin in "${bins[@]}"; do
  bootstrap="$target_dir/lambda/$bin/bootstrap"
  if [[ ! -f "$bootstrap" ]]; then
    echo "$bootstrap: not built" >&2
    status=1
    continue
  fi
  size=$(stat -c %s "$bootstrap")
  # Lambda's deployment package: a zip holding `bootstrap`.
  (cd "$(dirname "$bootstrap")" && zip -q "$scratch/$bin.zip" bootstrap)
  zipped=$(stat -c %s "$scratch/$bin.zip")
  mark=""
  if (( size > limit )); then
    mark="  over the 8 MB target"
    status=1
  fi
  awk -v b="$bin" -v s="$size" -v z="$zipped" -v m="$mark" \
    'BEGIN { printf "%-12s %10.2f %10.2f%s\n", b, s / 1e6, z / 1e6, m }'
done
exit $status
