#!/usr/bin/env bash
# Coverage-guided fuzzing of the targets in fuzz/ (libFuzzer through cargo-fuzz, on the stable
# toolchain: `--sanitizer none`, so no nightly flag is needed), each for a given time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 60 s for each target of `cargo fuzz list`
#
# Prints one line per target: executions, executions per second, coverage as libFuzzer counts it
# (cov: instrumented edges reached, ft: features, i.e. edges with hit-count buckets) and the size of
# its corpus, then the total executions. Each target starts from its committed seeds (fuzz/seeds/<t>)
# and the working corpus it grew before (fuzz/corpus/<t>, not committed). A crash, panic, leak past the
# RSS limit or an input slower than TIMEOUT seconds stops that target, leaves the input in
# fuzz/artifacts/<t>/ and makes the script exit 1 after the others have run. Installs cargo-fuzz when
# it is missing. The image-store target unpacks every input, so TMPDIR is /dev/shm when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
timeout=${TIMEOUT:-30}
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi

# The flags cargo-fuzz passes besides its defaults: no sanitizer (needs nightly) but debug assertions,
# so integer overflow and every debug_assert! count as crashes.
flags=(--sanitizer none --debug-assertions)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
# One build for all targets (they share every dependency), timed: CI pays it once.
start=$(date +%s)
if ! cargo fuzz build "${flags[@]}" 2>&1 | { grep -v -E '^ *(Compiling|Downloaded|Downloading)' || true; }; then
  echo "cargo fuzz build failed" >&2
  exit 1
fi
echo "built the fuzz targets in $(( $(date +%s) - start )) s"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
total=0
failed=()
printf '%-14s %12s %10s %8s %8s %8s  %s\n' target executions exec/s cov ft corpus result
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  log="$logs/$t.log"
  rc=0
  cargo fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  result=ok
  if [ "$rc" -ne 0 ]; then
    result="FAILED (exit $rc): $(grep -m1 -E 'panicked|ERROR: libFuzzer|Test unit written' "$log" || true)"
    failed+=("$t")
    echo "---- $t: last lines of libFuzzer's output" >&2
    tail -40 "$log" >&2
  fi
  printf '%-14s %12s %10s %8s %8s %8s  %s\n' "$t" "${execs:-0}" "${rate:-0}" "${cov:-?}" "${ft:-?}" "$corpus" "$result"
  total=$((total + ${execs:-0}))
done
echo "total executions: $total in ${#targets[@]} targets, ${seconds} s each"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
