#!/usr/bin/env bash
# Chaos soak: runs tests/chaos.rs for many rounds (default 200) of releases, signed rollbacks and
# SIGKILLs of the agent, instances and balancers on the local provider; prints each round, the seed
# and the totals. Usage: scripts/soak.sh [ROUNDS] [SEED]  (a failure names its seed: replay with it).
set -uo pipefail
cd "$(dirname "$0")/.."
export STELE_CHAOS_ROUNDS="${1:-200}"
if [ -n "${2:-}" ]; then export STELE_CHAOS_SEED="$2"; fi
cargo test --test chaos -- --nocapture 2>&1 | grep -vE '^ +(Compiling|Running|Finished)'
exit "${PIPESTATUS[0]}"
