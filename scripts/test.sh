#!/usr/bin/env bash
# Runs every test: installs what the tests need (git, ssh-keygen, OpenSSL headers, Chromium; moto, the AWS API
# emulator, in .venv-moto/; Google's compute v1 discovery document for the GCP fake, in .venv-gcp/) when it is missing, then lints and tests the whole workspace, without and
# with the `aws` feature, and runs each fuzz target in fuzz/ briefly. CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v git >/dev/null || need+=(git)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v man >/dev/null || need+=(man-db)        # the man page test renders pages with `man -l`
command -v script >/dev/null || need+=(bsdutils)   # the log colour test runs stele on a pty
[ -x /usr/sbin/sshd ] || need+=(openssh-server)   # the ssh:// transport test runs sshd on loopback
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
command -v openssl >/dev/null || need+=(openssl)   # the HTTPS probe test runs openssl s_server; tests/tls_lazy.rs makes certificates
command -v python3 >/dev/null || need+=(python3)   # tests/tls_lazy.rs serves Git over HTTPS with python3 ssl
command -v chromium >/dev/null || need+=(chromium)   # the page and audit report tests run headless Chromium
command -v systemd-analyze >/dev/null || need+=(systemd)   # tests/systemd_unit.rs verifies the example unit
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

# The AWS tests run moto on loopback from .venv-moto/; they fail loudly without it.
scripts/moto-venv.sh >/dev/null
# The GCP tests run tests/gcp/fake.py, which validates against the compute v1 discovery document that
# google-api-python-client ships, from .venv-gcp/; they fail loudly without it.
scripts/gcp-venv.sh >/dev/null

# A clean build gains nothing from incremental state, which costs gigabytes of disk.
export CARGO_INCREMENTAL=0
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy --workspace --all-targets --features aws,sim,gcp --quiet -- -D warnings
cargo test --workspace
# The cloud providers, in one build with both features: the AWS provider against moto and the GCP
# provider against the loopback Compute Engine fake (each binding's unit tests, its strategy suite and
# the agent end to end). (The rest of the suite
# does not depend on them and ran above.)
cargo test --features aws,gcp --lib --test aws_provider --test agent_aws --test gcp_provider --test agent_gcp
# Coverage-guided fuzzing, briefly: every target in fuzz/ for a few seconds from its committed seeds
# (scripts/fuzz.sh installs cargo-fuzz when it is missing; fuzz/ is its own workspace, so nothing above
# builds it). The long run's figures are in BENCHMARKS.md, "Fuzzing".
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
scripts/fuzz.sh "${FUZZ_SECONDS:-5}"
