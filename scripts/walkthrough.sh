#!/usr/bin/env bash
# Builds stele and walks through a release engineer's day in a temporary directory:
# two keys, a ledger with a 2-of-2 production environment, a release, a co-signature, verification,
# a tampered entry caught; then three releases to staging, a rollback by `git revert`, an agent's
# poll and an auditor's replay. Prints each command before running it. Leaves nothing behind.
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
run "$stele" policy add-signer --env prod --pubkey ../bob.key.pub --key ../alice.key
run "$stele" sign --file environments/prod.json --key ../bob.key
run "$stele" policy set-threshold --env prod --threshold 2 --key ../alice.key
mkdir -p ../app && echo '<h1>v1</h1>' > ../app/index.html
run "$stele" image pack ../app --out ../app-v1.tar
run "$stele" release --env prod --version 1.0.0 --image ../app-v1.tar --key ../alice.key
expect_fail "$stele" verify
run "$stele" sign --env prod --key ../bob.key
run "$stele" verify
run sed -i 's/"version": "1.0.0"/"version": "1.0.9"/' ledger/prod/1.json
expect_fail "$stele" verify
run git checkout -- ledger/prod/1.json

# History: three releases to staging, a rollback by plain `git revert`, and what an agent and an
# auditor see. The agent pins the root key; it never trusts the first policy it finds.
root=$("$stele" key id ../alice.key.pub)
for v in 1 2 3; do
  echo "<h1>v$v</h1>" > ../app/index.html
  run "$stele" image pack ../app --out "../app-v$v.tar"
  run "$stele" release --env staging --version "$v.0.0" --image "../app-v$v.tar" --key ../alice.key
done
run "$stele" poll --state-dir ../agent-state --trust-root "$root"
v3=$(git log --format=%H -1 -- ledger/staging/3.json)
run git revert --no-edit "$v3"
run "$stele" poll --state-dir ../agent-state
run "$stele" audit --env staging --trust-root "$root"
printf '\nwalkthrough complete: the ledger verified only when fully signed and untampered, and a git revert rolled staging back to 2.0.0.\n'
