#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests of the
# decision core and the agent, and the real-process tests (real coordinator,
# agents, failoverctl and hook scripts on loopback).
#
# Needs the Rust toolchain (cargo, rustfmt, clippy); protobuf code is
# generated in pure Rust, so no protoc. The tests of coordinator replicas
# start a real etcd: deploy/install-test-tools.sh installs it (apt-get)
# when it is missing.
set -euo pipefail
cd "$(dirname "$0")"

echo "==> test tools (etcd)"
deploy/install-test-tools.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> build the binaries the real-process tests start"
cargo build --workspace --bins --locked
echo "==> Kubernetes manifests"
deploy/check-manifests.sh
echo "==> tests"
cargo test --workspace --locked
