#!/usr/bin/env bash
# Runs every test of the workspace. Tests that need something this machine lacks (QEMU, a
# guest image) skip loudly and say what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo test --workspace --locked "$@"
