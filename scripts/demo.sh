#!/usr/bin/env bash
# The main job, end to end: build, start the single-node server (API server, controller,
# handler), apply the demo VM with kubectl, wait until it runs, show it running (kubectl,
# the guest's console), then delete it.
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

echo "demo: starting the single-node server"
rm -rf "$work/server"
"$bin" server --data-dir "$work/server" --listen 127.0.0.1:0 --image-store "$work/guest/oci" \
  >"$work/server.log" 2>&1 &
server=$!
cleanup() {
  kubectl delete vm demo --wait=false >/dev/null 2>&1 || true
  sleep 3
  kill "$server" 2>/dev/null || true
  for p in "$work"/server/vms/*/launcher.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  true
}
trap cleanup EXIT
for _ in $(seq 1 300); do [ -s "$work/server/kubeconfig" ] && break; sleep 0.2; done
[ -s "$work/server/kubeconfig" ] || { echo "demo: the server did not start:"; cat "$work/server.log"; exit 1; }
export KUBECONFIG="$work/server/kubeconfig"

kubectl apply -f examples/vm-demo.yaml
echo "demo: waiting for the VM to run (QEMU under TCG here: KVM is not usable on this machine)"
for _ in $(seq 1 240); do
  [ "$(kubectl get vmi demo -o jsonpath='{.status.phase}' 2>/dev/null)" = Running ] && break
  sleep 0.5
done
# The VMI's directory is named by the first 128 bits of SHA-256("<namespace>/<name>")
# (docs/architecture.md, "The VMI directory").
vmidir="$work/server/vms/$(printf '%s' default/demo | sha256sum | cut -c1-32)"
serial="$vmidir/serial.log"
for _ in $(seq 1 120); do grep -q "hello from cloud-init" "$serial" 2>/dev/null && break; sleep 0.5; done
kubectl get vm demo
kubectl get vmi demo -o wide
echo "demo: the guest's serial console:"
grep -E "kubevirt-rs demo guest|cloud-init|hello from|eth0:" "$serial" | tr -d '\r'
echo "demo: running a command on the console:"
echo "uname -r" | "$bin" launcher console --dir "$vmidir" --timeout 3 \
  | tr -d '\r' | grep -v '^$' | tail -3 || true
grep -q "hello from cloud-init" "$serial"
echo "demo: OK, the demo VM is running; deleting it"
