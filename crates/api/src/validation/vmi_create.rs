//! The rules of KubeVirt's VMI-create admitter (pkg/virt-api/webhooks/validating-webhook/
//! admitters/vmi-create-admitter.go) and the webhooks it calls for Hyper-V and the amd64
//! architecture (pkg/virt-api/webhooks/hyperv.go, amd64.go) that the other modules do not
//! cover, in the order KubeVirt runs them. Messages and field paths are KubeVirt's.

use super::ValidationConfig;
use crate::field::{CauseType, FieldError, Path};
use crate::names;
use crate::quantity::Quantity;
use crate::VirtualMachineInstanceSpec;
use std::collections::BTreeMap;

/// KubeVirt's `hooks.HookSidecarListAnnotationName`.
pub const SIDECAR_ANNOTATION: &str = "hooks.kubevirt.io/hookSidecars";
/// KubeVirt's `v1.IgnitionAnnotation`.
pub const IGNITION_ANNOTATION: &str = "kubevirt.io/ignitiondata";

/// `ValidateVirtualMachineInstanceMetadata`: annotations that need a feature gate, on a VMI's
/// metadata (`field` = `metadata`) or a VM template's (`spec.template.metadata`).
pub(crate) fn validate_metadata(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    field: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let set = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .is_some_and(|v| !v.is_empty())
    };
    let at = field.child("annotations");
    if set(IGNITION_ANNOTATION) && !cfg.gate("ExperimentalIgnitionSupport") {
        errs.push(FieldError::invalid(
            at.clone(),
            format!("ExperimentalIgnitionSupport feature gate is not enabled in kubevirt-config, invalid entry {at}.{IGNITION_ANNOTATION}"),
        ));
    }
    if set(SIDECAR_ANNOTATION) && !cfg.gate("Sidecar") {
        errs.push(FieldError::invalid(
            at.clone(),
            format!("sidecar feature gate is not enabled in kubevirt-config, invalid entry {at}.{SIDECAR_ANNOTATION}"),
        ));
    }
}

/// KubeVirt's `featuregate.ValidateFeatureGates`: a discontinued gate still listed in
/// `featureGates` whose API the spec uses (the `passt` and `macvtap` bindings). KubeVirt runs
/// it on creation in the VMI and VMI replica set admitters (here the VMI's creation rules also
/// run on updates).
pub fn validate_feature_gates(
    spec: &VirtualMachineInstanceSpec,
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
    const DISCONTINUED: &[(&str, &str)] = &[
        (
            "Passt",
            "Passt network binding is discontinued since v1.3. Please refer to Kubevirt user guide for alternatives.",
        ),
        (
            "Macvtap",
            "Macvtap network binding is discontinued since v1.3. Please refer to Kubevirt user guide for alternatives.",
        ),
    ];
    let interfaces = spec
        .domain
        .devices
        .interfaces
        .as_deref()
        .unwrap_or_default();
    let mut errs = Vec::new();
    for gate in &cfg.feature_gates {
        let Some((_, message)) = DISCONTINUED.iter().find(|(g, _)| g == gate) else {
            continue;
        };
        let used = interfaces.iter().any(|i| match gate.as_str() {
            "Passt" => i.passt.is_some(),
            _ => i.macvtap.is_some(),
        });
        if used {
            errs.push(FieldError::new(
                CauseType::FieldValueNotSupported,
                "",
                *message,
            ));
        }
    }
    errs
}

fn quantity(spec: &VirtualMachineInstanceSpec, which: &str, key: &str) -> Option<Quantity> {
    let res = spec.domain.resources.as_ref()?;
    let map = if which == "requests" {
        res.requests.as_ref()
    } else {
        res.limits.as_ref()
    }?;
    map.get(key).and_then(|q| Quantity::from_k8s(q).ok())
}

/// `Quantity.Value()` of a request or limit, 0 when unset.
fn value(spec: &VirtualMachineInstanceSpec, which: &str, key: &str) -> i128 {
    quantity(spec, which, key).map(|q| q.value()).unwrap_or(0)
}

/// `hwutil.GetNumberOfVCPUs`: sockets × cores × threads, unset counting as 1, 0 without CPU.
fn vcpus(spec: &VirtualMachineInstanceSpec) -> i128 {
    let Some(cpu) = spec.domain.cpu.as_ref() else {
        return 0;
    };
    let f = |v: Option<i64>| i128::from(v.filter(|v| *v != 0).unwrap_or(1));
    f(cpu.sockets) * f(cpu.cores) * f(cpu.threads)
}

/// Everything of `ValidateVirtualMachineInstanceSpec` not covered elsewhere, then the
/// Hyper-V and per-architecture webhooks.
pub(super) fn validate_spec(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let domain = root.child("domain");
    let cpu_p = domain.child("cpu");
    // Hostname and subdomain.
    if let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        if let Some(e) = names::dns1123_label(h) {
            let p = root.child("hostname");
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} does not conform to the kubernetes DNS_LABEL rules : {e}"),
            ));
        }
    }
    if let Some(s) = spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        if let Some(e) = names::dns1123_subdomain(s) {
            let p = root.child("subdomain");
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} does not conform to the kubernetes DNS_SUBDOMAIN rules : {e}"),
            ));
        }
    }
    validate_acpi(spec, root, errs);
    validate_cpu(spec, root, cfg, errs);
    super::affinity::validate(spec, root, errs);
    // Start strategy.
    if let Some(ss) = spec.start_strategy.as_deref() {
        let p = root.child("startStrategy");
        if ss != "Paused" {
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} is set with an unrecognized option: {ss}"),
            ));
        } else if spec.liveness_probe.is_some() {
            errs.push(FieldError::invalid(
                p.clone(),
                format!("either {p} or {} should be provided.Pausing VMI with LivenessProbe is not supported", root.child("livenessProbe")),
            ));
        }
    }
    // Realtime.
    if let Some(cpu) = spec.domain.cpu.as_ref().filter(|c| c.realtime.is_some()) {
        if cpu.dedicated_cpu_placement != Some(true) {
            errs.push(FieldError::required(
                cpu_p.child("dedicatedCpuPlacement"),
                format!(
                    "{} must be set to true when {} is used",
                    cpu_p.child("dedicatedCpuPlacement"),
                    cpu_p.child("realtime")
                ),
            ));
        }
        if cpu
            .numa
            .as_ref()
            .and_then(|n| n.guest_mapping_passthrough.as_ref())
            .is_none()
        {
            let np = cpu_p.child("numa").child("guestMappingPassthrough");
            errs.push(FieldError::required(
                np.clone(),
                format!(
                    "{np} must be defined when {} is used",
                    cpu_p.child("realtime")
                ),
            ));
        }
    }
    // Input devices.
    for (i, input) in spec.domain.devices.inputs.iter().flatten().enumerate() {
        let ip = domain.child("devices").child("inputs").index(i);
        if !matches!(input.bus.as_deref().unwrap_or(""), "" | "virtio" | "usb") {
            errs.push(FieldError::invalid(
                ip.child("bus"),
                "Input device can have only virtio or usb bus.",
            ));
        }
        if input.r#type != "tablet" {
            errs.push(FieldError::invalid(
                ip.child("type"),
                "Input device can have only tablet type.",
            ));
        }
    }
    // IOThreads policy.
    if let Some(policy) = spec.domain.io_threads_policy.as_deref() {
        if !matches!(policy, "shared" | "auto" | "supplementalPool") {
            errs.push(FieldError::invalid(
                domain.child("ioThreadsPolicy"),
                format!("Invalid IOThreadsPolicy ({policy})"),
            ));
        }
        let count = spec
            .domain
            .io_threads
            .as_ref()
            .and_then(|t| t.supplemental_pool_thread_count);
        if policy == "supplementalPool" && count.is_none_or(|c| c < 1) {
            errs.push(FieldError::invalid(
                domain.child("ioThreads").child("count"),
                "the number of iothreads needs to be set and positive for the dedicated policy",
            ));
        }
    }
    validate_probes(spec, root, errs);
    validate_kernel_boot(spec, &domain, errs);
    validate_access_credentials(spec, root, errs);
    validate_dns(spec, root, errs);
    // Eviction strategy.
    if let Some(es) = spec.eviction_strategy.as_deref() {
        if !matches!(
            es,
            "LiveMigrate" | "LiveMigrateIfPossible" | "None" | "External"
        ) {
            let p = root.child("evictionStrategy");
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} is set with an unrecognized option: {es}"),
            ));
        }
    }
    validate_devices(spec, root, cfg, errs);
    // Memory: reservedOverhead needs its gate.
    if spec
        .domain
        .memory
        .as_ref()
        .is_some_and(|m| m.reserved_overhead.is_some())
        && !cfg.gate("ReservedOverheadMemlock")
    {
        errs.push(FieldError::invalid(
            domain.child("memory").child("reservedOverhead"),
            "Reserved overhead memlock feature gate is not enabled in kubevirt-config",
        ));
    }
    if spec.domain.reboot_policy.is_some() && !cfg.gate("RebootPolicy") {
        errs.push(FieldError::invalid(
            domain.child("rebootPolicy"),
            "RebootPolicy is specified but the RebootPolicy feature gate is not enabled",
        ));
    }
    // Service account name.
    if let Some(sa) = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        let p = root.child("serviceAccountName");
        if let Some(e) = names::dns1123_subdomain(sa) {
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} is not a valid service account name: {e}"),
            ));
        }
        if let Some(other) = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.service_account.as_ref())
            .map(|s| s.service_account_name.as_deref().unwrap_or(""))
            .find(|n| *n != sa)
        {
            errs.push(FieldError::invalid(
                p,
                format!("spec.serviceAccountName {sa:?} and serviceAccount volume {other:?} must reference the same service account"),
            ));
        }
    }
    validate_dra(spec, root, cfg, errs);
    super::grace_io::validate_spec(spec, root, cfg, errs);
    validate_launch_security(spec, root, cfg, errs);
    validate_hyperv(spec, root, errs);
    validate_arch(spec, root, errs);
}

fn validate_acpi(spec: &VirtualMachineInstanceSpec, root: &Path, errs: &mut Vec<FieldError>) {
    let Some(acpi) = spec.domain.firmware.as_ref().and_then(|f| f.acpi.as_ref()) else {
        return;
    };
    // KubeVirt calls this with `spec.acpi`, not `spec.domain.firmware.acpi`.
    let p = root.child("acpi");
    let slic = acpi.slic_name_ref.as_deref().unwrap_or("");
    let msdm = acpi.msdm_name_ref.as_deref().unwrap_or("");
    if slic.is_empty() && msdm.is_empty() {
        errs.push(FieldError::invalid(
            p,
            "ACPI was set but no SLIC nor MSDM volume reference was set",
        ));
        return;
    }
    for (name, field) in [(slic, "slicNameRef"), (msdm, "msdmNameRef")] {
        if name.is_empty() {
            continue;
        }
        match spec.volumes.iter().flatten().find(|v| v.name == name) {
            Some(v) if v.secret.is_some() => {}
            Some(_) => errs.push(FieldError::invalid(
                p.child(field),
                format!("{p} refers to Volume of unsupported type."),
            )),
            None => errs.push(FieldError::invalid(
                p.child(field),
                format!("{p} does not have a matching Volume."),
            )),
        }
    }
}

fn validate_cpu(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let Some(cpu) = spec.domain.cpu.as_ref() else {
        return;
    };
    let domain = root.child("domain");
    let cpu_p = domain.child("cpu");
    let res_p = domain.child("resources");
    let req_cpu_p = res_p.child("requests").child("cpu");
    let lim_cpu_p = res_p.child("limits").child("cpu");
    let dedicated_p = cpu_p.child("dedicatedCpuPlacement");
    let dedicated = cpu.dedicated_cpu_placement == Some(true);
    if dedicated {
        // validateMemoryIsProvided.
        let mem = spec.domain.memory.as_ref();
        let provided = value(spec, "limits", "memory") != 0
            || value(spec, "requests", "memory") != 0
            || mem.is_some_and(|m| m.hugepages.is_some())
            || mem
                .and_then(|m| m.guest.as_ref())
                .is_some_and(|g| Quantity::from_k8s(g).is_ok_and(|q| !q.is_zero()));
        if !provided {
            errs.push(FieldError::invalid(
                res_p.child("limits").child("memory"),
                format!(
                    "{}, {}, {} or {} should be provided",
                    res_p.child("requests").child("memory"),
                    res_p.child("limits").child("memory"),
                    domain.child("memory").child("hugepages"),
                    domain.child("memory").child("guest")
                ),
            ));
        }
        let req = quantity(spec, "requests", "cpu");
        let lim = quantity(spec, "limits", "cpu");
        if let Some(q) = req.filter(|q| q.value() > 0 && q.value() * 1000 != q.milli()) {
            let _ = q;
            errs.push(FieldError::invalid(
                req_cpu_p.clone(),
                "provided resources CPU requests must be an interger",
            ));
        }
        if let Some(q) = lim.filter(|q| q.value() > 0 && q.value() * 1000 != q.milli()) {
            let _ = q;
            errs.push(FieldError::invalid(
                lim_cpu_p.clone(),
                "provided resources CPU limits must be an interger",
            ));
        }
        let (rm, lm) = (
            value(spec, "requests", "memory"),
            value(spec, "limits", "memory"),
        );
        if rm > 0 && lm > 0 && rm != lm {
            let p = res_p.child("requests").child("memory");
            errs.push(FieldError::invalid(
                p.clone(),
                format!(
                    "{p} must be equal to {}",
                    res_p.child("limits").child("memory")
                ),
            ));
        }
        let (rc, lc, n) = (
            value(spec, "requests", "cpu"),
            value(spec, "limits", "cpu"),
            vcpus(spec),
        );
        let cores_p = cpu_p.child("cores");
        if rc == 0 && lc == 0 && n == 0 {
            errs.push(FieldError::invalid(
                dedicated_p.clone(),
                format!("either {req_cpu_p} or {lim_cpu_p} or {cores_p} must be provided when DedicatedCPUPlacement is true "),
            ));
        }
        if rc > 0 && lc > 0 && rc != lc {
            errs.push(FieldError::invalid(
                dedicated_p.clone(),
                format!(
                    "{req_cpu_p} or {lim_cpu_p} must be equal when DedicatedCPUPlacement is true "
                ),
            ));
        }
        if (rc > 0 || lc > 0) && n > 0 && rc != n && lc != n {
            errs.push(FieldError::invalid(
                dedicated_p.clone(),
                format!("{req_cpu_p} or {lim_cpu_p} must not be provided at the same time with {cores_p} when DedicatedCPUPlacement is true "),
            ));
        }
        let threads = cpu.threads.unwrap_or(0);
        let arch = spec.architecture.as_deref().unwrap_or("amd64");
        if threads > 1 && arch == "arm64" {
            errs.push(FieldError::invalid(
                root.child("architecture"),
                format!(
                    "threads must not be greater than 1 at {} (got {threads}) when {} is arm64",
                    cpu_p.child("threads"),
                    root.child("architecture")
                ),
            ));
        }
        if threads > 2 {
            errs.push(FieldError::invalid(
                dedicated_p.clone(),
                format!("Not more than two threads must be provided at {} (got {threads}) when DedicatedCPUPlacement is true", cpu_p.child("threads")),
            ));
        }
    }
    // NUMA (the NUMA gate is GA).
    if cpu
        .numa
        .as_ref()
        .and_then(|n| n.guest_mapping_passthrough.as_ref())
        .is_some()
    {
        let np = cpu_p.child("numa").child("guestMappingPassthrough");
        if !cfg.gate("NUMA") {
            errs.push(FieldError::invalid(
                np.clone(),
                format!("NUMA feature gate is not enabled in kubevirt-config, invalid entry {np}"),
            ));
        }
        if !dedicated {
            errs.push(FieldError::invalid(
                np.clone(),
                format!(
                    "{dedicated_p} must be set to true when NUMA topology strategy is set in {np}"
                ),
            ));
        }
        if spec
            .domain
            .memory
            .as_ref()
            .and_then(|m| m.hugepages.as_ref())
            .is_none()
        {
            errs.push(FieldError::invalid(
                np.clone(),
                format!(
                    "{} must be requested when NUMA topology strategy is set in {np}",
                    domain.child("memory").child("hugepages")
                ),
            ));
        }
    }
    if cpu.isolate_emulator_thread == Some(true) && !dedicated {
        errs.push(FieldError::invalid(
            cpu_p.child("isolateEmulatorThread"),
            "IsolateEmulatorThread should be only set in combination with DedicatedCPUPlacement",
        ));
    }
    for (i, f) in cpu.features.iter().flatten().enumerate() {
        let policy = f.policy.as_deref().unwrap_or("");
        if !matches!(
            policy,
            "" | "force" | "require" | "optional" | "disable" | "forbid"
        ) {
            errs.push(FieldError::not_supported(
                cpu_p.child("features").index(i).child("policy"),
                format!(
                    "CPU feature {} uses policy {policy} that is not supported.",
                    f.name
                ),
            ));
        }
    }
    let max_sockets = cpu.max_sockets.unwrap_or(0);
    if max_sockets != 0 && cpu.sockets.unwrap_or(0) > max_sockets {
        errs.push(FieldError::invalid(
            cpu_p.child("sockets"),
            "Number of sockets in CPU topology is greater than the maximum sockets allowed",
        ));
    }
}

fn validate_probes(spec: &VirtualMachineInstanceSpec, root: &Path, errs: &mut Vec<FieldError>) {
    let pod_network = spec.networks.iter().flatten().any(|n| n.pod.is_some());
    for (name, probe) in [
        ("readinessProbe", spec.readiness_probe.as_ref()),
        ("livenessProbe", spec.liveness_probe.as_ref()),
    ] {
        let Some(probe) = probe else {
            continue;
        };
        let p = root.child(name);
        let handlers = [
            probe.http_get.is_some(),
            probe.tcp_socket.is_some(),
            probe.exec.is_some(),
            probe.guest_agent_ping.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if handlers > 1 {
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} must have exactly one probe type set"),
            ));
        }
        if handlers < 1 {
            errs.push(FieldError::required(
                p.clone(),
                format!(
                    "either {}, {} or {} must be set if a {p} is specified",
                    p.child("tcpSocket"),
                    p.child("exec"),
                    p.child("httpGet")
                ),
            ));
        }
        if !pod_network {
            for (set, field) in [
                (probe.http_get.is_some(), "httpGet"),
                (probe.tcp_socket.is_some(), "tcpSocket"),
            ] {
                if set {
                    let fp = p.child(field);
                    errs.push(FieldError::invalid(
                        fp.clone(),
                        format!("{fp} is only allowed if the Pod Network is attached"),
                    ));
                }
            }
        }
    }
}

fn validate_kernel_boot(
    spec: &VirtualMachineInstanceSpec,
    domain: &Path,
    errs: &mut Vec<FieldError>,
) {
    let Some(kb) = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
    else {
        return;
    };
    let kp = domain.child("firmware").child("kernelBoot");
    let Some(c) = &kb.container else {
        if kb.kernel_args.as_deref().is_some_and(|a| !a.is_empty()) {
            errs.push(FieldError::invalid(
                kp.child("kernelArgs"),
                "kernel arguments cannot be provided without an external kernel",
            ));
        }
        return;
    };
    let cp = kp.child("container");
    if c.image.is_empty() {
        errs.push(FieldError::required(
            cp.child("image"),
            format!("{cp} must be defined with an image"),
        ));
    }
    let kernel = c.kernel_path.as_deref().unwrap_or("");
    let initrd = c.initrd_path.as_deref().unwrap_or("");
    if kernel.is_empty() && initrd.is_empty() {
        errs.push(FieldError::required(
            cp.clone(),
            format!(
                "{cp} must be defined with at least one of the following: kernelPath, initrdPath"
            ),
        ));
    }
    if !kernel.is_empty() {
        super::storage::validate_image_path(&cp.child("kernelPath"), kernel, errs);
    }
    if !initrd.is_empty() {
        super::storage::validate_image_path(&cp.child("initrdPath"), initrd, errs);
    }
}

fn validate_access_credentials(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    errs: &mut Vec<FieldError>,
) {
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let no_cloud = volumes.iter().any(|v| v.cloud_init_no_cloud.is_some());
    let config_drive = volumes.iter().any(|v| v.cloud_init_config_drive.is_some());
    let acp = root.child("accessCredentials");
    for (idx, ac) in spec.access_credentials.iter().flatten().enumerate() {
        let p = acp.index(idx);
        let mut kinds = 0;
        if let Some(ssh) = &ac.ssh_public_key {
            kinds += 1;
            let sp = p.child("sshPublicKey");
            let pm = &ssh.propagation_method;
            let mut methods = 0;
            if pm.no_cloud.is_some() {
                methods += 1;
                if !no_cloud {
                    errs.push(FieldError::invalid(
                        sp.child("propagationMethod"),
                        format!("{p} requires a noCloud volume to exist when the noCloud propagationMethod is in use."),
                    ));
                }
            }
            if pm.config_drive.is_some() {
                methods += 1;
                if !config_drive {
                    errs.push(FieldError::invalid(
                        sp.child("propagationMethod"),
                        format!("{p} requires a configDrive volume to exist when the configDrive propagationMethod is in use."),
                    ));
                }
            }
            if let Some(qga) = &pm.qemu_guest_agent {
                methods += 1;
                if qga.users.is_empty() {
                    errs.push(FieldError::invalid(
                        sp.child("propagationMethod")
                            .child("qemuGuestAgent")
                            .child("users"),
                        format!("{p} requires at least one user to be present in the users list"),
                    ));
                }
            }
            if ssh.source.secret.is_none() {
                errs.push(FieldError::invalid(
                    sp.child("source"),
                    format!("{p} must have exactly one source set"),
                ));
            }
            if methods != 1 {
                errs.push(FieldError::invalid(
                    sp.child("propagationMethod"),
                    format!("{p} must have exactly one propagationMethod set"),
                ));
            }
        }
        if let Some(up) = &ac.user_password {
            kinds += 1;
            let upp = p.child("userPassword");
            if up.source.secret.is_none() {
                errs.push(FieldError::invalid(
                    upp.child("source"),
                    format!("{p} must have exactly one source set"),
                ));
            }
            if up.propagation_method.qemu_guest_agent.is_none() {
                errs.push(FieldError::invalid(
                    upp.child("propagationMethod"),
                    format!("{p} must have exactly one propagationMethod set"),
                ));
            }
        }
        if kinds != 1 {
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} must have exactly one access credential type set"),
            ));
        }
    }
}

/// Kubernetes' pod DNS rules as KubeVirt copies them (`validateDNSPolicy`,
/// `validatePodDNSConfig`), including KubeVirt's bare field names (`nameservers`).
fn validate_dns(spec: &VirtualMachineInstanceSpec, root: &Path, errs: &mut Vec<FieldError>) {
    let policy = spec.dns_policy.as_deref().unwrap_or("");
    if !matches!(
        policy,
        "" | "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None"
    ) {
        errs.push(FieldError::not_supported(
            root.child("dnsPolicy"),
            format!("DNSPolicy: {policy} is not supported, valid values: [ClusterFirstWithHostNet ClusterFirst Default None ]"),
        ));
    }
    let cp = root.child("dnsConfig");
    let config = spec.dns_config.as_ref();
    if policy == "None" {
        match config {
            None => {
                errs.push(FieldError::required(
                    cp,
                    "must provide `dnsConfig` when `dnsPolicy` is None",
                ));
                return;
            }
            Some(c) if c.nameservers.as_deref().unwrap_or_default().is_empty() => {
                errs.push(FieldError::required(
                    "nameservers",
                    "must provide at least one DNS nameserver when `dnsPolicy` is None",
                ));
                return;
            }
            _ => {}
        }
    }
    let Some(c) = config else {
        return;
    };
    let ns = c.nameservers.as_deref().unwrap_or_default();
    if ns.len() > 3 {
        errs.push(FieldError::invalid(
            "nameservers",
            format!("must not have more than 3 nameservers: [{}]", ns.join(" ")),
        ));
    }
    for n in ns {
        if n.parse::<std::net::IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                "nameservers",
                format!("must be valid IP address: {n}"),
            ));
        }
    }
    let searches = c.searches.as_deref().unwrap_or_default();
    if searches.len() > 6 {
        errs.push(FieldError::invalid(
            "searchDomains",
            "must not have more than 6 search paths",
        ));
    }
    if searches.join(" ").len() > 256 {
        errs.push(FieldError::invalid(
            "searchDomains",
            "must not have more than 256 characters (including spaces) in the search list",
        ));
    }
    for s in searches {
        if let Some(e) = names::dns1123_subdomain(s) {
            errs.push(FieldError::invalid("searchDomains", e));
        }
    }
    for o in c.options.iter().flatten() {
        if o.name.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::invalid(
                "options",
                "Option.Name must not be empty",
            ));
        }
    }
}

fn validate_devices(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let devices = &spec.domain.devices;
    let devices_p = root.child("domain").child("devices");
    // vGPU displays with ramfb (KubeVirt reports at `spec.GPUs`).
    let ramfbs = devices
        .gpus
        .iter()
        .flatten()
        .filter_map(|g| g.virtual_gpu_options.as_ref()?.display.as_ref())
        .filter(|d| {
            d.enabled.unwrap_or(true) && d.ram_fb.as_ref().is_none_or(|r| r.enabled == Some(true))
        })
        .count();
    if ramfbs > 1 {
        errs.push(FieldError::invalid(
            root.child("GPUs"),
            "configuring multiple displays with ramfb is not valid ",
        ));
    }
    if devices.host_devices.is_some() && !cfg.gate("HostDevices") {
        errs.push(FieldError::invalid(
            root.child("HostDevices"),
            "Host Devices feature gate is not enabled in kubevirt-config",
        ));
    }
    if let Some(sound) = &devices.sound {
        if !matches!(sound.model.as_deref().unwrap_or(""), "" | "ich9" | "ac97") {
            errs.push(FieldError::invalid(
                root.child("Sound"),
                "Sound device type is not supported. Options: 'ich9' or 'ac97'",
            ));
        }
        if sound.name.is_empty() {
            errs.push(FieldError::invalid(
                root.child("Sound"),
                "Sound device requires a name field.",
            ));
        }
    }
    if devices.autoattach_vsock == Some(true) && !cfg.gate("VSOCK") {
        errs.push(FieldError::invalid(
            devices_p.child("autoattachVSOCK"),
            "VSOCK feature gate is not enabled in kubevirt-config",
        ));
    }
    if devices.downward_metrics.is_some() && !cfg.gate("DownwardMetrics") {
        errs.push(FieldError::invalid(
            devices_p.child("downwardMetrics"),
            "downwardMetrics virtio serial is not allowed: DownwardMetrics feature gate is not enabled",
        ));
    }
    if devices.video.is_some() && devices.autoattach_graphics_device == Some(false) {
        errs.push(FieldError::invalid(
            root.child("video"),
            "Video configuration is not allowed when autoattachGraphicsDevice is set to false",
        ));
    }
    if let Some(panics) = devices.panic_devices.as_ref().filter(|p| !p.is_empty()) {
        let arch = spec.architecture.as_deref().unwrap_or("amd64");
        if arch == "s390x" {
            errs.push(FieldError::invalid(
                devices_p.child("panicDevices"),
                format!("custom panic devices are not supported on {arch} architecture"),
            ));
        }
        for (i, p) in panics.iter().enumerate() {
            if let Some(m) = p.model.as_deref() {
                if !matches!(m, "hyperv" | "isa" | "pvpanic") {
                    errs.push(FieldError::invalid(
                        devices_p.child("panicDevices").index(i).child("model"),
                        format!("invalid PanicDeviceModel({m})"),
                    ));
                }
            }
        }
    }
}

fn validate_launch_security(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let Some(ls) = spec.domain.launch_security.as_ref() else {
        return;
    };
    let arch = spec.architecture.as_deref().unwrap_or("amd64");
    let lp = root.child("launchSecurity");
    let before = errs.len();
    match arch {
        "amd64" => {
            let mut types = Vec::new();
            let mut gate = "";
            if ls.sev.is_some() {
                types.push("SEV");
                gate = "WorkloadEncryptionSEV";
            }
            if ls.snp.is_some() {
                types.push("SNP");
                gate = "WorkloadEncryptionSEV";
            }
            if ls.tdx.is_some() {
                types.push("TDX");
                gate = "WorkloadEncryptionTDX";
            }
            if types.len() != 1 {
                errs.push(FieldError::new(
                    CauseType::FieldValueForbidden,
                    lp.clone(),
                    "One and only one launchSecurity type can be set",
                ));
            } else if !cfg.gate(gate) {
                errs.push(FieldError::invalid(
                    lp.clone(),
                    format!("{gate} feature gate is not enabled in kubevirt-config"),
                ));
            } else {
                let kind = types[0];
                let smm = spec
                    .domain
                    .features
                    .as_ref()
                    .and_then(|f| f.smm.as_ref())
                    .is_some_and(|s| s.enabled.unwrap_or(true));
                if ls.tdx.is_some() && smm {
                    errs.push(FieldError::invalid(
                        lp.clone(),
                        "TDX does not work along with SMM",
                    ));
                }
                match spec
                    .domain
                    .firmware
                    .as_ref()
                    .and_then(|f| f.bootloader.as_ref())
                    .and_then(|b| b.efi.as_ref())
                {
                    None => errs.push(FieldError::invalid(
                        lp.clone(),
                        format!("{kind} requires OVMF (UEFI)"),
                    )),
                    Some(efi) => {
                        if (ls.sev.is_some() || ls.snp.is_some()) && efi.secure_boot.unwrap_or(true)
                        {
                            errs.push(FieldError::invalid(
                                lp.clone(),
                                format!("{kind} does not work along with SecureBoot"),
                            ));
                        }
                        if (ls.snp.is_some() || ls.tdx.is_some()) && efi.persistent == Some(true) {
                            errs.push(FieldError::invalid(
                                lp.clone(),
                                format!("{kind} does not work along with Persistent EFI variables"),
                            ));
                        }
                    }
                }
                if ls.sev.as_ref().is_some_and(|s| s.attestation.is_some())
                    && spec.start_strategy.as_deref() != Some("Paused")
                {
                    errs.push(FieldError::invalid(
                        lp.clone(),
                        "SEV attestation requires VMI StartStrategy 'Paused'",
                    ));
                }
                for iface in spec.domain.devices.interfaces.iter().flatten() {
                    if iface.boot_order.is_some() {
                        errs.push(FieldError::invalid(
                            lp.clone(),
                            format!("{kind} does not work with bootable NICs: {}", iface.name),
                        ));
                    }
                }
            }
        }
        "s390x" => {}
        _ => errs.push(FieldError::invalid(
            root.child("architecture"),
            format!("No launchSecurity support for architecture: {arch}"),
        )),
    }
    // Our rule, once KubeVirt's pass: guests run under plain QEMU, without SEV/SNP/TDX.
    if errs.len() == before {
        errs.push(FieldError::invalid(
            lp,
            "confidential computing (SEV, SNP, TDX, Secure Execution) is not supported by kubevirt-rs: remove spec.domain.launchSecurity",
        ));
    }
}

/// hyperv.go: features that need another one, eVMCS needing `vmx`, and Hyper-V features
/// together with Hyper-V passthrough. KubeVirt's defaulting turns on a requirement the user
/// left unset, so only an explicitly disabled requirement is an error.
fn validate_hyperv(spec: &VirtualMachineInstanceSpec, root: &Path, errs: &mut Vec<FieldError>) {
    let Some(features) = spec.domain.features.as_ref() else {
        return;
    };
    let hp = root.child("domain").child("features").child("hyperv");
    if features.hyperv.is_some() && features.hyperv_passthrough.is_some() {
        errs.push(FieldError::invalid(
            hp.clone(),
            "Cannot explicitly set hyperV features if HypervPassthrough is being used. Please use either HyperV or HypervPassthrough.",
        ));
    }
    let Some(h) = features.hyperv.as_ref() else {
        return;
    };
    let on = |e: Option<bool>| e == Some(true);
    let off = |e: Option<bool>| e == Some(false);
    let st = |f: &Option<crate::FeatureState>| f.as_ref().and_then(|f| f.enabled);
    let synic = st(&h.synic);
    let vpindex = st(&h.vpindex);
    let deps: [(&str, Option<bool>, &str, Option<bool>); 5] = [
        ("evmcs", st(&h.evmcs), "vapic", st(&h.vapic)),
        ("ipi", st(&h.ipi), "vpindex", vpindex),
        (
            "tlbflush",
            h.tlbflush.as_ref().and_then(|t| t.enabled),
            "vpindex",
            vpindex,
        ),
        (
            "synictimer",
            h.synictimer.as_ref().and_then(|t| t.enabled),
            "synic",
            synic,
        ),
        ("synic", synic, "vpindex", vpindex),
    ];
    for (feature, state, requires, req_state) in deps {
        if on(state) && off(req_state) {
            errs.push(FieldError::invalid(
                hp.child(feature),
                format!(
                    "'{}' requires '{}', which was disabled.",
                    hp.child(feature),
                    hp.child(requires)
                ),
            ));
        }
    }
    // eVMCS needs the vmx CPU feature with policy `require` (KubeVirt adds it if absent).
    let evmcs_on = h.evmcs.as_ref().is_some_and(|e| e.enabled != Some(false));
    if evmcs_on {
        for (i, f) in spec
            .domain
            .cpu
            .iter()
            .flat_map(|c| c.features.iter().flatten())
            .enumerate()
        {
            if f.name == "vmx" && f.policy.as_deref().unwrap_or("require") != "require" {
                errs.push(FieldError::invalid(
                    format!("spec.domain.cpu.features[{i}].policy"),
                    "vmx cpu feature has to be set to require policy",
                ));
            }
        }
    }
}

/// `ValidateVirtualMachineInstancePerArch`. We run amd64, arm64 and s390x guests (`crate::arch`).
fn validate_arch(spec: &VirtualMachineInstanceSpec, root: &Path, errs: &mut Vec<FieldError>) {
    // Defaulting sets the architecture; an unset one is the default, amd64.
    let arch = spec.architecture.as_deref().unwrap_or("amd64");
    let devices = &spec.domain.devices;
    let devices_p = root.child("domain").child("devices");
    match arch {
        "amd64" => {
            if let Some(w) = &devices.watchdog {
                if w.i6300esb.is_none() || w.diag288.is_some() {
                    errs.push(FieldError::not_supported(
                        devices_p.child("watchdog"),
                        "amd64 only supports I6300ESB watchdog device",
                    ));
                }
            }
            if let Some(v) = &devices.video {
                let t = v.r#type.as_deref().unwrap_or("");
                if !matches!(t, "vga" | "cirrus" | "virtio" | "ramfb" | "bochs") {
                    errs.push(FieldError::not_supported(
                        devices_p.child("video").child("type"),
                        format!("video model '{t}' is not supported on amd64 architecture"),
                    ));
                }
            }
        }
        "arm64" => crate::arch::validate_arm64(spec, root, errs),
        "s390x" => crate::arch::validate_s390x(spec, root, errs),
        _ => errs.push(FieldError::invalid(
            root.child("architecture"),
            crate::arch::unsupported_message(arch),
        )),
    }
}

/// A GPU or host device as the DRA admitter sees it: index, deviceName, claim and request.
type DraDevice<'a> = (usize, &'a str, Option<(&'a str, &'a str)>);

/// pkg/dra/admitter `validateCreationDRA`: resource claims, DRA vs device-plugin GPUs and host
/// devices, and claim/request pairs used once across GPUs, host devices and networks.
fn validate_dra(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let rcp = root.child("resourceClaims");
    let mut claim_names = std::collections::BTreeSet::new();
    for (i, rc) in spec.resource_claims.iter().flatten().enumerate() {
        let p = rcp.index(i);
        let np = p.child("name");
        if rc.name.is_empty() {
            errs.push(FieldError::required(
                np.clone(),
                format!("{np} is a required field"),
            ));
        } else if !claim_names.insert(rc.name.as_str()) {
            errs.push(FieldError::duplicate(
                np.clone(),
                format!("duplicate resourceClaims name {:?}", rc.name),
            ));
        } else if let Some(e) = names::dns1123_label(&rc.name) {
            errs.push(FieldError::invalid(
                np.clone(),
                format!("{np} does not conform to the kubernetes DNS_LABEL rules: {e}"),
            ));
        }
        match (&rc.resource_claim_name, &rc.resource_claim_template_name) {
            (Some(_), Some(_)) => errs.push(FieldError::invalid(
                p.clone(),
                "at most one of resourceClaimName or resourceClaimTemplateName may be specified",
            )),
            (None, None) => errs.push(FieldError::invalid(
                p.clone(),
                "must specify one of: resourceClaimName, resourceClaimTemplateName",
            )),
            _ => {}
        }
        for (field, v) in [
            ("resourceClaimName", &rc.resource_claim_name),
            (
                "resourceClaimTemplateName",
                &rc.resource_claim_template_name,
            ),
        ] {
            if let Some(e) = v.as_deref().and_then(names::dns1123_subdomain) {
                errs.push(FieldError::invalid(p.child(field), e));
            }
        }
    }
    let devices = &spec.domain.devices;
    let claim =
        |c: &'_ Option<String>, r: &'_ Option<String>| -> bool { c.is_some() || r.is_some() };
    let gpus: Vec<DraDevice> = devices
        .gpus
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, g)| {
            (
                i,
                g.device_name.as_deref().unwrap_or(""),
                claim(&g.claim_name, &g.request_name).then(|| {
                    (
                        g.claim_name.as_deref().unwrap_or(""),
                        g.request_name.as_deref().unwrap_or(""),
                    )
                }),
            )
        })
        .collect();
    let host_devices: Vec<DraDevice> = devices
        .host_devices
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, h)| {
            (
                i,
                h.device_name.as_deref().unwrap_or(""),
                claim(&h.claim_name, &h.request_name).then(|| {
                    (
                        h.claim_name.as_deref().unwrap_or(""),
                        h.request_name.as_deref().unwrap_or(""),
                    )
                }),
            )
        })
        .collect();
    let dev_p = root.child("domain").child("devices");
    let mut used_claims = std::collections::BTreeSet::new();
    let mut owners: BTreeMap<String, (&str, usize)> = BTreeMap::new();
    for (field, kind, gate, reject_mixed, devs) in [
        ("gpus", "GPU", "GPUsWithDRA", true, &gpus),
        (
            "hostDevices",
            "HostDevice",
            "HostDevicesWithDRA",
            false,
            &host_devices,
        ),
    ] {
        let fp = dev_p.child(field);
        let is_dra = |d: &DraDevice| d.1.is_empty() && d.2.is_some();
        let (dra, plain): (Vec<&DraDevice>, Vec<&DraDevice>) = devs.iter().partition(|d| is_dra(d));
        if reject_mixed && !dra.is_empty() && !plain.is_empty() {
            errs.push(FieldError::invalid(
                fp.clone(),
                format!("vmi.spec.domain.devices.{field} contains both DRA and non-DRA {kind}s; each {kind} must be either DRA or non-DRA"),
            ));
            continue;
        }
        for d in &plain {
            if d.1.is_empty() {
                errs.push(FieldError::required(
                    fp.clone(),
                    format!("vmi.spec.domain.devices.{field} contains {kind}s without deviceName or claimRequest; each {kind} must specify either a deviceName or a claimRequest"),
                ));
            } else if d.2.is_some() {
                errs.push(FieldError::invalid(
                    fp.clone(),
                    format!("vmi.spec.domain.devices.{field} contains {kind}s with both deviceName and claimRequest"),
                ));
            }
        }
        if !dra.is_empty() && !cfg.gate(gate) {
            errs.push(FieldError::invalid(
                fp.clone(),
                format!("vmi.spec.domain.devices.{field} contains DRA enabled {kind}s but feature gate is not enabled"),
            ));
            continue;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (idx, _, cr) in dra {
            let (c, r) = cr.unwrap_or(("", ""));
            let dp = fp.index(*idx);
            if c.is_empty() {
                errs.push(FieldError::required(
                    dp.child("claimName"),
                    format!("claimName is required for DRA {kind}"),
                ));
            }
            if r.is_empty() {
                errs.push(FieldError::required(
                    dp.child("requestName"),
                    format!("requestName is required for DRA {kind}"),
                ));
            }
            if c.is_empty() || r.is_empty() {
                continue;
            }
            used_claims.insert(c);
            let key = format!("{c}/{r}");
            if !seen.insert(key.clone()) {
                errs.push(FieldError::duplicate(
                    dp,
                    format!("duplicate claimName/requestName pair {key:?}"),
                ));
            } else if let Some((other, oi)) = owners.get(&key) {
                let label = if field == "gpus" {
                    "GPUs"
                } else {
                    "HostDevices"
                };
                errs.push(FieldError::duplicate(
                    dp,
                    format!("duplicate claimName/requestName pair {key:?} between {other}[{oi}] and {label}[{idx}]"),
                ));
            } else {
                owners.insert(
                    key,
                    (
                        if field == "gpus" {
                            "GPUs"
                        } else {
                            "HostDevices"
                        },
                        *idx,
                    ),
                );
            }
        }
    }
    if !used_claims.iter().all(|c| claim_names.contains(c)) {
        errs.push(FieldError::invalid(
            rcp,
            "vmi.spec.resourceClaims must specify all claims used in vmi.spec.domain.devices.gpus and vmi.spec.domain.devices.hostDevices",
        ));
    }
}
