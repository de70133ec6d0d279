#!/usr/bin/env bash
# Builds stele and the demo web app, then runs `stele quickstart`: keys and a ledger, v1 and v2 of the
# demo app packed as images, release v1 to `staging` (2 instances, rolling) and converge, release v2 and
# converge while a client keeps requesting through the load balancer, `git revert` the v2 promotion and
# converge back, then `stele audit` and `stele status`. Stops everything it started; leaves nothing.
# Needs: a Rust toolchain and git.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v git >/dev/null || { echo "quickstart needs git on PATH" >&2; exit 1; }
cargo build --quiet --bins
exec target/debug/stele quickstart "$@"
