#!/usr/bin/env bash
# The main job, end to end: build, start the single-node server, boot the demo VM, show it running.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --locked -p kubevirt-rs
bin=target/release/kubevirt-rs
echo "demo: validating examples/vm-demo.yaml as the API server will"
"$bin" validate -f examples/vm-demo.yaml
echo "demo: the single-node server and the launcher are not built yet (issues 3-5);"
echo "demo: the manifest above is what they will run."
