#!/usr/bin/env bash
# Builds stele and walks through the multi-signer workflow in a temporary directory: two keys, a
# ledger with a 2-of-2 production environment, releases written as proposals, co-signed and promoted,
# a tampered entry caught, a rollback by SSH-signed `git revert`, its revert, an agent's poll and an
# auditor's replay. Prints each command before running it. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin stele
stele="$PWD/target/debug/stele"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export GIT_AUTHOR_NAME=${GIT_AUTHOR_NAME:-"Stele Walkthrough"} GIT_AUTHOR_EMAIL=${GIT_AUTHOR_EMAIL:-walkthrough@example.invalid}
export GIT_COMMITTER_NAME=$GIT_AUTHOR_NAME GIT_COMMITTER_EMAIL=$GIT_AUTHOR_EMAIL

run() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
expect_fail() { printf '\n\033[1m$ %s\033[0m   (expected to fail)\n' "$*"; if "$@"; then echo "unexpectedly succeeded" >&2; exit 1; fi; }

run "$stele" key generate --out alice.key
run "$stele" key generate --out bob.key
run "$stele" init ledger --key alice.key --env staging --env prod
cd ledger
root=$("$stele" key id ../alice.key.pub)
run "$stele" policy add-signer --env prod --pubkey ../bob.key.pub --key ../alice.key
# prod needs 2 of 2 from now on; bob re-signs prod's spec in the same commit (a policy change leaves
# every spec and tip meeting it).
run "$stele" policy set-threshold --env prod --threshold 2 --key ../alice.key --key ../bob.key
# An image is a directory with stele-image.json at its root naming the command to run.
mkdir -p ../app/bin
printf '#!/bin/sh\nexec python3 -m http.server "$STELE_PORT"\n' > ../app/bin/serve
chmod +x ../app/bin/serve
echo '{"command": "bin/serve"}' > ../app/stele-image.json
for v in 1 2; do
  echo "<h1>v$v</h1>" > ../app/index.html
  run "$stele" image pack ../app --out "../app-v$v.tar"
  # Short of bob's signature: written as the proposal branch stele/proposals/prod-$v.0.0, not on main.
  run "$stele" release --env prod --version "$v.0.0" --image "../app-v$v.tar" --key ../alice.key
  run "$stele" verify
  run "$stele" sign --proposal "prod-$v.0.0" --key ../bob.key
  run "$stele" promote "prod-$v.0.0"
  run "$stele" poll --state-dir ../agent-state --trust-root "$root"
done
run sed -i 's/"version": "1.0.0"/"version": "1.0.9"/' ledger/prod/1.json
expect_fail "$stele" verify
run git checkout -- ledger/prod/1.json

# Rollback: `git revert` of the commit that promoted 2.0.0, SSH-signed by one prod signer (`revert:
# signed` is the default), then the revert of that revert restores it.
promoted=$(git log --first-parent --format=%H -1 -- ledger/prod/2.json)
run git -c gpg.format=ssh -c user.signingkey=../bob.key revert -S --no-edit "$promoted"
run "$stele" poll --state-dir ../agent-state
rollback=$(git rev-parse HEAD)
run git -c gpg.format=ssh -c user.signingkey=../alice.key revert -S --no-edit "$rollback"
run "$stele" poll --state-dir ../agent-state
run "$stele" audit --env prod --trust-root "$root"
printf '\nwalkthrough complete: prod changed only through proposals signed by both alice and bob, a signed git revert rolled it back to 1.0.0 and its revert restored 2.0.0.\n'
