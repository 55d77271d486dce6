#!/usr/bin/env bash
# The main job, end to end: build, start the single-node API server, apply the demo VM, boot
# the demo guest, show it running (state, console output), then stop it.
#
# Until the controller and handler land (issue 5), the VM object lives in the API server and
# the same VMI spec is booted by the launcher directly (`kubevirt-rs launcher run`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
work=${DEMO_DIR:-/tmp/kubevirt-rs-demo}
mkdir -p "$work"
echo "demo: building (release)"
cargo build --release --locked -p kubevirt-rs
bin=$PWD/target/release/kubevirt-rs
echo "demo: building the demo guest into $work/guest"
guest/build.sh "$work/guest" >/dev/null

echo "demo: starting the single-node API server"
"$bin" server --data-dir "$work/server" --listen 127.0.0.1:0 >"$work/server.log" 2>&1 &
server=$!
vmdir="$work/vmi-demo"
cleanup() {
  "$bin" launcher state --dir "$vmdir" >/dev/null 2>&1 && kill "$(cat "$vmdir/launcher.pid" 2>/dev/null)" 2>/dev/null || true
  kill "$server" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 300); do [ -s "$work/server/kubeconfig" ] && break; sleep 0.2; done
[ -s "$work/server/kubeconfig" ] || { echo "demo: the server did not start:"; cat "$work/server.log"; exit 1; }
export KUBECONFIG="$work/server/kubeconfig"
kubectl apply -f examples/vm-demo.yaml
kubectl get vm demo

echo "demo: booting the demo VMI under QEMU (TCG here: KVM is not usable on this machine)"
rm -rf "$vmdir"
"$bin" launcher run -f examples/vmi-demo.yaml --dir "$vmdir" --image-store "$work/guest/oci" --detach
for _ in $(seq 1 120); do
  grep -q "hello from cloud-init" "$vmdir/serial.log" 2>/dev/null && break
  sleep 0.5
done
echo "demo: launcher state"
"$bin" launcher state --dir "$vmdir"
echo "demo: the guest's serial console (from $vmdir/serial.log):"
grep -E "kubevirt-rs demo guest|cloud-init|hello from|eth0:" "$vmdir/serial.log" | tr -d '\r'
echo "demo: running a command on the console:"
echo "uname -r" | "$bin" launcher console --dir "$vmdir" --timeout 3 | tr -d '\r' | grep -v '^$' | tail -3 || true
grep -q "hello from cloud-init" "$vmdir/serial.log"
echo "demo: OK, the demo VM is running; stopping it"
