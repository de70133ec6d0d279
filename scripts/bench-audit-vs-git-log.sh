#!/usr/bin/env bash
# `stele audit` against `git log --show-signature` (how Flux and Argo CD check commits), in commits per
# second on the same number of commits (issue 14). Prints both rates and their ratio.
#
#   scripts/bench-audit-vs-git-log.sh [N]      (default N = 1000; needs git, ssh-keygen, a release build)
#
# git: N commits, each SSH-signed (gpg.format=ssh), verified by `git log --show-signature` against an
# allowed-signers file (git runs `ssh-keygen -Y verify` once per commit).
# stele: a ledger of N commits made by `stele release` (each a signed entry), replayed and judged whole by
# `stele audit --trust-root` (every entry signature verified, every step judged).
set -euo pipefail
n=${1:-1000}
root=$(cd "$(dirname "$0")/.." && pwd)
stele=$root/target/release/stele
[ -x "$stele" ] || cargo build --release --manifest-path "$root/Cargo.toml" >/dev/null
for tool in git ssh-keygen; do command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example
now() { date +%s.%N; }

# git: N SSH-signed commits.
ssh-keygen -q -t ed25519 -N '' -f "$work/signer" -C bench
echo "bench@example $(cat "$work/signer.pub")" > "$work/allowed"
git init -q "$work/git"
cd "$work/git"
git config gpg.format ssh
git config user.signingkey "$work/signer"
git config gpg.ssh.allowedSignersFile "$work/allowed"
for i in $(seq 1 "$n"); do
  echo "$i" > file
  git add file
  git commit -q -S -m "commit $i"
done
start=$(now)
verified=$(git log --show-signature 2>&1 | grep -c 'Good "git" signature')
git_s=$(echo "$(now) - $start" | bc -l)
[ "$verified" -eq "$n" ] || { echo "git verified $verified of $n signatures" >&2; exit 1; }

# stele: a ledger of N commits.
cd "$work"
"$stele" key generate --out "$work/root.key" >/dev/null 2>&1
"$stele" init "$work/ledger" --key "$work/root.key" --env prod --ledger-id bench >/dev/null
mkdir -p "$work/app/bin"
printf '#!/bin/sh\nexec sleep 3600\n' > "$work/app/bin/app" && chmod +x "$work/app/bin/app"
echo '{"command": "bin/app", "args": [], "env": {}}' > "$work/app/stele-image.json"
"$stele" image pack "$work/app" --out "$work/image.tar" >/dev/null 2>&1
for i in $(seq 2 "$n"); do
  "$stele" release --repo "$work/ledger" --env prod --version "1.0.$i" --image "$work/image.tar" --key "$work/root.key" >/dev/null 2>&1
done
commits=$(git -C "$work/ledger" rev-list --count HEAD)
keyid=$("$stele" key id "$work/root.key" 2>/dev/null)
start=$(now)
"$stele" audit --repo "$work/ledger" --trust-root "$keyid" --json >/dev/null
stele_s=$(echo "$(now) - $start" | bc -l)

git_rate=$(echo "$n / $git_s" | bc -l)
stele_rate=$(echo "$commits / $stele_s" | bc -l)
printf 'git log --show-signature: %d commits in %.3f s = %.0f commits/s\n' "$n" "$git_s" "$git_rate"
printf 'stele audit:              %d commits in %.3f s = %.0f commits/s\n' "$commits" "$stele_s" "$stele_rate"
printf 'ratio: %.1fx (target >= 300x)\n' "$(echo "$stele_rate / $git_rate" | bc -l)"
