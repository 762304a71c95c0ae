#!/usr/bin/env bash
# One command from a bare machine to a working lazy-pages: build tools, npm deps,
# the release addon and TypeScript, the test workloads, a private CRIU 4.1.1,
# then the main job (a real lazy restore with a report). Idempotent: a second
# run rebuilds nothing that is current and finishes in seconds.
#
#   LAZY_PAGES_SKIP_DEMO=1   stop after building (CI runs the tests next anyway)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n== setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (CRIU and userfaultfd of other processes need it)" >&2
    exit 1
fi

# bindgen (behind the userfaultfd crate) needs libclang at build time; only
# install what is missing, never upgrade anything.
missing=()
# (not `ldconfig -p | grep -q`: grep exiting early fails the pipe under pipefail)
libs=$(ldconfig -p)
grep -Eq 'libclang(-[0-9.]+)?\.so' <<<"$libs" || missing+=(libclang1-14 libclang-common-14-dev)
command -v make >/dev/null || missing+=(make)
command -v gcc >/dev/null || missing+=(gcc)
# the --tls tests make their certificates with openssl
command -v openssl >/dev/null || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing build packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found (Rust toolchain required to build from source)" >&2; exit 1; }

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    say "npm ci"
    npm ci --no-audit --no-fund
fi

say "building the native addon (release) and TypeScript"
npm run --silent build

say "building test workloads"
make -s -C workloads

say "installing CRIU"
bash scripts/install-criu.sh

if [ "${LAZY_PAGES_SKIP_DEMO:-0}" != 1 ]; then
    say "main job: dump a workload with CRIU, restore it lazily through lazy-pages, verify"
    bash scripts/demo.sh
fi
