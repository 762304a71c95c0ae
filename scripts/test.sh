#!/usr/bin/env bash
# Every test: Rust unit/integration tests (real userfaultfd), then the ava suite
# (real CRIU dumps and restores). Needs root and a finished scripts/setup.sh.
# Ends with one line "N passed, M failed" over both runners.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "test: run as root (CRIU and userfaultfd need it)" >&2
    exit 1
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Set-up installed CRIU and the workloads: interop tests must run, not skip.
# A hung engine test would otherwise eat CI's whole time budget: fail it instead
# (ava has its own per-test timeout).
cargo_limit=${LP_CARGO_TEST_TIMEOUT:-1500}
LP_REQUIRE_CRIU=1 timeout --kill-after=30 "$cargo_limit" cargo test --workspace --release --no-fail-fast 2>&1 | tee "$logs/cargo.log"
cargo_rc=${PIPESTATUS[0]}
if [ "$cargo_rc" -eq 124 ] || [ "$cargo_rc" -eq 137 ]; then
    echo "test: cargo test did not finish within ${cargo_limit} s (a hang?); counted as a failure" >&2
fi

npx ava "$@" 2>&1 | tee "$logs/ava.log"
ava_rc=${PIPESTATUS[0]}

sum() { grep -Eo "$1" "$2" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}'; }
passed=$(( $(sum '[0-9]+ passed;' "$logs/cargo.log") + $(sum '[0-9]+ tests? passed' "$logs/ava.log") ))
failed=$(( $(sum '[0-9]+ failed;' "$logs/cargo.log") + $(sum '[0-9]+ (tests? failed|uncaught exceptions?|unhandled rejections?)' "$logs/ava.log") ))
if [ "$cargo_rc" -ne 0 ] || [ "$ava_rc" -ne 0 ]; then
    [ "$failed" -gt 0 ] || failed=1
fi
echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
