//! KubeVirt's LiveUpdate rollout end to end: unmodified kubectl patches a running VM's CPU
//! sockets and guest memory, and the demo guest (real QEMU, TCG) sees the new vCPU and the
//! new memory in the same QEMU process. A change that cannot be applied live sets the VM's
//! RestartRequired condition with KubeVirt's message; restarting the VM clears it.
//!
//! Memory hotplug needs at least 1Gi of guest memory (KubeVirt's `requiredMinGuestMemory`), so
//! the VM boots with 1Gi; under TCG QEMU only backs what the guest touches.

use kubevirt_testsupport::{have_kubectl, wait_for, Server};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const VM: &str = "grow";

struct Env {
    server: Server,
    _dir: tempfile::TempDir,
}

fn env() -> Option<Env> {
    if !have_kubectl() {
        return None;
    }
    let guest = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR"))?;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    Some(Env { server, _dir: dir })
}

impl Env {
    fn serial(&self) -> String {
        std::fs::read_to_string(self.server.vmi_dir("default", VM).serial_log()).unwrap_or_default()
    }

    /// The last `hotplug: cpus=… memkb=…` line the guest printed: (online CPUs, MemTotal kB).
    fn guest_view(&self) -> Option<(String, u64)> {
        let serial = self.serial();
        let line = serial
            .lines()
            .rev()
            .find(|l| l.contains("hotplug: cpus="))?;
        let rest = &line[line.find("hotplug: cpus=")? + "hotplug: cpus=".len()..];
        let (cpus, mem) = rest.split_once(" memkb=")?;
        let kb = mem
            .trim()
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()?;
        Some((cpus.trim().to_string(), kb))
    }

    fn patch_vm(&self, patch: &str) {
        let out = self
            .server
            .kubectl(&["patch", "vm", VM, "--type", "merge", "-p", patch]);
        assert!(out.contains("patched"), "kubectl patch {patch}: {out}");
    }

    fn restart_required(&self) -> String {
        self.server.jsonpath(
            "vm",
            VM,
            "{.status.conditions[?(@.type=='RestartRequired')].message}",
        )
    }

    #[track_caller]
    fn wait_restart_required(&self, want: &str) {
        assert!(
            wait_for(Duration::from_secs(30), || self.restart_required() == want),
            "RestartRequired is {:?}, not {want:?}\n{}",
            self.restart_required(),
            self.server.kubectl(&["get", "vm", VM, "-o", "yaml"])
        );
    }
}

#[test]
fn cpu_sockets_and_memory_are_hotplugged_into_the_running_qemu() {
    let Some(e) = env() else { return };
    let manifest = format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {VM}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        cpu: {{sockets: 1, cores: 1, threads: 1}}
        memory: {{guest: 1Gi}}
        devices:
          disks:
          - name: rootdisk
            disk: {{bus: virtio}}
          - name: cloudinit
            disk: {{bus: virtio}}
      terminationGracePeriodSeconds: 5
      volumes:
      - name: rootdisk
        containerDisk:
          image: kubevirt-rs/demo-guest:latest
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            while :; do
              echo "hotplug: cpus=$(cat /sys/devices/system/cpu/online) memkb=$(awk '/MemTotal/ {{print $2}}' /proc/meminfo)"
              sleep 2
            done &
"#
    );
    let file = e.server.data.join("grow.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let out = e
        .server
        .kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(out.contains("created"), "{out}");
    assert!(
        wait_for(BOOT, || e.guest_view().is_some()),
        "the guest never reported its CPUs and memory\n{}\n{}",
        e.serial(),
        e.server.kubectl(&["get", "vm,vmi", "-o", "yaml"])
    );
    let (cpus, boot_kb) = e.guest_view().expect("guest view");
    assert_eq!(cpus, "0", "one vCPU at boot");
    assert!(boot_kb < 1 << 20, "MemTotal {boot_kb} kB at boot");

    // KubeVirt's defaults under LiveUpdate (maxHotplugRatio 4), and the status at boot.
    assert_eq!(
        e.server.jsonpath(
            "vmi",
            VM,
            "{.spec.domain.cpu.maxSockets} {.spec.domain.memory.maxGuest}"
        ),
        "4 4Gi"
    );
    assert!(
        wait_for(Duration::from_secs(30), || {
            e.server.jsonpath(
            "vmi",
            VM,
            "{.status.currentCPUTopology.sockets} {.status.memory.guestAtBoot} {.status.memory.guestCurrent}"
        ) == "1 1Gi 1Gi"
        }),
        "{}",
        e.server.kubectl(&["get", "vmi", VM, "-o", "yaml"])
    );
    let pid = e.server.qemu_pid("default", VM).expect("QEMU pid");
    let vmi_uid = e.server.jsonpath("vmi", VM, "{.metadata.uid}");

    // Grow: one more socket, one more GiB.
    e.patch_vm(r#"{"spec":{"template":{"spec":{"domain":{"cpu":{"sockets":2},"memory":{"guest":"2Gi"}}}}}}"#);
    assert!(
        wait_for(Duration::from_secs(60), || {
            e.server.jsonpath(
            "vmi",
            VM,
            "{.spec.domain.cpu.sockets} {.status.currentCPUTopology.sockets} {.spec.domain.memory.guest} {.status.memory.guestCurrent}"
        ) == "2 2 2Gi 2Gi"
        }),
        "the VMI never reported the new topology and memory\n{}",
        e.server.kubectl(&["get", "vmi", VM, "-o", "yaml"])
    );
    assert!(
        wait_for(Duration::from_secs(90), || e
            .guest_view()
            .is_some_and(|(c, kb)| c == "0-1" && kb > boot_kb + 900 * 1024)),
        "the guest does not see 2 CPUs and 1 GiB more: {:?}\n{}",
        e.guest_view(),
        e.serial()
    );
    assert_eq!(
        e.server.qemu_pid("default", VM),
        Some(pid),
        "QEMU was restarted"
    );
    assert_eq!(e.server.jsonpath("vmi", VM, "{.metadata.uid}"), vmi_uid);
    assert_eq!(e.restart_required(), "", "no restart needed");

    // What cannot be applied live says so, with KubeVirt's words.
    e.patch_vm(r#"{"spec":{"template":{"spec":{"domain":{"cpu":{"sockets":1}}}}}}"#);
    e.wait_restart_required("Reduction of CPU socket count requires a restart");
    e.patch_vm(r#"{"spec":{"template":{"spec":{"domain":{"cpu":{"sockets":2}}}}}}"#);
    e.wait_restart_required("");
    e.patch_vm(r#"{"spec":{"template":{"spec":{"domain":{"memory":{"guest":"8Gi"}}}}}}"#);
    e.wait_restart_required(
        "memory hotplug not supported, Guest memory is greater than the configured maxGuest memory",
    );
    e.patch_vm(
        r#"{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":6,"domain":{"memory":{"guest":"2Gi"}}}}}}"#,
    );
    e.wait_restart_required("a non-live-updatable field was changed in the template spec");
    assert_eq!(
        e.server.qemu_pid("default", VM),
        Some(pid),
        "QEMU was restarted"
    );

    // A restart applies the template and clears the condition.
    let out = e.server.virtctl(&["restart", VM]);
    assert!(!out.contains("rror"), "virtctl restart: {out}");
    assert!(
        wait_for(BOOT, || {
            let uid = e.server.jsonpath("vmi", VM, "{.metadata.uid}");
            !uid.is_empty()
                && uid != vmi_uid
                && e.server.jsonpath("vmi", VM, "{.status.phase}") == "Running"
        }),
        "no new running VMI after the restart\n{}",
        e.server.kubectl(&["get", "vm,vmi", "-o", "yaml"])
    );
    e.wait_restart_required("");
    assert_eq!(
        e.server.jsonpath(
            "vmi",
            VM,
            "{.spec.terminationGracePeriodSeconds} {.spec.domain.cpu.sockets} {.spec.domain.memory.guest}"
        ),
        "6 2 2Gi"
    );
    assert_ne!(e.server.qemu_pid("default", VM), Some(pid));
}
