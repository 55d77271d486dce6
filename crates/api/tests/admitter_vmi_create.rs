//! The cases of KubeVirt v1.9's VMI-create admitter tests (vmi-create-admitter_test.go,
//! pkg/network/admitter/*_test.go, pkg/storage/admitters/disks_test.go), ported as tables:
//! each case edits a valid VMI and expects it accepted, or refused at a field with a message.
//! The VMI goes through the same admission as `kubectl create` (decode, default, validate),
//! under KubeVirt's default cluster configuration unless the case changes it.

#[macro_use]
mod admitters;

use admitters::{push, run, set, stage, Accept, Reject};
use serde_json::{json, Value};

#[test]
fn the_base_vmi_is_accepted() {
    run(&[case!("base", |_| {}, Accept)]);
}

#[test]
fn volumes_and_container_disk_paths() {
    run(&[
        case!(
            "container disk path /",
            |v| set(v, "/spec/volumes/0/containerDisk/path", json!("/")),
            Reject(
                "spec.volumes[0].containerDisk",
                "spec.volumes[0].containerDisk must not point to root"
            )
        ),
        case!(
            "container disk path relative",
            |v| set(v, "/spec/volumes/0/containerDisk/path", json!("disk/a.img")),
            Reject(
                "spec.volumes[0].containerDisk",
                "must be an absolute path to a file without relative components"
            )
        ),
        case!(
            "container disk path escaping (hostile)",
            |v| set(
                v,
                "/spec/volumes/0/containerDisk/path",
                json!("/disk/../../etc/shadow")
            ),
            Reject(
                "spec.volumes[0].containerDisk",
                "must be an absolute path to a file without relative components"
            )
        ),
        case!(
            "container disk path ok",
            |v| set(v, "/spec/volumes/0/containerDisk/path", json!("/disk/a.img")),
            Accept
        ),
        case!(
            "container disk path with trailing slash ok",
            |v| set(v, "/spec/volumes/0/containerDisk/path", json!("/disk/")),
            Accept
        ),
        case!(
            "utility volumes on creation",
            |v| set(
                v,
                "/spec/utilityVolumes",
                json!([{"name": "u", "claimName": "pvc"}])
            ),
            Reject(
                "spec.utilityVolumes",
                "cannot create VMI with utility volumes in spec, utility volumes can only be added via hotplug"
            )
        ),
        case!(
            "sysprep volume",
            |v| push(
                v,
                "/spec/volumes",
                json!({"name": "sysprep", "sysprep": {"configMap": {"name": "unattend"}}})
            ),
            Accept
        ),
        case!(
            "two memory dump volumes",
            |v| {
                push(v, "/spec/volumes", json!({"name": "d1", "memoryDump": {"claimName": "a"}}));
                push(v, "/spec/volumes", json!({"name": "d2", "memoryDump": {"claimName": "b"}}));
            },
            Reject("spec.volumes", "spec.volumes must have max one memory dump volume set")
        ),
        case!(
            "two service account volumes",
            |v| {
                push(v, "/spec/volumes", json!({"name": "s1", "serviceAccount": {"serviceAccountName": "a"}}));
                push(v, "/spec/volumes", json!({"name": "s2", "serviceAccount": {"serviceAccountName": "b"}}));
            },
            Reject("spec.volumes", "spec.volumes must have max one serviceAccount volume set")
        ),
        case!(
            "configMap volume without name",
            |v| push(v, "/spec/volumes", json!({"name": "cm", "configMap": {}})),
            Reject(
                "spec.volumes[2].configMap.name",
                "spec.volumes[2].configMap.name is a required field"
            )
        ),
        case!(
            "secret volume without name",
            |v| push(v, "/spec/volumes", json!({"name": "sec", "secret": {}})),
            Reject(
                "spec.volumes[2].secret.secretName",
                "spec.volumes[2].secret.secretName is a required field"
            )
        ),
        case!(
            "serviceAccount volume without name",
            |v| push(v, "/spec/volumes", json!({"name": "sa", "serviceAccount": {}})),
            Reject(
                "spec.volumes[2].serviceAccount.serviceAccountName",
                "is a required field"
            )
        ),
        case!(
            "downwardMetrics volume without the gate",
            |v| push(v, "/spec/volumes", json!({"name": "dm", "downwardMetrics": {}})),
            Reject(
                "spec.volumes[2]",
                "downwardMetrics disks are not allowed: DownwardMetrics feature gate is not enabled."
            )
        ),
        case!(
            "one downwardMetrics volume with the gate",
            cfg = |c| c.feature_gates = vec!["DownwardMetrics".into()],
            |v| {
                push(v, "/spec/volumes", json!({"name": "dm", "downwardMetrics": {}}));
                push(v, "/spec/domain/devices/disks", json!({"name": "dm", "disk": {"bus": "virtio"}}));
            },
            Accept
        ),
        case!(
            "two downwardMetrics volumes",
            cfg = |c| c.feature_gates = vec!["DownwardMetrics".into()],
            |v| {
                push(v, "/spec/volumes", json!({"name": "dm1", "downwardMetrics": {}}));
                push(v, "/spec/volumes", json!({"name": "dm2", "downwardMetrics": {}}));
            },
            Reject("spec.volumes", "spec.volumes must have max one downwardMetric volume set")
        ),
        case!(
            "downwardMetrics volume on a sata disk",
            cfg = |c| c.feature_gates = vec!["DownwardMetrics".into()],
            |v| {
                push(v, "/spec/volumes", json!({"name": "dm", "downwardMetrics": {}}));
                push(v, "/spec/domain/devices/disks", json!({"name": "dm", "disk": {"bus": "sata"}}));
            },
            Reject(
                "spec.domain.devices.disks[2].disk.bus",
                "DownwardMetrics volume must be mapped to virtio bus, but spec.domain.devices.disks[2].disk.bus is set to sata"
            )
        ),
        case!(
            "downwardMetrics volume on a cdrom",
            cfg = |c| c.feature_gates = vec!["DownwardMetrics".into()],
            |v| {
                push(v, "/spec/volumes", json!({"name": "dm", "downwardMetrics": {}}));
                push(v, "/spec/domain/devices/disks", json!({"name": "dm", "cdrom": {"bus": "sata"}}));
            },
            Reject(
                "spec.domain.devices.disks[2].disk",
                "DownwardMetrics volume must be mapped to a disk, but disk is not set on spec.domain.devices.disks[2].disk."
            )
        ),
        case!(
            "hostDisk with an unknown type",
            cfg = |c| c.feature_gates = vec!["HostDisk".into()],
            |v| push(v, "/spec/volumes", json!({"name": "hd", "hostDisk": {"path": "/var/lib/d.img", "type": "Bogus"}})),
            Reject(
                "spec.volumes[2].hostDisk.type",
                "spec.volumes[2].hostDisk.type has invalid value 'Bogus', allowed are 'Disk' or 'DiskOrCreate'"
            )
        ),
        case!(
            "hostDisk of type Disk with a capacity",
            cfg = |c| c.feature_gates = vec!["HostDisk".into()],
            |v| push(v, "/spec/volumes", json!({"name": "hd", "hostDisk": {"path": "/var/lib/d.img", "type": "Disk", "capacity": "1Gi"}})),
            Reject(
                "spec.volumes[2].hostDisk.capacity",
                "spec.volumes[2].hostDisk.capacity is allowed to pass only with spec.volumes[2].hostDisk.type equal to 'DiskOrCreate'"
            )
        ),
        case!(
            "hostDisk without a path",
            cfg = |c| c.feature_gates = vec!["HostDisk".into()],
            |v| push(v, "/spec/volumes", json!({"name": "hd", "hostDisk": {"path": "", "type": "Disk"}})),
            Reject(
                "spec.volumes[2].hostDisk.path",
                "spec.volumes[2].hostDisk.path is required for hostDisk volume"
            )
        ),
        case!(
            "containerPath volume with a filesystem",
            |v| {
                push(v, "/spec/volumes", json!({"name": "cp", "containerPath": {"path": "/data"}}));
                set(v, "/spec/domain/devices/filesystems", json!([{"name": "cp", "virtiofs": {}}]));
            },
            Accept
        ),
        case!(
            "containerPath volume on a disk",
            |v| {
                push(v, "/spec/volumes", json!({"name": "cp", "containerPath": {"path": "/data"}}));
                push(v, "/spec/domain/devices/disks", json!({"name": "cp", "disk": {"bus": "virtio"}}));
            },
            Reject(
                "spec.volumes[2]",
                "ContainerPath volume 'cp' must be mapped to a filesystem, not a disk"
            )
        ),
        case!(
            "containerPath volume at a reserved path",
            |v| {
                push(v, "/spec/volumes", json!({"name": "cp", "containerPath": {"path": "/var/run/kubevirt/private"}}));
                set(v, "/spec/domain/devices/filesystems", json!([{"name": "cp", "virtiofs": {}}]));
            },
            Reject(
                "spec.volumes[2].containerPath.path",
                "ContainerPath volume 'cp' uses reserved path prefix '/var/run/kubevirt'"
            )
        ),
        case!(
            "virtiofs on a PVC without the gate",
            |v| {
                push(v, "/spec/volumes", json!({"name": "fs", "persistentVolumeClaim": {"claimName": "c"}}));
                set(v, "/spec/domain/devices/filesystems", json!([{"name": "fs", "virtiofs": {}}]));
            },
            Reject(
                "spec.domain.devices.filesystems",
                "virtiofs is not allowed: virtiofs feature gate is not enabled for PVC"
            )
        ),
        case!(
            "virtiofs on a configMap (GA)",
            |v| {
                push(v, "/spec/volumes", json!({"name": "fs", "configMap": {"name": "c"}}));
                set(v, "/spec/domain/devices/filesystems", json!([{"name": "fs", "virtiofs": {}}]));
            },
            Accept
        ),
    ]);
}

#[test]
fn cloud_init() {
    run(&[
        case!(
            "invalid userDataBase64",
            |v| set(
                v,
                "/spec/volumes/1/cloudInitNoCloud",
                json!({"userDataBase64": "not base64!"})
            ),
            Reject(
                "spec.volumes[1].cloudInitNoCloud.userDataBase64",
                "spec.volumes[1].cloudInitNoCloud.userDataBase64 is not a valid base64 value."
            )
        ),
        case!(
            "invalid networkDataBase64",
            |v| set(
                v,
                "/spec/volumes/1",
                json!({"name": "cloudinit", "cloudInitConfigDrive": {"userData": "x", "networkDataBase64": "abc"}})
            ),
            Reject(
                "spec.volumes[1].cloudInitConfigDrive.networkDataBase64",
                "is not a valid base64 value."
            )
        ),
        case!(
            "valid userDataBase64",
            |v| set(
                v,
                "/spec/volumes/1/cloudInitNoCloud",
                json!({"userDataBase64": "IyEvYmluL3NoCmVjaG8gaGkK"})
            ),
            Accept
        ),
        case!(
            "neither userData nor networkData",
            |v| set(v, "/spec/volumes/1/cloudInitNoCloud", json!({})),
            Reject(
                "spec.volumes[1].cloudInitNoCloud",
                "must have at least one userdatasource or one networkdatasource set."
            )
        ),
        case!(
            "networkData only",
            |v| set(
                v,
                "/spec/volumes/1/cloudInitNoCloud",
                json!({"networkData": "version: 2"})
            ),
            Accept
        ),
        case!(
            "userData and networkData",
            |v| set(
                v,
                "/spec/volumes/1/cloudInitNoCloud",
                json!({"userData": "#cloud-config", "networkData": "version: 2"})
            ),
            Accept
        ),
        case!(
            "two networkData sources",
            |v| set(
                v,
                "/spec/volumes/1/cloudInitNoCloud",
                json!({"networkData": "version: 2", "networkDataSecretRef": {"name": "nd"}})
            ),
            Reject(
                "spec.volumes[1].cloudInitNoCloud",
                "spec.volumes[1].cloudInitNoCloud must have only one networkdata source set."
            )
        ),
        case!(
            "base64 user data decoded above the limit",
            |v| set(
                v,
                "/spec/volumes/1/cloudInitNoCloud",
                json!({"userDataBase64": "QUFB".repeat(683)})
            ),
            Reject(
                "spec.volumes[1].cloudInitNoCloud",
                "userdata exceeds 2048 byte limit"
            )
        ),
    ]);
}

#[test]
fn metadata_annotations_need_their_gates() {
    run(&[
        case!(
            "sidecar annotation without the gate",
            |v| set(v, "/metadata/annotations", json!({"hooks.kubevirt.io/hookSidecars": "[{\"image\": \"x\"}]"})),
            Reject(
                "metadata.annotations",
                "sidecar feature gate is not enabled in kubevirt-config, invalid entry metadata.annotations.hooks.kubevirt.io/hookSidecars"
            )
        ),
        case!(
            "sidecar annotation with the gate",
            cfg = |c| c.feature_gates = vec!["Sidecar".into()],
            |v| set(v, "/metadata/annotations", json!({"hooks.kubevirt.io/hookSidecars": "[{\"image\": \"x\"}]"})),
            Accept
        ),
        case!(
            "ignition annotation without the gate",
            |v| set(v, "/metadata/annotations", json!({"kubevirt.io/ignitiondata": "{}"})),
            Reject(
                "metadata.annotations",
                "ExperimentalIgnitionSupport feature gate is not enabled in kubevirt-config, invalid entry metadata.annotations.kubevirt.io/ignitiondata"
            )
        ),
        case!(
            "ignition annotation with the gate",
            cfg = |c| c.feature_gates = vec!["ExperimentalIgnitionSupport".into()],
            |v| set(v, "/metadata/annotations", json!({"kubevirt.io/ignitiondata": "{}"})),
            Accept
        ),
    ]);
}

#[test]
fn spec_names_machine_and_eviction() {
    run(&[
        case!("machine q35", |v| set(v, "/spec/domain/machine", json!({"type": "q35"})), Accept),
        case!(
            "machine pc-q35-rhel8.2.0",
            |v| set(v, "/spec/domain/machine", json!({"type": "pc-q35-rhel8.2.0"})),
            Accept
        ),
        case!(
            "machine pc-i440fx",
            |v| set(v, "/spec/domain/machine", json!({"type": "pc-i440fx"})),
            Reject("spec.domain.machine.type", "spec.domain.machine.type is not supported: pc-i440fx")
        ),
        case!("hostname ok", |v| set(v, "/spec/hostname", json!("test")), Accept),
        case!(
            "hostname with dots",
            |v| set(v, "/spec/hostname", json!("test.example")),
            Reject("spec.hostname", "spec.hostname does not conform to the kubernetes DNS_LABEL rules : ")
        ),
        case!(
            "hostname with shell characters (hostile)",
            |v| set(v, "/spec/hostname", json!("a;reboot")),
            Reject("spec.hostname", "does not conform to the kubernetes DNS_LABEL rules")
        ),
        case!("subdomain ok", |v| set(v, "/spec/subdomain", json!("testsubdomain")), Accept),
        case!(
            "subdomain with underscore",
            |v| set(v, "/spec/subdomain", json!("bad_subdomain")),
            Reject("spec.subdomain", "spec.subdomain does not conform to the kubernetes DNS_SUBDOMAIN rules : ")
        ),
        case!("serviceAccountName ok", |v| set(v, "/spec/serviceAccountName", json!("default")), Accept),
        case!(
            "serviceAccountName invalid",
            |v| set(v, "/spec/serviceAccountName", json!("Invalid_Name")),
            Reject("spec.serviceAccountName", "spec.serviceAccountName is not a valid service account name: ")
        ),
        case!(
            "serviceAccountName matching the volume",
            |v| {
                set(v, "/spec/serviceAccountName", json!("default"));
                push(v, "/spec/volumes", json!({"name": "sa", "serviceAccount": {"serviceAccountName": "default"}}));
            },
            Accept
        ),
        case!(
            "serviceAccountName conflicting with the volume",
            |v| {
                set(v, "/spec/serviceAccountName", json!("default"));
                push(v, "/spec/volumes", json!({"name": "sa", "serviceAccount": {"serviceAccountName": "other"}}));
            },
            Reject(
                "spec.serviceAccountName",
                "spec.serviceAccountName \"default\" and serviceAccount volume \"other\" must reference the same service account"
            )
        ),
        case!("eviction LiveMigrate", |v| set(v, "/spec/evictionStrategy", json!("LiveMigrate")), Accept),
        case!("eviction External", |v| set(v, "/spec/evictionStrategy", json!("External")), Accept),
        case!(
            "eviction unknown",
            |v| set(v, "/spec/evictionStrategy", json!("fantasy")),
            Reject("spec.evictionStrategy", "spec.evictionStrategy is set with an unrecognized option: fantasy")
        ),
        case!("start strategy Paused", |v| set(v, "/spec/startStrategy", json!("Paused")), Accept),
        case!(
            "start strategy unknown",
            |v| set(v, "/spec/startStrategy", json!("Running")),
            Reject("spec.startStrategy", "spec.startStrategy is set with an unrecognized option: Running")
        ),
        case!(
            "start strategy Paused with a liveness probe",
            |v| {
                set(v, "/spec/startStrategy", json!("Paused"));
                set(v, "/spec/livenessProbe", json!({"tcpSocket": {"port": 22}}));
            },
            Reject(
                "spec.startStrategy",
                "either spec.startStrategy or spec.livenessProbe should be provided.Pausing VMI with LivenessProbe is not supported"
            )
        ),
    ]);
}

#[test]
fn probes() {
    run(&[
        case!(
            "probe without action",
            |v| set(v, "/spec/readinessProbe", json!({"initialDelaySeconds": 1})),
            Reject(
                "spec.readinessProbe",
                "either spec.readinessProbe.tcpSocket, spec.readinessProbe.exec or spec.readinessProbe.httpGet must be set if a spec.readinessProbe is specified"
            )
        ),
        case!(
            "probe with two actions",
            |v| set(v, "/spec/livenessProbe", json!({"tcpSocket": {"port": 22}, "httpGet": {"port": 80}})),
            Reject("spec.livenessProbe", "spec.livenessProbe must have exactly one probe type set")
        ),
        case!(
            "readiness and liveness probes",
            |v| {
                set(v, "/spec/readinessProbe", json!({"httpGet": {"port": 80}}));
                set(v, "/spec/livenessProbe", json!({"guestAgentPing": {}}));
            },
            Accept
        ),
        case!(
            "network probe without a pod network",
            |v| {
                set(v, "/spec/networks", json!([]));
                set(v, "/spec/domain/devices/interfaces", json!([]));
                set(v, "/spec/domain/devices/autoattachPodInterface", json!(false));
                set(v, "/spec/readinessProbe", json!({"tcpSocket": {"port": 22}}));
            },
            Reject(
                "spec.readinessProbe.tcpSocket",
                "spec.readinessProbe.tcpSocket is only allowed if the Pod Network is attached"
            )
        ),
    ]);
}

#[test]
fn resources_and_memory() {
    run(&[
        case!(
            "negative cpu request",
            |v| set(v, "/spec/domain/resources/requests/cpu", json!("-1")),
            Reject("spec.domain.resources.requests.cpu", "spec.domain.resources.requests.cpu '-1': must be greater than or equal to 0.")
        ),
        case!(
            "negative cpu limit",
            |v| set(v, "/spec/domain/resources/limits", json!({"cpu": "-3"})),
            Reject("spec.domain.resources.limits.cpu", "spec.domain.resources.limits.cpu '-3': must be greater than or equal to 0.")
        ),
        case!(
            "cpu request above limit",
            |v| {
                set(v, "/spec/domain/resources/requests/cpu", json!("2"));
                set(v, "/spec/domain/resources/limits", json!({"cpu": "1"}));
            },
            Reject("spec.domain.resources.requests.cpu", "spec.domain.resources.requests.cpu '2' is greater than spec.domain.resources.limits.cpu '1'")
        ),
        case!(
            "cpu values right under Stage",
            cfg = stage,
            |v| {
                set(v, "/spec/domain/resources/requests/cpu", json!("1"));
                set(v, "/spec/domain/resources/limits", json!({"cpu": "2"}));
            },
            Accept
        ),
        case!(
            "negative memory request",
            |v| set(v, "/spec/domain/resources/requests/memory", json!("-64Mi")),
            Reject("spec.domain.resources.requests.memory", "spec.domain.resources.requests.memory '-64Mi': must be greater than or equal to 0.")
        ),
        case!(
            "tiny memory request",
            |v| set(v, "/spec/domain/resources/requests/memory", json!("64")),
            Reject("spec.domain.resources.requests.memory", "spec.domain.resources.requests.memory '64': must be greater than or equal to 1M.")
        ),
        case!(
            "negative memory limit",
            |v| set(v, "/spec/domain/resources/limits", json!({"memory": "-64Mi"})),
            Reject("spec.domain.resources.limits.memory", "spec.domain.resources.limits.memory '-64Mi': must be greater than or equal to 0.")
        ),
        case!(
            "memory request above limit",
            |v| set(v, "/spec/domain/resources/limits", json!({"memory": "64Mi"})),
            Reject("spec.domain.resources.requests.memory", "spec.domain.resources.requests.memory '128Mi' is greater than spec.domain.resources.limits.memory '64Mi'")
        ),
        case!(
            "hugepages size unparsable",
            |v| set(v, "/spec/domain/memory", json!({"hugepages": {"pageSize": "bogus"}})),
            Reject("spec.domain.memory.hugepages.pageSize", "spec.domain.memory.hugepages.pageSize 'bogus': quantities must match")
        ),
        case!(
            "hugepages larger than the request",
            |v| set(v, "/spec/domain/memory", json!({"hugepages": {"pageSize": "1Gi"}})),
            Reject("spec.domain.resources.requests.memory", "must be equal to or larger than page size spec.domain.memory.hugepages.pageSize '1Gi'")
        ),
        case!(
            "hugepages larger than guest memory",
            |v| {
                set(v, "/spec/domain/resources", json!({}));
                set(v, "/spec/domain/memory", json!({"guest": "64Mi", "hugepages": {"pageSize": "1Gi"}}));
            },
            Reject("spec.domain.resources.requests.memory", "must be equal to or larger than page size")
        ),
        case!(
            "request not a multiple of the page size",
            |v| {
                set(v, "/spec/domain/resources/requests/memory", json!("129Mi"));
                set(v, "/spec/domain/memory", json!({"hugepages": {"pageSize": "2Mi"}}));
            },
            Reject("spec.domain.resources.requests.memory", "is not a multiple of the page size spec.domain.memory.hugepages.pageSize '2Mi'")
        ),
        case!(
            "memory and hugepages right",
            |v| set(v, "/spec/domain/memory", json!({"hugepages": {"pageSize": "2Mi"}})),
            Accept
        ),
        case!(
            "guest memory and hugepages",
            |v| set(v, "/spec/domain/memory", json!({"guest": "64Mi", "hugepages": {"pageSize": "2Mi"}})),
            Accept
        ),
        case!(
            "guest memory below the request under Stage",
            cfg = stage,
            |v| set(v, "/spec/domain/memory", json!({"guest": "64Mi"})),
            Accept
        ),
        case!(
            "guest memory above the limit (LiveUpdate, the default)",
            |v| {
                set(v, "/spec/domain/memory", json!({"guest": "512Mi"}));
                set(v, "/spec/domain/resources/limits", json!({"memory": "256Mi"}));
            },
            Accept
        ),
        case!(
            "guest memory above the limit under Stage",
            cfg = stage,
            |v| {
                set(v, "/spec/domain/memory", json!({"guest": "512Mi"}));
                set(v, "/spec/domain/resources/limits", json!({"memory": "256Mi"}));
            },
            Reject("spec.domain.memory.guest", "spec.domain.memory.guest '512Mi' must be equal to or less than the memory limit spec.domain.resources.limits.memory '256Mi'")
        ),
        case!(
            "guest memory between request and limit",
            cfg = stage,
            |v| {
                set(v, "/spec/domain/memory", json!({"guest": "192Mi"}));
                set(v, "/spec/domain/resources/limits", json!({"memory": "256Mi"}));
            },
            Accept
        ),
        case!(
            "guest memory without a limit",
            cfg = stage,
            |v| set(v, "/spec/domain/memory", json!({"guest": "1Gi"})),
            Accept
        ),
        case!(
            "no memory at all",
            |v| set(v, "/spec/domain/resources", json!({})),
            Reject("", "no memory requested, at least one of 'spec.domain.memory.guest'")
        ),
        case!(
            "reservedOverhead without its gate",
            |v| set(v, "/spec/domain/memory", json!({"reservedOverhead": {"addedOverhead": "10Mi"}})),
            Reject("spec.domain.memory.reservedOverhead", "Reserved overhead memlock feature gate is not enabled in kubevirt-config")
        ),
    ]);
}

#[test]
fn cpu_pinning_numa_realtime_and_features() {
    run(&[
        case!(
            "NUMA passthrough without dedicated CPUs",
            |v| {
                set(v, "/spec/domain/cpu", json!({"numa": {"guestMappingPassthrough": {}}}));
                set(v, "/spec/domain/memory", json!({"hugepages": {"pageSize": "2Mi"}}));
            },
            Reject(
                "spec.domain.cpu.numa.guestMappingPassthrough",
                "spec.domain.cpu.dedicatedCpuPlacement must be set to true when NUMA topology strategy is set in spec.domain.cpu.numa.guestMappingPassthrough"
            )
        ),
        case!(
            "NUMA passthrough without hugepages",
            |v| set(v, "/spec/domain/cpu", json!({"dedicatedCpuPlacement": true, "numa": {"guestMappingPassthrough": {}}})),
            Reject(
                "spec.domain.cpu.numa.guestMappingPassthrough",
                "spec.domain.memory.hugepages must be requested when NUMA topology strategy is set in spec.domain.cpu.numa.guestMappingPassthrough"
            )
        ),
        case!(
            "NUMA passthrough with dedicated CPUs and hugepages",
            |v| {
                set(v, "/spec/domain/cpu", json!({"dedicatedCpuPlacement": true, "numa": {"guestMappingPassthrough": {}}}));
                set(v, "/spec/domain/memory", json!({"hugepages": {"pageSize": "2Mi"}}));
            },
            Accept
        ),
        case!(
            "more than two threads",
            |v| set(v, "/spec/domain/cpu", json!({"dedicatedCpuPlacement": true, "threads": 3})),
            Reject(
                "spec.domain.cpu.dedicatedCpuPlacement",
                "Not more than two threads must be provided at spec.domain.cpu.threads (got 3) when DedicatedCPUPlacement is true"
            )
        ),
        case!(
            "isolateEmulatorThread without dedicated CPUs",
            |v| set(v, "/spec/domain/cpu", json!({"isolateEmulatorThread": true})),
            Reject(
                "spec.domain.cpu.isolateEmulatorThread",
                "IsolateEmulatorThread should be only set in combination with DedicatedCPUPlacement"
            )
        ),
        case!(
            "inconsistent cpu request and limit",
            |v| {
                set(v, "/spec/domain/cpu", json!({"dedicatedCpuPlacement": true}));
                set(v, "/spec/domain/resources/requests/cpu", json!("2"));
                set(v, "/spec/domain/resources/limits", json!({"cpu": "3"}));
            },
            Reject(
                "spec.domain.cpu.dedicatedCpuPlacement",
                "spec.domain.resources.requests.cpu or spec.domain.resources.limits.cpu must be equal when DedicatedCPUPlacement is true"
            )
        ),
        case!(
            "non-integer cpu limit",
            |v| {
                set(v, "/spec/domain/cpu", json!({"dedicatedCpuPlacement": true}));
                set(v, "/spec/domain/resources/limits", json!({"cpu": "1500m"}));
            },
            Reject("spec.domain.resources.limits.cpu", "provided resources CPU limits must be an interger")
        ),
        case!(
            "non-integer cpu request",
            |v| {
                set(v, "/spec/domain/cpu", json!({"dedicatedCpuPlacement": true}));
                set(v, "/spec/domain/resources/requests/cpu", json!("1500m"));
            },
            Reject("spec.domain.resources.requests.cpu", "provided resources CPU requests must be an interger")
        ),
        case!(
            "cpu overcommit with cores",
            |v| {
                set(v, "/spec/domain/cpu", json!({"dedicatedCpuPlacement": true, "cores": 2}));
                set(v, "/spec/domain/resources/requests/cpu", json!("1"));
            },
            Reject(
                "spec.domain.cpu.dedicatedCpuPlacement",
                "spec.domain.resources.requests.cpu or spec.domain.resources.limits.cpu must not be provided at the same time with spec.domain.cpu.cores when DedicatedCPUPlacement is true"
            )
        ),
        case!(
            "inconsistent memory with dedicated CPUs",
            |v| {
                set(v, "/spec/domain/cpu", json!({"dedicatedCpuPlacement": true}));
                set(v, "/spec/domain/resources/limits", json!({"memory": "256Mi"}));
            },
            Reject(
                "spec.domain.resources.requests.memory",
                "spec.domain.resources.requests.memory must be equal to spec.domain.resources.limits.memory"
            )
        ),
        case!(
            "realtime without dedicated CPUs",
            |v| set(v, "/spec/domain/cpu", json!({"realtime": {}, "numa": {"guestMappingPassthrough": {}}})),
            Reject(
                "spec.domain.cpu.dedicatedCpuPlacement",
                "spec.domain.cpu.dedicatedCpuPlacement must be set to true when spec.domain.cpu.realtime is used"
            )
        ),
        case!(
            "realtime without NUMA passthrough",
            |v| set(v, "/spec/domain/cpu", json!({"realtime": {}, "dedicatedCpuPlacement": true})),
            Reject(
                "spec.domain.cpu.numa.guestMappingPassthrough",
                "spec.domain.cpu.numa.guestMappingPassthrough must be defined when spec.domain.cpu.realtime is used"
            )
        ),
        case!(
            "cpu feature policies",
            |v| set(v, "/spec/domain/cpu", json!({"features": [
                {"name": "a", "policy": "force"}, {"name": "b", "policy": "require"},
                {"name": "c", "policy": "optional"}, {"name": "d", "policy": "disable"},
                {"name": "e", "policy": "forbid"}, {"name": "f"}]})),
            Accept
        ),
        case!(
            "unknown cpu feature policy",
            |v| set(v, "/spec/domain/cpu", json!({"features": [{"name": "vmx", "policy": "bogus"}]})),
            Reject("spec.domain.cpu.features[0].policy", "CPU feature vmx uses policy bogus that is not supported.")
        ),
        case!(
            "sockets above maxSockets",
            |v| set(v, "/spec/domain/cpu", json!({"sockets": 4, "maxSockets": 2})),
            Reject("spec.domain.cpu.sockets", "Number of sockets in CPU topology is greater than the maximum sockets allowed")
        ),
        case!(
            "sockets within maxSockets",
            |v| set(v, "/spec/domain/cpu", json!({"sockets": 2, "maxSockets": 4})),
            Accept
        ),
        case!(
            "ioThreadsPolicy auto",
            |v| set(v, "/spec/domain/ioThreadsPolicy", json!("auto")),
            Accept
        ),
        case!(
            "ioThreadsPolicy unknown",
            |v| set(v, "/spec/domain/ioThreadsPolicy", json!("bogus")),
            Reject("spec.domain.ioThreadsPolicy", "Invalid IOThreadsPolicy (bogus)")
        ),
        case!(
            "supplementalPool without a count",
            |v| set(v, "/spec/domain/ioThreadsPolicy", json!("supplementalPool")),
            Reject("spec.domain.ioThreads.count", "the number of iothreads needs to be set and positive for the dedicated policy")
        ),
        case!(
            "supplementalPool with a zero count",
            |v| {
                set(v, "/spec/domain/ioThreadsPolicy", json!("supplementalPool"));
                set(v, "/spec/domain/ioThreads", json!({"supplementalPoolThreadCount": 0}));
            },
            Reject("spec.domain.ioThreads.count", "the number of iothreads needs to be set and positive for the dedicated policy")
        ),
    ]);
}

#[test]
fn devices() {
    run(&[
        case!(
            "tablet input",
            |v| set(v, "/spec/domain/devices/inputs", json!([{"name": "t", "type": "tablet", "bus": "usb"}])),
            Accept
        ),
        case!(
            "input on ps2",
            |v| set(v, "/spec/domain/devices/inputs", json!([{"name": "t", "type": "tablet", "bus": "ps2"}])),
            Reject("spec.domain.devices.inputs[0].bus", "Input device can have only virtio or usb bus.")
        ),
        case!(
            "keyboard input",
            |v| set(v, "/spec/domain/devices/inputs", json!([{"name": "k", "type": "keyboard", "bus": "virtio"}])),
            Reject("spec.domain.devices.inputs[0].type", "Input device can have only tablet type.")
        ),
        case!(
            "sound ich9",
            |v| set(v, "/spec/domain/devices/sound", json!({"name": "s", "model": "ich9"})),
            Accept
        ),
        case!(
            "sound model unknown",
            |v| set(v, "/spec/domain/devices/sound", json!({"name": "s", "model": "sb16"})),
            Reject("spec.Sound", "Sound device type is not supported. Options: 'ich9' or 'ac97'")
        ),
        case!(
            "sound without a name",
            |v| set(v, "/spec/domain/devices/sound", json!({"name": "", "model": "ac97"})),
            Reject("spec.Sound", "Sound device requires a name field.")
        ),
        case!(
            "host devices without the gate",
            |v| set(v, "/spec/domain/devices/hostDevices", json!([{"name": "h", "deviceName": "example.com/dev"}])),
            Reject("spec.HostDevices", "Host Devices feature gate is not enabled in kubevirt-config")
        ),
        case!(
            "host devices with the gate",
            cfg = |c| c.feature_gates = vec!["HostDevices".into()],
            |v| set(v, "/spec/domain/devices/hostDevices", json!([{"name": "h", "deviceName": "example.com/dev"}])),
            Accept
        ),
        case!(
            "two vGPU displays with ramfb",
            |v| set(v, "/spec/domain/devices/gpus", json!([
                {"name": "g1", "deviceName": "nvidia/a", "virtualGPUOptions": {"display": {"enabled": true}}},
                {"name": "g2", "deviceName": "nvidia/a", "virtualGPUOptions": {"display": {"enabled": true}}}])),
            Reject("spec.GPUs", "configuring multiple displays with ramfb is not valid")
        ),
        case!(
            "a GPU (the GPU gate is GA)",
            |v| set(v, "/spec/domain/devices/gpus", json!([{"name": "g1", "deviceName": "nvidia/a"}])),
            Accept
        ),
        case!(
            "vsock without the gate",
            |v| set(v, "/spec/domain/devices/autoattachVSOCK", json!(true)),
            Reject("spec.domain.devices.autoattachVSOCK", "VSOCK feature gate is not enabled in kubevirt-config")
        ),
        case!(
            "vsock with the gate",
            cfg = |c| c.feature_gates = vec!["VSOCK".into()],
            |v| set(v, "/spec/domain/devices/autoattachVSOCK", json!(true)),
            Accept
        ),
        case!(
            "downwardMetrics serial without the gate",
            |v| set(v, "/spec/domain/devices/downwardMetrics", json!({})),
            Reject("spec.domain.devices.downwardMetrics", "downwardMetrics virtio serial is not allowed: DownwardMetrics feature gate is not enabled")
        ),
        case!(
            "downwardMetrics serial with the gate",
            cfg = |c| c.feature_gates = vec!["DownwardMetrics".into()],
            |v| set(v, "/spec/domain/devices/downwardMetrics", json!({})),
            Accept
        ),
        case!(
            "video virtio",
            |v| set(v, "/spec/domain/devices/video", json!({"type": "virtio"})),
            Accept
        ),
        case!(
            "video with autoattachGraphicsDevice false",
            |v| {
                set(v, "/spec/domain/devices/video", json!({"type": "virtio"}));
                set(v, "/spec/domain/devices/autoattachGraphicsDevice", json!(false));
            },
            Reject("spec.video", "Video configuration is not allowed when autoattachGraphicsDevice is set to false")
        ),
        case!(
            "video model unknown on amd64",
            |v| set(v, "/spec/domain/devices/video", json!({"type": "qxl"})),
            Reject("spec.domain.devices.video.type", "video model 'qxl' is not supported on amd64 architecture")
        ),
        case!(
            "watchdog i6300esb",
            |v| set(v, "/spec/domain/devices/watchdog", json!({"name": "w", "i6300esb": {"action": "reset"}})),
            Accept
        ),
        case!(
            "watchdog diag288 on amd64",
            |v| set(v, "/spec/domain/devices/watchdog", json!({"name": "w", "diag288": {"action": "reset"}})),
            Reject("spec.domain.devices.watchdog", "amd64 only supports I6300ESB watchdog device")
        ),
        case!(
            "panic device pvpanic",
            |v| set(v, "/spec/domain/devices/panicDevices", json!([{"model": "pvpanic"}])),
            Accept
        ),
        case!(
            "panic device unknown",
            |v| set(v, "/spec/domain/devices/panicDevices", json!([{"model": "bogus"}])),
            Reject("spec.domain.devices.panicDevices[0].model", "invalid PanicDeviceModel(bogus)")
        ),
        case!(
            "rebootPolicy (Beta gate, on by default)",
            |v| set(v, "/spec/domain/rebootPolicy", json!("Terminate")),
            Accept
        ),
        case!(
            "rebootPolicy with the gate disabled",
            cfg = |c| c.disabled_feature_gates = vec!["RebootPolicy".into()],
            |v| set(v, "/spec/domain/rebootPolicy", json!("Terminate")),
            Reject("spec.domain.rebootPolicy", "RebootPolicy is specified but the RebootPolicy feature gate is not enabled")
        ),
        case!(
            "ppc64le architecture",
            |v| set(v, "/spec/architecture", json!("ppc64le")),
            Reject("spec.architecture", "unsupported architecture: ppc64le")
        ),
        case!(
            "architecture with a shell metacharacter (hostile)",
            |v| set(v, "/spec/architecture", json!("arm64;reboot")),
            Reject("spec.architecture", "unsupported architecture: arm64;reboot")
        ),
        case!(
            "unknown architecture",
            |v| set(v, "/spec/architecture", json!("riscv64")),
            Reject("spec.architecture", "unsupported architecture: riscv64")
        ),
    ]);
}

#[test]
fn firmware_acpi_kernel_boot_and_launch_security() {
    run(&[
        case!(
            "EFI without secure boot and without SMM",
            |v| set(v, "/spec/domain/firmware", json!({"bootloader": {"efi": {"secureBoot": false}}})),
            Accept
        ),
        case!(
            "EFI with SMM",
            |v| {
                set(v, "/spec/domain/firmware", json!({"bootloader": {"efi": {}}}));
                set(v, "/spec/domain/features", json!({"smm": {}}));
            },
            Accept
        ),
        case!(
            "EFI secure boot without SMM",
            |v| {
                set(v, "/spec/domain/firmware", json!({"bootloader": {"efi": {}}}));
                set(v, "/spec/domain/features", json!({"smm": {"enabled": false}}));
            },
            Reject("spec.domain", "spec.domain has EFI SecureBoot enabled. SecureBoot requires SMM, which is currently disabled.")
        ),
        case!(
            "ACPI without tables",
            |v| set(v, "/spec/domain/firmware", json!({"acpi": {}})),
            Reject("spec.acpi", "ACPI was set but no SLIC nor MSDM volume reference was set")
        ),
        case!(
            "ACPI SLIC without a volume",
            |v| set(v, "/spec/domain/firmware", json!({"acpi": {"slicNameRef": "slic"}})),
            Reject("spec.acpi.slicNameRef", "spec.acpi does not have a matching Volume.")
        ),
        case!(
            "ACPI MSDM on a container disk",
            |v| set(v, "/spec/domain/firmware", json!({"acpi": {"msdmNameRef": "root"}})),
            Reject("spec.acpi.msdmNameRef", "spec.acpi refers to Volume of unsupported type.")
        ),
        case!(
            "ACPI SLIC from a secret",
            |v| {
                set(v, "/spec/domain/firmware", json!({"acpi": {"slicNameRef": "slic"}}));
                push(v, "/spec/volumes", json!({"name": "slic", "secret": {"secretName": "s"}}));
            },
            Accept
        ),
        case!(
            "kernel boot from a container",
            |v| set(v, "/spec/domain/firmware", json!({"kernelBoot": {"kernelArgs": "console=ttyS0",
                "container": {"image": "k", "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initrd"}}})),
            Accept
        ),
        case!(
            "kernel args without a kernel",
            |v| set(v, "/spec/domain/firmware", json!({"kernelBoot": {"kernelArgs": "console=ttyS0"}})),
            Reject("spec.domain.firmware.kernelBoot.kernelArgs", "kernel arguments cannot be provided without an external kernel")
        ),
        case!(
            "kernel boot container without an image",
            |v| set(v, "/spec/domain/firmware", json!({"kernelBoot": {"container": {"image": "", "kernelPath": "/boot/vmlinuz"}}})),
            Reject("spec.domain.firmware.kernelBoot.container.image", "spec.domain.firmware.kernelBoot.container must be defined with an image")
        ),
        case!(
            "kernel boot container without paths",
            |v| set(v, "/spec/domain/firmware", json!({"kernelBoot": {"container": {"image": "k"}}})),
            Reject("spec.domain.firmware.kernelBoot.container", "must be defined with at least one of the following: kernelPath, initrdPath")
        ),
        case!(
            "kernel path escaping the image (hostile)",
            |v| set(v, "/spec/domain/firmware", json!({"kernelBoot": {"container": {"image": "k", "kernelPath": "/boot/../../etc/shadow"}}})),
            Reject("spec.domain.firmware.kernelBoot.container.kernelPath", "must be an absolute path to a file without relative components")
        ),
        case!(
            "SEV without UEFI",
            |v| set(v, "/spec/domain/launchSecurity", json!({"sev": {}})),
            Reject("spec.launchSecurity", "SEV requires OVMF (UEFI)")
        ),
        case!(
            "SEV with secure boot",
            |v| {
                set(v, "/spec/domain/launchSecurity", json!({"sev": {}}));
                set(v, "/spec/domain/firmware", json!({"bootloader": {"efi": {}}}));
                set(v, "/spec/domain/features", json!({"smm": {}}));
            },
            Reject("spec.launchSecurity", "SEV does not work along with SecureBoot")
        ),
        case!(
            "SEV and SNP together",
            |v| set(v, "/spec/domain/launchSecurity", json!({"sev": {}, "snp": {}})),
            Reject("spec.launchSecurity", "One and only one launchSecurity type can be set")
        ),
        case!(
            "TDX without its gate",
            |v| set(v, "/spec/domain/launchSecurity", json!({"tdx": {}})),
            Reject("spec.launchSecurity", "WorkloadEncryptionTDX feature gate is not enabled in kubevirt-config")
        ),
        case!(
            "SNP with persistent EFI",
            |v| {
                set(v, "/spec/domain/launchSecurity", json!({"snp": {}}));
                set(v, "/spec/domain/firmware", json!({"bootloader": {"efi": {"secureBoot": false, "persistent": true}}}));
            },
            Reject("spec.launchSecurity", "SNP does not work along with Persistent EFI variables")
        ),
        case!(
            "SEV attestation without Paused",
            |v| {
                set(v, "/spec/domain/launchSecurity", json!({"sev": {"attestation": {}}}));
                set(v, "/spec/domain/firmware", json!({"bootloader": {"efi": {"secureBoot": false}}}));
            },
            Reject("spec.launchSecurity", "SEV attestation requires VMI StartStrategy 'Paused'")
        ),
        case!(
            "SEV that KubeVirt accepts (no confidential computing here)",
            |v| {
                set(v, "/spec/domain/launchSecurity", json!({"sev": {}}));
                set(v, "/spec/domain/firmware", json!({"bootloader": {"efi": {"secureBoot": false}}}));
            },
            Reject("spec.launchSecurity", "not supported by kubevirt-rs")
        ),
    ]);
}

fn arm64(v: &mut Value) {
    set(v, "/spec/architecture", json!("arm64"));
}

/// KubeVirt's arm64 rules (pkg/virt-api/webhooks/arm64.go): UEFI only, virtio/scsi disk buses,
/// host-passthrough only, no watchdog or sound, virtio/ramfb video, `virt*` machines.
#[test]
fn arm64_rejections() {
    run(&[
        case!("arm64 base", arm64, Accept),
        case!(
            "arm64 virt-9.2",
            |v| {
                arm64(v);
                set(v, "/spec/domain/machine", json!({"type": "virt-9.2"}))
            },
            Accept
        ),
        case!(
            "arm64 q35",
            |v| {
                arm64(v);
                set(v, "/spec/domain/machine", json!({"type": "q35"}))
            },
            Reject(
                "spec.domain.machine.type",
                "spec.domain.machine.type is not supported: q35 (allowed values: [virt*])"
            )
        ),
        case!(
            "arm64 microvm",
            |v| {
                arm64(v);
                set(v, "/spec/domain/machine", json!({"type": "microvm"}))
            },
            Reject(
                "spec.domain.machine.type",
                "spec.domain.machine.type is not supported: microvm"
            )
        ),
        case!(
            "arm64 virt on amd64",
            |v| set(v, "/spec/domain/machine", json!({"type": "virt"})),
            Reject(
                "spec.domain.machine.type",
                "spec.domain.machine.type is not supported: virt"
            )
        ),
        case!(
            "arm64 bios",
            |v| {
                arm64(v);
                set(
                    v,
                    "/spec/domain/firmware",
                    json!({"bootloader": {"bios": {}}}),
                )
            },
            Reject(
                "spec.domain.firmware.bootloader.bios",
                "Arm64 does not support bios boot, please change to uefi boot"
            )
        ),
        case!(
            "arm64 sata disk",
            |v| {
                arm64(v);
                set(v, "/spec/domain/devices/disks/0/disk/bus", json!("sata"))
            },
            Reject(
                "spec.domain.devices.disks[0].disk.bus",
                "Arm64 not support this disk bus type, please use virtio or scsi"
            )
        ),
        case!(
            "arm64 sata cdrom",
            |v| {
                arm64(v);
                set(
                    v,
                    "/spec/domain/devices/disks/1",
                    json!({"name": "cloudinit", "cdrom": {"bus": "sata"}}),
                )
            },
            Reject(
                "spec.domain.devices.disks[1].cdrom.bus",
                "Arm64 not support this disk bus type, please use virtio or scsi"
            )
        ),
        case!(
            "arm64 scsi disk",
            |v| {
                arm64(v);
                set(v, "/spec/domain/devices/disks/0/disk/bus", json!("scsi"))
            },
            Accept
        ),
        case!(
            "arm64 named CPU model",
            |v| {
                arm64(v);
                set(v, "/spec/domain/cpu", json!({"model": "cortex-a57"}))
            },
            Reject(
                "spec.domain.cpu.model",
                "currently, host-passthrough is the only model supported on Arm64"
            )
        ),
        case!(
            "arm64 watchdog",
            |v| {
                arm64(v);
                set(
                    v,
                    "/spec/domain/devices/watchdog",
                    json!({"name": "w", "i6300esb": {}}),
                )
            },
            Reject(
                "spec.domain.devices.watchdog",
                "Arm64 not support Watchdog device"
            )
        ),
        case!(
            "arm64 sound",
            |v| {
                arm64(v);
                set(v, "/spec/domain/devices/sound", json!({"name": "s"}))
            },
            Reject(
                "spec.domain.devices.sound",
                "Arm64 not support sound device"
            )
        ),
        case!(
            "arm64 vga",
            |v| {
                arm64(v);
                set(v, "/spec/domain/devices/video", json!({"type": "vga"}))
            },
            Reject(
                "spec.domain.devices.video.type",
                "video model 'vga' is not supported on arm64 architecture"
            )
        ),
    ]);
}

/// KubeVirt's `SetArm64Defaults`: machine `virt`, host-passthrough, UEFI without Secure Boot,
/// virtio buses where the user named none.
#[test]
fn arm64_defaults() {
    let c = case!(
        "arm64 defaults",
        |v| {
            arm64(v);
            set(v, "/spec/domain/devices/disks/0", json!({"name": "root"}));
            set(
                v,
                "/spec/domain/devices/disks/1",
                json!({"name": "cloudinit", "cdrom": {"bus": "scsi"}}),
            );
        },
        Accept
    );
    let got = c.run().expect("admitted");
    let d = &got["spec"]["domain"];
    assert_eq!(d["machine"]["type"], "virt", "{d}");
    assert_eq!(d["cpu"]["model"], "host-passthrough", "{d}");
    assert_eq!(
        d["firmware"]["bootloader"]["efi"]["secureBoot"], false,
        "{d}"
    );
    assert!(d["firmware"]["bootloader"].get("bios").is_none(), "{d}");
    assert_eq!(d["devices"]["disks"][0]["disk"]["bus"], "virtio", "{d}");
    assert_eq!(d["devices"]["disks"][1]["cdrom"]["bus"], "scsi", "{d}");
    // As in KubeVirt v1.9, a CD-ROM without a bus gets virtio on arm64, which the disk rules
    // then refuse: an arm64 CD-ROM names its bus (scsi).
    run(&[case!(
        "arm64 cdrom without a bus",
        |v| {
            arm64(v);
            set(
                v,
                "/spec/domain/devices/disks/1",
                json!({"name": "cloudinit", "cdrom": {}}),
            );
        },
        Reject(
            "spec.domain.devices.disks[1].cdrom.bus",
            "Bus type virtio is invalid for CD-ROM device"
        )
    )]);
    // amd64 keeps its defaults.
    let amd = case!(
        "amd64 defaults",
        |v| set(v, "/spec/domain/devices/disks/0", json!({"name": "root"})),
        Accept
    )
    .run()
    .expect("admitted");
    let d = &amd["spec"]["domain"];
    assert_eq!(d["machine"]["type"], "q35", "{d}");
    assert_eq!(d["devices"]["disks"][0]["disk"]["bus"], "sata", "{d}");
    assert!(d["firmware"].get("bootloader").is_none(), "{d}");
}

fn s390x(v: &mut Value) {
    set(v, "/spec/architecture", json!("s390x"));
}

/// KubeVirt's s390x rules (pkg/virt-api/webhooks/s390x.go): the diag288 watchdog only, virtio
/// video only, `s390-ccw-virtio*` machines.
#[test]
fn s390x_rejections() {
    run(&[
        case!("s390x base", s390x, Accept),
        case!(
            "s390x s390-ccw-virtio-7.2",
            |v| {
                s390x(v);
                set(v, "/spec/domain/machine", json!({"type": "s390-ccw-virtio-7.2"}))
            },
            Accept
        ),
        case!(
            "s390x q35",
            |v| {
                s390x(v);
                set(v, "/spec/domain/machine", json!({"type": "q35"}))
            },
            Reject(
                "spec.domain.machine.type",
                "spec.domain.machine.type is not supported: q35 (allowed values: [s390-ccw-virtio*])"
            )
        ),
        case!(
            "s390x virt",
            |v| {
                s390x(v);
                set(v, "/spec/domain/machine", json!({"type": "virt"}))
            },
            Reject(
                "spec.domain.machine.type",
                "spec.domain.machine.type is not supported: virt (allowed values: [s390-ccw-virtio*])"
            )
        ),
        case!(
            "s390-ccw-virtio on amd64",
            |v| set(v, "/spec/domain/machine", json!({"type": "s390-ccw-virtio"})),
            Reject(
                "spec.domain.machine.type",
                "spec.domain.machine.type is not supported: s390-ccw-virtio"
            )
        ),
        case!(
            "s390x i6300esb watchdog",
            |v| {
                s390x(v);
                set(
                    v,
                    "/spec/domain/devices/watchdog",
                    json!({"name": "w", "i6300esb": {}}),
                )
            },
            Reject(
                "spec.domain.devices.watchdog",
                "s390x only supports Diag288 watchdog device"
            )
        ),
        case!(
            "s390x diag288 watchdog",
            |v| {
                s390x(v);
                set(
                    v,
                    "/spec/domain/devices/watchdog",
                    json!({"name": "w", "diag288": {"action": "poweroff"}}),
                )
            },
            Accept
        ),
        case!(
            "s390x vga",
            |v| {
                s390x(v);
                set(v, "/spec/domain/devices/video", json!({"type": "vga"}))
            },
            Reject(
                "spec.domain.devices.video.type",
                "video model 'vga' is not supported on s390x architecture"
            )
        ),
        case!(
            "s390x ramfb (arm64 has it, s390x not)",
            |v| {
                s390x(v);
                set(v, "/spec/domain/devices/video", json!({"type": "ramfb"}))
            },
            Reject(
                "spec.domain.devices.video.type",
                "video model 'ramfb' is not supported on s390x architecture"
            )
        ),
        case!(
            "s390x panic device",
            |v| {
                s390x(v);
                set(v, "/spec/domain/devices/panicDevices", json!([{"model": "pvpanic"}]))
            },
            Reject(
                "spec.domain.devices.panicDevices",
                "custom panic devices are not supported on s390x architecture"
            )
        ),
        case!(
            "s390x scsi disk",
            |v| {
                s390x(v);
                set(v, "/spec/domain/devices/disks/0/disk/bus", json!("scsi"))
            },
            Accept
        ),
        case!(
            "s390x with a hostile suffix",
            |v| set(v, "/spec/architecture", json!("s390x,machine=q35")),
            Reject("spec.architecture", "unsupported architecture: s390x,machine=q35")
        ),
    ]);
}

/// KubeVirt's `SetS390xDefaults`: machine `s390-ccw-virtio`, virtio disk buses, a watchdog
/// without a model becomes diag288 (reset), ACPI off.
#[test]
fn s390x_defaults() {
    let got = case!(
        "s390x defaults",
        |v| {
            s390x(v);
            set(v, "/spec/domain/devices/disks/0", json!({"name": "root"}));
            set(v, "/spec/domain/devices/watchdog", json!({"name": "w"}));
        },
        Accept
    )
    .run()
    .expect("admitted");
    let d = &got["spec"]["domain"];
    assert_eq!(d["machine"]["type"], "s390-ccw-virtio", "{d}");
    assert_eq!(d["devices"]["disks"][0]["disk"]["bus"], "virtio", "{d}");
    assert_eq!(
        d["devices"]["watchdog"]["diag288"]["action"], "reset",
        "{d}"
    );
    assert_eq!(d["features"]["acpi"]["enabled"], false, "{d}");
    assert!(d["firmware"].get("bootloader").is_none(), "{d}");
}

#[test]
fn access_credentials() {
    fn ssh(method: Value) -> Value {
        json!([{"sshPublicKey": {"source": {"secret": {"secretName": "keys"}}, "propagationMethod": method}}])
    }
    run(&[
        case!(
            "ssh key over noCloud",
            |v| set(v, "/spec/accessCredentials", ssh(json!({"noCloud": {}}))),
            Accept
        ),
        case!(
            "ssh key over the guest agent",
            |v| set(v, "/spec/accessCredentials", ssh(json!({"qemuGuestAgent": {"users": ["root"]}}))),
            Accept
        ),
        case!(
            "password over the guest agent",
            |v| set(v, "/spec/accessCredentials", json!([{"userPassword": {"source": {"secret": {"secretName": "p"}}, "propagationMethod": {"qemuGuestAgent": {}}}}])),
            Accept
        ),
        case!(
            "ssh key over configDrive without a configDrive volume",
            |v| set(v, "/spec/accessCredentials", ssh(json!({"configDrive": {}}))),
            Reject(
                "spec.accessCredentials[0].sshPublicKey.propagationMethod",
                "spec.accessCredentials[0] requires a configDrive volume to exist when the configDrive propagationMethod is in use."
            )
        ),
        case!(
            "ssh key over noCloud without a noCloud volume",
            |v| {
                set(v, "/spec/volumes/1", json!({"name": "cloudinit", "cloudInitConfigDrive": {"userData": "x"}}));
                set(v, "/spec/accessCredentials", ssh(json!({"noCloud": {}})));
            },
            Reject(
                "spec.accessCredentials[0].sshPublicKey.propagationMethod",
                "requires a noCloud volume to exist when the noCloud propagationMethod is in use."
            )
        ),
        case!(
            "ssh key without a source",
            |v| set(v, "/spec/accessCredentials", json!([{"sshPublicKey": {"source": {}, "propagationMethod": {"noCloud": {}}}}])),
            Reject("spec.accessCredentials[0].sshPublicKey.source", "spec.accessCredentials[0] must have exactly one source set")
        ),
        case!(
            "ssh key over the guest agent without users",
            |v| set(v, "/spec/accessCredentials", ssh(json!({"qemuGuestAgent": {"users": []}}))),
            Reject(
                "spec.accessCredentials[0].sshPublicKey.propagationMethod.qemuGuestAgent.users",
                "spec.accessCredentials[0] requires at least one user to be present in the users list"
            )
        ),
        case!(
            "ssh key without a propagation method",
            |v| set(v, "/spec/accessCredentials", ssh(json!({}))),
            Reject("spec.accessCredentials[0].sshPublicKey.propagationMethod", "spec.accessCredentials[0] must have exactly one propagationMethod set")
        ),
        case!(
            "password without a source",
            |v| set(v, "/spec/accessCredentials", json!([{"userPassword": {"source": {}, "propagationMethod": {"qemuGuestAgent": {}}}}])),
            Reject("spec.accessCredentials[0].userPassword.source", "must have exactly one source set")
        ),
        case!(
            "password without a propagation method",
            |v| set(v, "/spec/accessCredentials", json!([{"userPassword": {"source": {"secret": {"secretName": "p"}}, "propagationMethod": {}}}])),
            Reject("spec.accessCredentials[0].userPassword.propagationMethod", "must have exactly one propagationMethod set")
        ),
        case!(
            "no credential type",
            |v| set(v, "/spec/accessCredentials", json!([{}])),
            Reject("spec.accessCredentials[0]", "spec.accessCredentials[0] must have exactly one access credential type set")
        ),
    ]);
}

#[test]
fn dns() {
    run(&[
        case!(
            "dnsPolicy None with a nameserver",
            |v| {
                set(v, "/spec/dnsPolicy", json!("None"));
                set(v, "/spec/dnsConfig", json!({"nameservers": ["1.2.3.4"], "searches": ["example.com"], "options": [{"name": "ndots", "value": "2"}]}));
            },
            Accept
        ),
        case!(
            "dnsPolicy None without dnsConfig",
            |v| set(v, "/spec/dnsPolicy", json!("None")),
            Reject("spec.dnsConfig", "must provide `dnsConfig` when `dnsPolicy` is None")
        ),
        case!(
            "dnsPolicy None without nameservers",
            |v| {
                set(v, "/spec/dnsPolicy", json!("None"));
                set(v, "/spec/dnsConfig", json!({"searches": ["example.com"]}));
            },
            Reject("nameservers", "must provide at least one DNS nameserver when `dnsPolicy` is None")
        ),
        case!(
            "unknown dnsPolicy",
            |v| set(v, "/spec/dnsPolicy", json!("Bogus")),
            Reject("spec.dnsPolicy", "DNSPolicy: Bogus is not supported, valid values: [ClusterFirstWithHostNet ClusterFirst Default None ]")
        ),
        case!(
            "four nameservers",
            |v| set(v, "/spec/dnsConfig", json!({"nameservers": ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"]})),
            Reject("nameservers", "must not have more than 3 nameservers")
        ),
        case!(
            "nameserver not an IP",
            |v| set(v, "/spec/dnsConfig", json!({"nameservers": ["1.2.3.4.5"]})),
            Reject("nameservers", "must be valid IP address: 1.2.3.4.5")
        ),
        case!(
            "seven search domains",
            |v| set(v, "/spec/dnsConfig", json!({"searches": ["a", "b", "c", "d", "e", "f", "g"]})),
            Reject("searchDomains", "must not have more than 6 search paths")
        ),
        case!(
            "search list too long",
            |v| set(v, "/spec/dnsConfig", json!({"searches": ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(63), "e".repeat(10)]})),
            Reject("searchDomains", "must not have more than 256 characters (including spaces) in the search list")
        ),
        case!(
            "search domain invalid",
            |v| set(v, "/spec/dnsConfig", json!({"searches": ["bad_domain"]})),
            Reject("searchDomains", "a lowercase RFC 1123 subdomain")
        ),
        case!(
            "option without a name",
            |v| set(v, "/spec/dnsConfig", json!({"options": [{"value": "2"}]})),
            Reject("options", "Option.Name must not be empty")
        ),
    ]);
}

#[test]
fn hyperv() {
    run(&[
        case!("no hyperv", |v| set(v, "/spec/domain/features", json!({})), Accept),
        case!("empty hyperv", |v| set(v, "/spec/domain/features", json!({"hyperv": {}})), Accept),
        case!(
            "hyperv features with their dependencies",
            |v| set(v, "/spec/domain/features", json!({"hyperv": {"vpindex": {}, "synic": {}, "synictimer": {}, "vapic": {}, "evmcs": {}}})),
            Accept
        ),
        case!(
            "synic with vpindex disabled",
            |v| set(v, "/spec/domain/features", json!({"hyperv": {"synic": {"enabled": true}, "vpindex": {"enabled": false}}})),
            Reject("spec.domain.features.hyperv.synic", "'spec.domain.features.hyperv.synic' requires 'spec.domain.features.hyperv.vpindex', which was disabled.")
        ),
        case!(
            "evmcs with vapic disabled",
            |v| set(v, "/spec/domain/features", json!({"hyperv": {"evmcs": {"enabled": true}, "vapic": {"enabled": false}}})),
            Reject("spec.domain.features.hyperv.evmcs", "requires 'spec.domain.features.hyperv.vapic', which was disabled.")
        ),
        case!(
            "evmcs with vmx forbidden",
            |v| {
                set(v, "/spec/domain/features", json!({"hyperv": {"evmcs": {}}}));
                set(v, "/spec/domain/cpu", json!({"features": [{"name": "vmx", "policy": "forbid"}]}));
            },
            Reject("spec.domain.cpu.features[0].policy", "vmx cpu feature has to be set to require policy")
        ),
        case!(
            "hyperv with hyperv passthrough",
            |v| set(v, "/spec/domain/features", json!({"hyperv": {"relaxed": {}}, "hypervPassthrough": {"enabled": true}})),
            Reject("spec.domain.features.hyperv", "Cannot explicitly set hyperV features if HypervPassthrough is being used.")
        ),
        case!(
            "hyperv passthrough alone",
            |v| set(v, "/spec/domain/features", json!({"hypervPassthrough": {"enabled": true}})),
            Accept
        ),
    ]);
}

#[test]
fn boot_order_and_serials() {
    run(&[
        case!(
            "boot order on an interface",
            |v| set(v, "/spec/domain/devices/interfaces/0/bootOrder", json!(1)),
            Accept
        ),
        case!(
            "boot order 0 on an interface",
            |v| set(v, "/spec/domain/devices/interfaces/0/bootOrder", json!(0)),
            Reject("spec.domain.devices.interfaces[0].bootOrder", "spec.domain.devices.interfaces[0] must have a boot order > 0, if supplied")
        ),
        case!(
            "different boot orders on disks and interfaces",
            |v| {
                set(v, "/spec/domain/devices/disks/0/bootOrder", json!(1));
                set(v, "/spec/domain/devices/interfaces/0/bootOrder", json!(2));
            },
            Accept
        ),
        case!(
            "same boot order on a disk and an interface",
            |v| {
                set(v, "/spec/domain/devices/disks/0/bootOrder", json!(1));
                set(v, "/spec/domain/devices/interfaces/0/bootOrder", json!(1));
            },
            Reject("spec.domain.devices.interfaces[0].bootOrder", "Boot order for spec.domain.devices.interfaces[0].bootOrder already set for a different device.")
        ),
        case!(
            "valid serial",
            |v| set(v, "/spec/domain/devices/disks/0/serial", json!("sn-11223344")),
            Accept
        ),
        case!(
            "empty cdrom (DeclarativeHotplugVolumes is Beta)",
            |v| push(v, "/spec/domain/devices/disks", json!({"name": "cd", "cdrom": {"bus": "sata"}})),
            Accept
        ),
        case!(
            "empty cdrom with DeclarativeHotplugVolumes disabled",
            cfg = |c| c.disabled_feature_gates = vec!["DeclarativeHotplugVolumes".into()],
            |v| push(v, "/spec/domain/devices/disks", json!({"name": "cd", "cdrom": {"bus": "sata"}})),
            Reject("spec.domain.devices.disks[2].name", "DeclarativeHotplugVolumes feature gate not enabled, cannot define an empty CD-ROM disk")
        ),
        case!(
            "LUN on a container disk",
            |v| set(v, "/spec/domain/devices/disks/0", json!({"name": "root", "lun": {"bus": "scsi"}})),
            Reject("spec.domain.devices.disks[0].lun", "spec.domain.devices.disks[0].lun can only be mapped to a DataVolume or PersistentVolumeClaim volume.")
        ),
        case!(
            "LUN on a PVC, with persistent reservation (GA)",
            |v| {
                set(v, "/spec/domain/devices/disks/0", json!({"name": "root", "lun": {"bus": "scsi", "reservation": true}}));
                set(v, "/spec/volumes/0", json!({"name": "root", "persistentVolumeClaim": {"claimName": "c"}}));
            },
            Accept
        ),
        case!(
            "LUN on a DataVolume",
            |v| {
                set(v, "/spec/domain/devices/disks/0", json!({"name": "root", "lun": {}}));
                set(v, "/spec/volumes/0", json!({"name": "root", "dataVolume": {"name": "dv"}}));
            },
            Accept
        ),
    ]);
}

#[test]
fn dra_gpus_and_host_devices() {
    run(&[
        case!(
            "DRA GPU with its claim (GPUsWithDRA is Beta)",
            |v| {
                set(v, "/spec/domain/devices/gpus", json!([{"name": "g", "claimName": "c", "requestName": "r"}]));
                set(v, "/spec/resourceClaims", json!([{"name": "c", "resourceClaimTemplateName": "tmpl"}]));
            },
            Accept
        ),
        case!(
            "GPU without deviceName or claim",
            |v| set(v, "/spec/domain/devices/gpus", json!([{"name": "g"}])),
            Reject("spec.domain.devices.gpus", "vmi.spec.domain.devices.gpus contains GPUs without deviceName or claimRequest")
        ),
        case!(
            "GPU with deviceName and claim",
            |v| set(v, "/spec/domain/devices/gpus", json!([{"name": "g", "deviceName": "nvidia/a", "claimName": "c", "requestName": "r"}])),
            Reject("spec.domain.devices.gpus", "vmi.spec.domain.devices.gpus contains GPUs with both deviceName and claimRequest")
        ),
        case!(
            "DRA GPU with its gate disabled",
            cfg = |c| c.disabled_feature_gates = vec!["GPUsWithDRA".into()],
            |v| {
                set(v, "/spec/domain/devices/gpus", json!([{"name": "g", "claimName": "c", "requestName": "r"}]));
                set(v, "/spec/resourceClaims", json!([{"name": "c", "resourceClaimTemplateName": "tmpl"}]));
            },
            Reject("spec.domain.devices.gpus", "vmi.spec.domain.devices.gpus contains DRA enabled GPUs but feature gate is not enabled")
        ),
        case!(
            "DRA GPU whose claim is missing from resourceClaims",
            |v| set(v, "/spec/domain/devices/gpus", json!([{"name": "g", "claimName": "c", "requestName": "r"}])),
            Reject("spec.resourceClaims", "vmi.spec.resourceClaims must specify all claims used in vmi.spec.domain.devices.gpus and vmi.spec.domain.devices.hostDevices")
        ),
        case!(
            "same claim/request on a GPU and a host device",
            |v| {
                set(v, "/spec/domain/devices/gpus", json!([{"name": "g", "claimName": "c", "requestName": "r"}]));
                set(v, "/spec/domain/devices/hostDevices", json!([{"name": "h", "claimName": "c", "requestName": "r"}]));
                set(v, "/spec/resourceClaims", json!([{"name": "c", "resourceClaimName": "claim"}]));
            },
            Reject("spec.domain.devices.hostDevices[0]", "duplicate claimName/requestName pair \"c/r\" between GPUs[0] and HostDevices[0]")
        ),
        case!(
            "resource claim with both sources",
            |v| set(v, "/spec/resourceClaims", json!([{"name": "c", "resourceClaimName": "a", "resourceClaimTemplateName": "b"}])),
            Reject("spec.resourceClaims[0]", "at most one of resourceClaimName or resourceClaimTemplateName may be specified")
        ),
        case!(
            "resource claim without a source",
            |v| set(v, "/spec/resourceClaims", json!([{"name": "c"}])),
            Reject("spec.resourceClaims[0]", "must specify one of: resourceClaimName, resourceClaimTemplateName")
        ),
        case!(
            "duplicate resource claim names",
            |v| set(v, "/spec/resourceClaims", json!([{"name": "c", "resourceClaimName": "a"}, {"name": "c", "resourceClaimName": "b"}])),
            Reject("spec.resourceClaims[1].name", "duplicate resourceClaims name \"c\"")
        ),
    ]);
}

// ---- spec.affinity and spec.topologySpreadConstraints (vmi-create-admitter_test.go "with
// affinity checks", "with topologySpreadConstraints checks"; Kubernetes' validation_test.go
// for the rules KubeVirt copies) ----

/// KubeVirt's `name part` message for a string that is not a qualified name.
const NAME_PART: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// Admits [`admitters::base`] edited by `edit` and compares every cause, in order, with
/// `want` (field, message), as KubeVirt's tests do.
fn causes(name: &str, edit: fn(&mut Value), want: &[(&str, String)]) -> Option<String> {
    let c = admitters::vmi_case("exact", admitters::default_cfg, edit, Accept);
    let got: Vec<(String, String)> = match c.run() {
        Ok(_) => Vec::new(),
        Err(errs) => errs.into_iter().map(|e| (e.field, e.message)).collect(),
    };
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(f, m)| (f.to_string(), m.clone()))
        .collect();
    (got != want).then(|| format!("{name}:\n  got  {got:?}\n  want {want:?}"))
}

/// A cause as KubeVirt words it: the field, then the field again in the message.
fn cause(field: &'static str, body: &str) -> (&'static str, String) {
    (field, format!("{field}: {body}"))
}

#[test]
fn affinity_as_kubevirt_tests_it() {
    const PA_KEY: &str =
        "spec.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey";
    const PA_VALUES: &str = "spec.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].values";
    const AA_KEY: &str =
        "spec.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey";
    const AA_VALUES: &str = "spec.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].values";
    let empty_key = |k: &'static str| {
        vec![
            cause(k, "Required value: can not be empty"),
            cause(k, "Invalid value: \"\": name part must be non-empty"),
            cause(k, &format!("Invalid value: \"\": {NAME_PART}")),
        ]
    };
    let in_without_values = |k: &'static str| {
        cause(
            k,
            "Required value: must be specified when `operator` is 'In' or 'NotIn'",
        )
    };
    let mut failures = Vec::new();
    let mut t = |name: &str, edit: fn(&mut Value), want: Vec<(&str, String)>| {
        failures.extend(causes(name, edit, &want));
    };
    t("spec.affinity unset", |_| {}, vec![]);
    t(
        "(PodAffinity) both terms unset",
        |v| set(v, "/spec/affinity", json!({"podAffinity": {}})),
        vec![],
    );
    t(
        "(PodAffinity) empty topologyKey",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "key1", "operator": "Exists"}]}, "topologyKey": ""}]}}),
            )
        },
        empty_key(PA_KEY),
    );
    t(
        "(PodAffinity) an empty value (a valid label value) and an empty topologyKey",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "key1", "operator": "In", "values": [""]}]}, "topologyKey": ""}]}}),
            )
        },
        empty_key(PA_KEY),
    );
    t(
        "(PodAffinity) In without values and an invalid topologyKey",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "key1", "operator": "In"}]}, "topologyKey": "hostname=host1"}]}}),
            )
        },
        vec![
            in_without_values(PA_VALUES),
            cause(
                PA_KEY,
                &format!("Invalid value: \"hostname=host1\": {NAME_PART}"),
            ),
        ],
    );
    t(
        "(PodAffinity) In without values and an empty topologyKey",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "key1", "operator": "In", "values": null}]}, "topologyKey": ""}]}}),
            )
        },
        [vec![in_without_values(PA_VALUES)], empty_key(PA_KEY)].concat(),
    );
    t(
        "(PodAffinity) weight 255",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 255, "podAffinityTerm": {"topologyKey": "test"}}]}}),
            )
        },
        vec![cause(
            "spec.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
            "Invalid value: 255: must be in the range 1-100",
        )],
    );
    t(
        "(PodAntiAffinity) both terms unset",
        |v| set(v, "/spec/affinity", json!({"podAntiAffinity": {}})),
        vec![],
    );
    t(
        "(PodAntiAffinity) empty topologyKey",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "key1", "operator": "In", "values": [""]}]}, "topologyKey": ""}]}}),
            )
        },
        empty_key(AA_KEY),
    );
    t(
        "(PodAntiAffinity) a proper preferred term",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 86, "podAffinityTerm": {"labelSelector": {"matchExpressions": [{"key": "key1", "operator": "In", "values": ["a"]}]}, "topologyKey": "test"}}]}}),
            )
        },
        vec![],
    );
    t(
        "(PodAntiAffinity) In without values and an invalid topologyKey",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "key1", "operator": "In"}]}, "topologyKey": "hostname=host1"}]}}),
            )
        },
        vec![
            in_without_values(AA_VALUES),
            cause(
                AA_KEY,
                &format!("Invalid value: \"hostname=host1\": {NAME_PART}"),
            ),
        ],
    );
    t(
        "(PodAntiAffinity) In without values and an empty topologyKey",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "key1", "operator": "In"}]}, "topologyKey": ""}]}}),
            )
        },
        [vec![in_without_values(AA_VALUES)], empty_key(AA_KEY)].concat(),
    );
    t(
        "(NodeAffinity) both terms unset",
        |v| set(v, "/spec/affinity", json!({"nodeAffinity": {}})),
        vec![],
    );
    // KubeVirt's schema check refuses `nodeSelectorTerms: null` before this rule ("... must be
    // of type array"); our decoder reads null as the empty list, which the rule refuses.
    t(
        "(NodeAffinity) nodeSelectorTerms null",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": null}}}),
            )
        },
        vec![cause(
            "spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
            "Required value: must have at least one node selector term",
        )],
    );
    t(
        "(NodeAffinity) a term with neither expressions nor fields",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}),
            )
        },
        vec![],
    );
    t(
        "(NodeAffinity) only matchExpressions",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "key1", "operator": "Exists"}]}]}}}),
            )
        },
        vec![],
    );
    t(
        "(NodeAffinity) a field selector key other than metadata.name",
        |v| {
            set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "key", "operator": "In", "values": ["value1"]}]}]}}}))
        },
        vec![cause(
            "spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].key",
            "Invalid value: \"key\": not a valid field selector key",
        )],
    );
    t(
        "(NodeAffinity) an empty node name in matchFields",
        |v| {
            set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [""]}]}]}}}))
        },
        vec![cause(
            "spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].values[0]",
            "Invalid value: \"\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )],
    );
    t(
        "(NodeAffinity) a proper preferred term",
        |v| {
            set(
                v,
                "/spec/affinity",
                json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 20, "preference": {"matchExpressions": [{"key": "key1", "operator": "Exists"}]}}]}}),
            )
        },
        vec![],
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn topology_spread_as_kubevirt_tests_it() {
    let mut failures = Vec::new();
    let mut t = |name: &str, edit: fn(&mut Value), want: Vec<(&str, String)>| {
        failures.extend(causes(name, edit, &want));
    };
    t("unset", |_| {}, vec![]);
    t(
        "no labelSelector",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}]),
            )
        },
        vec![],
    );
    t(
        "a valid labelSelector",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchExpressions": [{"key": "kubernetes.io/zone", "operator": "In", "values": ["zone1"]}]}}]),
            )
        },
        vec![],
    );
    t(
        "empty topologyKey",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 1, "topologyKey": "", "whenUnsatisfiable": "DoNotSchedule"}]),
            )
        },
        vec![cause(
            "spec.topologySpreadConstraints[0].topologyKey",
            "Required value: can not be empty",
        )],
    );
    t(
        "invalid topologyKey",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 1, "topologyKey": "hostname=host1", "whenUnsatisfiable": "DoNotSchedule"}]),
            )
        },
        vec![cause(
            "spec.topologySpreadConstraints[0].topologyKey",
            &format!("Invalid value: \"hostname=host1\": {NAME_PART}"),
        )],
    );
    t(
        "maxSkew -1",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": -1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}]),
            )
        },
        vec![cause(
            "spec.topologySpreadConstraints[0].maxSkew",
            "Invalid value: -1: must be greater than zero",
        )],
    );
    t(
        "In without values (KubeVirt reports it without the constraint's index)",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": null}]}}]),
            )
        },
        vec![cause(
            "spec.topologySpreadConstraints[0].labelSelector.matchExpressions[0].values",
            "Required value: must be specified when `operator` is 'In' or 'NotIn'",
        )],
    );
    // Kubernetes' TestValidateTopologySpreadConstraints cases for the rules KubeVirt copies.
    t(
        "maxSkew 0",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 0, "topologyKey": "k8s.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]),
            )
        },
        vec![cause(
            "spec.topologySpreadConstraints[0].maxSkew",
            "Invalid value: 0: must be greater than zero",
        )],
    );
    t(
        "invalid whenUnsatisfiable",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 1, "topologyKey": "k8s.io/zone", "whenUnsatisfiable": "N/A"}]),
            )
        },
        vec![cause(
            "spec.topologySpreadConstraints[0].whenUnsatisfiable",
            "Unsupported value: \"N/A\": supported values: \"DoNotSchedule\", \"ScheduleAnyway\"",
        )],
    );
    t(
        "duplicate (topologyKey, whenUnsatisfiable)",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 1, "topologyKey": "k8s.io/zone", "whenUnsatisfiable": "DoNotSchedule"},
                {"maxSkew": 2, "topologyKey": "k8s.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]),
            )
        },
        vec![cause(
            "spec.topologySpreadConstraints[0].{topologyKey, whenUnsatisfiable}",
            "Duplicate value: \"{k8s.io/zone, DoNotSchedule}\"",
        )],
    );
    t(
        "the same key with both actions",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 1, "topologyKey": "k8s.io/zone", "whenUnsatisfiable": "DoNotSchedule"},
                {"maxSkew": 2, "topologyKey": "k8s.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]),
            )
        },
        vec![],
    );
    t(
        "minDomains and matchLabelKeys are not checked by KubeVirt",
        |v| {
            set(
                v,
                "/spec/topologySpreadConstraints",
                json!([
                {"maxSkew": 1, "topologyKey": "k8s.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                 "minDomains": -1, "matchLabelKeys": ["a/b/c"]}]),
            )
        },
        vec![],
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Kubernetes' validation_test.go cases for the affinity rules, and hostile values.
#[test]
fn affinity_kubernetes_rules_and_hostile_values() {
    run(&[
        case!(
            "node selector terms: empty list",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}})),
            Reject("spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
                   "spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: Required value: must have at least one node selector term")
        ),
        case!(
            "node selector: every valid operator",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "a", "operator": "In", "values": ["x", "y"]},
                {"key": "b", "operator": "NotIn", "values": ["x"]},
                {"key": "c", "operator": "Exists"},
                {"key": "d", "operator": "DoesNotExist"},
                {"key": "e", "operator": "Gt", "values": ["1"]},
                {"key": "f", "operator": "Lt", "values": ["100"]}],
                "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["node-1"]}]}]}}})),
            Accept
        ),
        case!(
            "node selector: Exists with values",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "a", "operator": "Exists", "values": ["x"]}]}]}}})),
            Reject("spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values",
                   "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
        ),
        case!(
            "node selector: Gt with two values",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "a", "operator": "Gt", "values": ["1", "2"]}]}]}}})),
            Reject("spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values",
                   "Required value: must be specified single value when `operator` is 'Lt' or 'Gt'")
        ),
        case!(
            "node selector: Lt without values",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "a", "operator": "Lt"}]}]}}})),
            Reject("spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values",
                   "must be specified single value when `operator` is 'Lt' or 'Gt'")
        ),
        case!(
            "node selector: unknown operator",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "a", "operator": "Near", "values": ["x"]}]}]}}})),
            Reject("spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator",
                   "Invalid value: \"Near\": not a valid selector operator")
        ),
        case!(
            "node selector: an invalid key in the second term",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
                {"matchExpressions": [{"key": "-a", "operator": "Exists"}]}]}}})),
            Reject("spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchExpressions[0].key",
                   "Invalid value: \"-a\": name part must consist of")
        ),
        case!(
            "node field selector: two values",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a", "b"]}]}]}}})),
            Reject("spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].values",
                   "Required value: must be only one value when `operator` is 'In' or 'NotIn' for node field selector")
        ),
        case!(
            "node field selector: Exists",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "Exists"}]}]}}})),
            Reject("spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].operator",
                   "Invalid value: \"Exists\": not a valid selector operator")
        ),
        case!(
            "preferred node term: weight 0",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 0, "preference": {}}]}})),
            Reject("spec.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
                   "Invalid value: 0: must be in the range 1-100")
        ),
        case!(
            "preferred node term: weight 101 and a bad preference",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 101, "preference": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]}})),
            Reject("spec.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].values",
                   "must be specified when `operator` is 'In' or 'NotIn'")
        ),
        case!(
            "preferred node term: weights 1 and 100",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {}}, {"weight": 100, "preference": {}}]}})),
            Accept
        ),
        case!(
            "pod affinity: an invalid namespace (KubeVirt's path has no index)",
            |v| set(v, "/spec/affinity", json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "namespaces": ["ok", "Not_OK"]}]}})),
            Reject("spec.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].namespace",
                   "Invalid value: \"Not_OK\": a lowercase RFC 1123 label must consist of")
        ),
        case!(
            "pod affinity: a namespace with dots",
            |v| set(v, "/spec/affinity", json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "namespaces": ["a.b"]}]}})),
            Reject("spec.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].namespace",
                   "Invalid value: \"a.b\": must not contain dots")
        ),
        case!(
            "pod affinity: a bad namespaceSelector",
            |v| set(v, "/spec/affinity", json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]}}]}})),
            Reject("spec.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].namespaceSelector.matchExpressions[0].values",
                   "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
        ),
        case!(
            "pod affinity: an unknown label selector operator",
            |v| set(v, "/spec/affinity", json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "labelSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}]}})),
            Reject("spec.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].operator",
                   "Invalid value: \"Gt\": not a valid selector operator")
        ),
        case!(
            "pod affinity: an invalid matchLabels value",
            |v| set(v, "/spec/affinity", json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "a b"}}}]}})),
            Reject("spec.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchLabels",
                   "Invalid value: \"a b\": a valid label must be an empty string or consist of")
        ),
        case!(
            "pod anti-affinity: preferred term weight -1",
            |v| set(v, "/spec/affinity", json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": -1, "podAffinityTerm": {"topologyKey": "zone"}}]}})),
            Reject("spec.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
                   "Invalid value: -1: must be in the range 1-100")
        ),
        case!(
            "pod anti-affinity: preferred term without topologyKey",
            |v| set(v, "/spec/affinity", json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "podAffinityTerm": {"topologyKey": ""}}]}})),
            Reject("spec.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm.topologyKey",
                   "Required value: can not be empty")
        ),
        case!(
            "a prefixed topology key and label key",
            |v| set(v, "/spec/affinity", json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": {"example.com/app": "web", "empty": ""}}}]}})),
            Accept
        ),
        // Hostile values.
        case!(
            "hostile: a label key with '/' twice",
            |v| set(v, "/spec/affinity", json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "a/b/c", "operator": "Exists"}]}]}}})),
            Reject("spec.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key",
                   "Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')")
        ),
        case!(
            "hostile: a topology key '../../etc'",
            |v| set(v, "/spec/topologySpreadConstraints", json!([
                {"maxSkew": 1, "topologyKey": "../../etc", "whenUnsatisfiable": "DoNotSchedule"}])),
            Reject("spec.topologySpreadConstraints[0].topologyKey", "a qualified name must consist of")
        ),
        case!(
            "hostile: an empty prefix",
            |v| set(v, "/spec/topologySpreadConstraints", json!([
                {"maxSkew": 1, "topologyKey": "/zone", "whenUnsatisfiable": "DoNotSchedule"}])),
            Reject("spec.topologySpreadConstraints[0].topologyKey",
                   "Invalid value: \"/zone\": prefix part must be non-empty")
        ),
        case!(
            "hostile: a 64-character label key name",
            |v| {
                let key = "k".repeat(64);
                set(v, "/spec/affinity", json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": key}]}}))
            },
            Reject("spec.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
                   "name part must be no more than 63 characters")
        ),
        case!(
            "a 63-character label key name and value",
            |v| {
                let key = "k".repeat(63);
                set(v, "/spec/affinity", json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": key.clone(), "labelSelector": {"matchLabels": {key.clone(): key}}}]}}))
            },
            Accept
        ),
        case!(
            "hostile: a 64-character label value",
            |v| {
                let value = "v".repeat(64);
                set(v, "/spec/affinity", json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "zone", "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["ok", value]}]}}]}}))
            },
            Reject("spec.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].values[1]",
                   "must be no more than 63 characters")
        ),
        case!(
            "hostile: a 254-character prefix",
            |v| {
                let key = format!("{}/x", "p".repeat(254));
                set(v, "/spec/topologySpreadConstraints", json!([
                    {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule"}]))
            },
            Reject("spec.topologySpreadConstraints[0].topologyKey",
                   "prefix part must be no more than 253 characters")
        ),
        case!(
            "hostile: control characters are quoted as Go quotes them",
            |v| set(v, "/spec/topologySpreadConstraints", json!([
                {"maxSkew": 1, "topologyKey": "a\n\"b", "whenUnsatisfiable": "<x>"}])),
            Reject("spec.topologySpreadConstraints[0].whenUnsatisfiable",
                   "Unsupported value: \"\\u003cx\\u003e\"")
        ),
        case!(
            "hostile: a newline in a topology key",
            |v| set(v, "/spec/topologySpreadConstraints", json!([
                {"maxSkew": 1, "topologyKey": "a\n\"b", "whenUnsatisfiable": "DoNotSchedule"}])),
            Reject("spec.topologySpreadConstraints[0].topologyKey",
                   "Invalid value: \"a\\n\\\"b\": name part must consist of")
        ),
    ]);
}

/// Large lists: every item is checked, and the duplicate rule stays linear (KubeVirt compares
/// every pair).
#[test]
fn affinity_huge_lists() {
    let mut v = admitters::base();
    let constraints: Vec<Value> = (0..20_000)
        .map(|i| json!({"maxSkew": 1, "topologyKey": format!("k{}", i % 10_000), "whenUnsatisfiable": "DoNotSchedule"}))
        .collect();
    set(
        &mut v,
        "/spec/topologySpreadConstraints",
        Value::Array(constraints),
    );
    let exprs: Vec<Value> = (0..20_000)
        .map(|_| json!({"key": "a", "operator": "In"}))
        .collect();
    set(
        &mut v,
        "/spec/affinity",
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}),
    );
    let mut c = admitters::Case::new("huge", v);
    c.user = None;
    c.offline = true;
    let errs = c.run().expect_err("refused");
    let dups = errs
        .iter()
        .filter(|e| e.field.ends_with("{topologyKey, whenUnsatisfiable}"))
        .count();
    assert_eq!(dups, 10_000, "the first of each pair is the duplicate");
    assert!(errs
        .iter()
        .any(|e| e.field == "spec.topologySpreadConstraints[0].{topologyKey, whenUnsatisfiable}"));
    assert!(!errs.iter().any(
        |e| e.field == "spec.topologySpreadConstraints[10000].{topologyKey, whenUnsatisfiable}"
    ));
    let values = errs
        .iter()
        .filter(|e| {
            e.message
                .contains("must be specified when `operator` is 'In' or 'NotIn'")
        })
        .count();
    assert_eq!(values, 20_000);
}

// ---- NVIDIA Grace passthrough (grace_io_virtualization_test.go) ----

const GRACE: &str = "nvidia.com/grace-gpu";

fn permit(c: &mut kubevirt_api::validation::ValidationConfig, selector: &str, gates: &[&str]) {
    c.permitted_pci_host_devices =
        vec![
            serde_json::from_value(json!({"pciVendorSelector": selector, "resourceName": GRACE}))
                .expect("a PciHostDevice"),
        ];
    c.feature_gates = gates.iter().map(|g| g.to_string()).collect();
}
const ALL: &[&str] = &["GraceIOVirtualization", "PCINUMAAwareTopology", "IOMMUFD"];

/// KubeVirt's `newGraceSpec`: arm64, machine `virt`, dedicated CPUs, a Grace GPU.
fn grace_spec(v: &mut Value) {
    set(v, "/spec/architecture", json!("arm64"));
    set(v, "/spec/domain/machine", json!({"type": "virt"}));
    set(
        v,
        "/spec/domain/cpu",
        json!({"dedicatedCpuPlacement": true, "cores": 1}),
    );
    set(
        v,
        "/spec/domain/devices/gpus",
        json!([{"name": "gpu1", "deviceName": GRACE}]),
    );
}

/// The Grace causes of admitting the edited VMI under `cfg` (other rules, such as our refusal
/// of arm64, are left out).
fn grace_causes(
    cfg: fn(&mut kubevirt_api::validation::ValidationConfig),
    edit: fn(&mut Value),
) -> Vec<(String, String)> {
    let c = admitters::vmi_case("grace", cfg, edit, Accept);
    c.run()
        .err()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.message.contains("GraceIOVirtualization") || e.message.contains("pciVendorSelector")
        })
        .map(|e| (e.field, e.message))
        .collect()
}

#[test]
fn grace_io_virtualization() {
    let only = |got: Vec<(String, String)>, field: &str, part: &str| {
        assert!(
            got.len() == 1 && got[0].0 == field && got[0].1.contains(part),
            "want {field} {part:?}, got {got:?}"
        );
    };
    assert_eq!(
        grace_causes(|c| permit(c, "10DE:2342", ALL), grace_spec),
        vec![],
        "the static baseline"
    );
    assert_eq!(
        grace_causes(
            |c| permit(c, "10DE:2342", ALL),
            |v| {
                grace_spec(v);
                set(v, "/spec/domain/machine/type", json!("virt-6.2"))
            }
        ),
        vec![],
        "a versioned virt machine type"
    );
    assert_eq!(
        grace_causes(
            |c| permit(c, "0x10de:0x2941", ALL),
            |v| {
                grace_spec(v);
                set(v, "/spec/domain/devices/gpus", json!([]));
                set(
                    v,
                    "/spec/domain/devices/hostDevices",
                    json!([{"name": "hostdev1", "deviceName": GRACE}]),
                );
            }
        ),
        vec![],
        "a Grace host device (selector in another case, with 0x)"
    );
    only(grace_causes(|c| permit(c, "10DE:2342", &["PCINUMAAwareTopology"]), grace_spec),
        "spec.domain.devices.gpus[0].deviceName", "GraceIOVirtualization feature gate must be enabled for NVIDIA Grace GPU passthrough resource \"nvidia.com/grace-gpu\"");
    only(
        grace_causes(
            |c| permit(c, "10DE:2342", &["GraceIOVirtualization", "IOMMUFD"]),
            grace_spec,
        ),
        "spec.domain.devices",
        "PCINUMAAwareTopology feature gate must be enabled when GraceIOVirtualization is used",
    );
    only(
        grace_causes(
            |c| permit(c, "10DE:2342", ALL),
            |v| {
                grace_spec(v);
                set(v, "/spec/architecture", json!("amd64"))
            },
        ),
        "spec.architecture",
        "GraceIOVirtualization requires arm64 architecture",
    );
    only(
        grace_causes(
            |c| permit(c, "10DE:2342", ALL),
            |v| {
                grace_spec(v);
                set(v, "/spec/domain/machine/type", json!("q35"))
            },
        ),
        "spec.domain.machine.type",
        "GraceIOVirtualization requires \"virt\" machine type",
    );
    only(
        grace_causes(
            |c| permit(c, "10DE:2342", ALL),
            |v| {
                grace_spec(v);
                set(v, "/spec/domain/cpu/dedicatedCpuPlacement", json!(false))
            },
        ),
        "spec.domain.cpu.dedicatedCpuPlacement",
        "GraceIOVirtualization requires dedicated CPU placement",
    );
    only(
        grace_causes(
            |c| {
                permit(
                    c,
                    "10DE:2342",
                    &["GraceIOVirtualization", "PCINUMAAwareTopology"],
                )
            },
            grace_spec,
        ),
        "spec.domain.devices",
        "IOMMUFD feature gate must be enabled when GraceIOVirtualization is used",
    );
    only(
        grace_causes(
            |c| permit(c, "10DE:2342", ALL),
            |v| {
                grace_spec(v);
                set(
                    v,
                    "/metadata/annotations",
                    json!({"kubevirt.io/placePCIDevicesOnRootComplex": "true"}),
                )
            },
        ),
        "metadata.annotations[kubevirt.io/placePCIDevicesOnRootComplex]",
        "GraceIOVirtualization is not compatible with placing PCI devices on the root complex",
    );
    only(
        grace_causes(
            |c| permit(c, "10DE:2342", ALL),
            |v| {
                grace_spec(v);
                set(
                    v,
                    "/metadata/annotations",
                    json!({"kubevirt.io/disablePCIHole64": "true"}),
                )
            },
        ),
        "metadata.annotations[kubevirt.io/disablePCIHole64]",
        "GraceIOVirtualization requires the 64-bit PCI hole",
    );
    assert_eq!(
        grace_causes(
            |c| permit(c, "10DE:2342", ALL),
            |v| {
                grace_spec(v);
                set(
                    v,
                    "/spec/domain/devices/gpus",
                    json!([{"name": "gpu1", "claimName": "claim1", "requestName": "gpu"}]),
                );
            }
        ),
        vec![],
        "DRA claim requests are not Grace PCI devices"
    );
    only(grace_causes(|c| permit(c, "10DE:*", ALL), grace_spec),
        "spec.domain.devices.gpus[0].deviceName", "GraceIOVirtualization requires an exact pciVendorSelector for NVIDIA PCI host device resource \"nvidia.com/grace-gpu\"");
    assert_eq!(
        grace_causes(|c| permit(c, "10DE:2330", ALL), grace_spec),
        vec![],
        "a non-Grace NVIDIA selector"
    );
    assert_eq!(
        grace_causes(|c| permit(c, "10DE:2342:1", ALL), grace_spec),
        vec![],
        "hostile: a malformed selector is no Grace one"
    );
    assert_eq!(
        grace_causes(
            |c| permit(c, "10DE:2342", &[]),
            |v| {
                set(
                    v,
                    "/metadata/annotations",
                    json!({"kubevirt.io/placePCIDevicesOnRootComplex": "true"}),
                );
            }
        ),
        vec![],
        "the annotations without a Grace device"
    );
    // "runs as part of the VMI spec validator": a minimal VMI with a Grace GPU, no gates.
    only(
        grace_causes(
            |c| permit(c, "10DE:2342", &[]),
            |v| {
                set(
                    v,
                    "/spec/domain/devices/gpus",
                    json!([{"name": "gpu1", "deviceName": GRACE}]),
                )
            },
        ),
        "spec.domain.devices.gpus[0].deviceName",
        "GraceIOVirtualization feature gate must be enabled",
    );
}
