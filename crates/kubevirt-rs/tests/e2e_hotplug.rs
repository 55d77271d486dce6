//! Volume hotplug end to end, as a KubeVirt user does it: `kubevirt-rs server`, unmodified
//! kubectl, our virtctl (the multi-call binary through a link named `virtctl`), real QEMU
//! (TCG) booting the demo guest, a blank DataVolume on the local-path provisioner.
//!
//! User story: a running VM → `virtctl addvolume VM --volume-name=DV --persist` → the VM's
//! template has the volume (hotpluggable, bus scsi, serial = the name) → the VMI's
//! `status.volumeStatus` shows it `Ready` with target `sda` → the guest sees a new SCSI disk
//! (`/sys/block/sda`, serial on its VPD page) → `virtctl removevolume` → gone from the
//! template, the VMI status and the guest. Hostile and wrong requests get KubeVirt's words.
//! One guest boot.

use kubevirt_testsupport::{have_kubectl, wait_for, Server};
use std::time::Duration;

/// Types `command` on the VMI's serial console ([`Server::on_console`]).
fn on_console(s: &Server, vmi: &str, command: &str, want: &str, absent: bool) -> String {
    s.on_console(vmi, command, want, absent)
}

#[test]
fn a_datavolume_is_hotplugged_into_a_running_vm_and_unplugged_again() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let virtctl = |args: &[&str]| s.virtctl(args);

    let manifest = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: hot
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk: {bus: virtio}
          - name: cloudinit
            disk: {bus: virtio}
        resources:
          requests:
            memory: 128Mi
      terminationGracePeriodSeconds: 5
      volumes:
      - name: rootdisk
        containerDisk:
          image: kubevirt-rs/demo-guest:latest
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            echo "hotplug guest up"
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: extra
spec:
  source:
    blank: {}
  storage:
    accessModes: [ReadWriteOnce]
    resources:
      requests:
        storage: 64Mi
"#;
    let file = dir.path().join("vm.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let out = s.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(
        out.contains("virtualmachine.kubevirt.io/hot created"),
        "{out}"
    );

    let ready = wait_for(Duration::from_secs(120), || {
        s.jsonpath("dv", "extra", "{.status.phase}") == "Succeeded"
    });
    assert!(
        ready,
        "{}",
        s.kubectl(&["get", "dv", "extra", "-o", "yaml"])
    );
    let serial = s.vmi_dir("default", "hot").serial_log();
    let booted = wait_for(Duration::from_secs(180), || {
        std::fs::read_to_string(&serial).is_ok_and(|l| l.contains("hotplug guest up"))
    });
    assert!(
        booted,
        "the guest never booted: {}\n{}",
        s.kubectl(&["get", "vmi", "hot", "-o", "yaml"]),
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    // Before: no SCSI disk in the guest.
    on_console(&s, "hot", "ls /sys/block", "vda", false);
    let before = on_console(&s, "hot", "ls /sys/block", "sda", true);
    assert!(before.contains("vdb"), "{before}");

    // Wrong requests first: KubeVirt's messages, nothing changes.
    let out = virtctl(&["addvolume", "hot", "--volume-name=nope"]);
    assert!(
        out.contains(
            "error adding volume, Volume nope is not a DataVolume or PersistentVolumeClaim"
        ),
        "{out}"
    );
    let out = virtctl(&["addvolume", "hot", "--volume-name=extra", "--bus=sata"]);
    assert!(
        out.contains("Invalid bus type 'sata' for disk. Only 'scsi' and 'virtio' are supported."),
        "{out}"
    );
    let out = virtctl(&["removevolume", "hot", "--volume-name=rootdisk"]);
    assert!(
        out.contains("Unable to remove volume [rootdisk] because it is not hotpluggable"),
        "{out}"
    );
    let out = virtctl(&["removevolume", "hot", "--volume-name=extra"]);
    assert!(
        out.contains("Unable to remove volume [extra] because it does not exist"),
        "{out}"
    );
    // Hostile: a name that would be a path and a QEMU option, straight to the subresource.
    let body = dir.path().join("add.json");
    std::fs::write(
        &body,
        r#"{"name":"x,file=/etc/shadow","disk":{"disk":{"bus":"scsi"}},"volumeSource":{"dataVolume":{"name":"extra"}}}"#,
    )
    .expect("write body");
    let out = s.kubectl(&[
        "replace",
        "--raw",
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/hot/addvolume",
        "-f",
        body.to_str().expect("utf8"),
    ]);
    assert!(
        out.contains("volume name \"x,file=/etc/shadow\" is not valid"),
        "{out}"
    );
    // Dry run: accepted, nothing changes.
    let out = virtctl(&["addvolume", "hot", "--volume-name=extra", "--dry-run"]);
    assert!(
        out.contains("Successfully submitted add volume request"),
        "{out}"
    );
    assert_eq!(
        s.jsonpath("vm", "hot", "{.spec.template.spec.volumes[*].name}"),
        "rootdisk cloudinit"
    );

    // Hotplug, persisted in the VM's template.
    let out = virtctl(&["addvolume", "hot", "--volume-name=extra", "--persist"]);
    assert!(
        out.contains("Successfully submitted add volume request to VM hot for volume extra"),
        "{out}"
    );
    assert_eq!(
        s.jsonpath(
            "vm",
            "hot",
            "{.spec.template.spec.volumes[?(@.name=='extra')].dataVolume.hotpluggable}"
        ),
        "true"
    );
    assert_eq!(
        s.jsonpath(
            "vm",
            "hot",
            "{.spec.template.spec.domain.devices.disks[?(@.name=='extra')].disk.bus}"
        ),
        "scsi"
    );
    let out = virtctl(&["addvolume", "hot", "--volume-name=extra"]);
    assert!(
        out.contains("Unable to add volume [extra] because volume with that name already exists"),
        "{out}"
    );
    let status = "{.status.volumeStatus[?(@.name=='extra')].phase}";
    let attached = wait_for(Duration::from_secs(60), || {
        s.jsonpath("vmi", "hot", status) == "Ready"
    });
    assert!(
        attached,
        "{}\n{}",
        s.kubectl(&["get", "vmi", "hot", "-o", "yaml"]),
        std::fs::read_to_string(s.vmi_dir("default", "hot").launcher_log()).unwrap_or_default()
    );
    assert_eq!(
        s.jsonpath(
            "vmi",
            "hot",
            "{.status.volumeStatus[?(@.name=='extra')].target}"
        ),
        "sda"
    );
    assert_eq!(
        s.jsonpath(
            "vmi",
            "hot",
            "{.status.volumeStatus[?(@.name=='extra')].message}"
        ),
        "Successfully attach hotplugged volume extra to VM"
    );
    // A hotplugged volume is a live change: the VM does not ask for a restart.
    assert_eq!(
        s.jsonpath(
            "vm",
            "hot",
            "{.status.conditions[?(@.type=='RestartRequired')].status}"
        ),
        "",
        "{}",
        s.kubectl(&["get", "vm", "hot", "-o", "yaml"])
    );
    // The guest has a new SCSI disk whose serial is the volume's name.
    on_console(
        &s,
        "hot",
        "cat /sys/block/sda/device/vpd_pg80 | tr -dc a-z; echo =serial",
        "extra=serial",
        false,
    );

    // Unplug: gone from the template, the status and the guest.
    let out = virtctl(&["removevolume", "hot", "--volume-name=extra"]);
    assert!(
        out.contains("Successfully submitted remove volume request to VM hot for volume extra"),
        "{out}"
    );
    assert_eq!(
        s.jsonpath("vm", "hot", "{.spec.template.spec.volumes[*].name}"),
        "rootdisk cloudinit"
    );
    let gone = wait_for(Duration::from_secs(60), || {
        s.jsonpath("vmi", "hot", status).is_empty()
            && s.jsonpath("vmi", "hot", "{.spec.volumes[*].name}") == "rootdisk cloudinit"
    });
    assert!(gone, "{}", s.kubectl(&["get", "vmi", "hot", "-o", "yaml"]));
    on_console(&s, "hot", "ls /sys/block", "sda", true);

    let out = s.kubectl(&["delete", "vm", "hot", "--wait=false"]);
    assert!(out.contains("deleted"), "{out}");
}
