//! Prometheus metrics: the process's one registry (built with `prometheus-client`), KubeVirt's
//! control-plane metrics computed on scrape, and the VMI phase-transition histograms.
//!
//! Every component registers its families here once; the API server's `/metrics` encodes the
//! registry in Prometheus' text format. Names, types, labels and help texts are KubeVirt's
//! (`docs/observability/metrics.md` in KubeVirt); the table of what is served is
//! `docs/observability.md`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex, MutexGuard};

/// The content type of [`encode`]'s output (Prometheus' text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric's label pairs.
pub type Labels = Vec<(&'static str, String)>;

/// A histogram family whose buckets are fixed by a function pointer.
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while registering leaves the registry as it was: keep serving it.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers a metric family under `name` (for a counter, without its `_total` suffix: the
/// encoder adds it).
/// `help` is KubeVirt's text as written, ending with its `.`: prometheus-client appends one of
/// its own, so it is given the text without.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    registry().register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

/// Registers a collector whose families are computed on each scrape.
pub fn register_collector(collector: Box<dyn Collector>) {
    registry().register_collector(collector);
}

/// Everything registered, in Prometheus' text format.
pub fn encode() -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry())?;
    Ok(out)
}

type Refresher = std::sync::Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

static REFRESHERS: LazyLock<Mutex<Vec<Refresher>>> = LazyLock::new(Default::default);

/// Registers work to do before each scrape is encoded (gathering what a collector reports,
/// e.g. the launchers' statistics); it should keep its own cache per scrape interval.
pub fn register_refresher(
    f: impl Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
) {
    REFRESHERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(std::sync::Arc::new(f));
}

/// Runs every refresher concurrently, for at most `budget`: a scrape never waits longer,
/// and a collector whose refresh did not finish reports what it had.
pub async fn refresh(budget: std::time::Duration) {
    let all: Vec<Refresher> = REFRESHERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let work = futures::future::join_all(all.iter().map(|f| f()));
    if tokio::time::timeout(budget, work).await.is_err() {
        tracing::debug!(?budget, "metrics refresh exceeded its budget");
    }
}

/// KubeVirt's buckets of the VMI phase-transition histograms (`PhaseTransitionTimeBuckets`):
/// 0.5 s to 1 h.
pub const PHASE_TRANSITION_BUCKETS: [f64; 18] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
    1200.0, 1800.0, 3600.0,
];

fn phase_histogram() -> Histogram {
    Histogram::new(PHASE_TRANSITION_BUCKETS)
}

/// KubeVirt's VMI phase-transition histograms (virt-controller's `perfscale_metrics.go`),
/// observed whenever a VMI is seen to change phase.
pub struct PhaseTransitions {
    /// `kubevirt_vmi_phase_transition_time_from_creation_seconds{phase}`.
    pub from_creation: HistogramFamily,
    /// `kubevirt_vmi_phase_transition_time_seconds{phase,last_phase}`.
    pub between: HistogramFamily,
    /// `kubevirt_vmi_phase_transition_time_from_deletion_seconds{phase}`.
    pub from_deletion: HistogramFamily,
}

/// The process's phase-transition histograms, registered on first use.
pub fn phase_transitions() -> &'static PhaseTransitions {
    static P: LazyLock<PhaseTransitions> = LazyLock::new(|| {
        let p = PhaseTransitions {
            from_creation: Family::new_with_constructor(phase_histogram),
            between: Family::new_with_constructor(phase_histogram),
            from_deletion: Family::new_with_constructor(phase_histogram),
        };
        register(
            "kubevirt_vmi_phase_transition_time_from_creation_seconds",
            "Histogram of VM phase transitions duration from creation time in seconds.",
            p.from_creation.clone(),
        );
        register(
            "kubevirt_vmi_phase_transition_time_seconds",
            "Histogram of VM phase transitions duration between different phases in seconds.",
            p.between.clone(),
        );
        register(
            "kubevirt_vmi_phase_transition_time_from_deletion_seconds",
            "Histogram of VM phase transitions duration from deletion time in seconds.",
            p.from_deletion.clone(),
        );
        p
    });
    &P
}

fn parse_time(v: &Value) -> Option<f64> {
    let ts: jiff::Timestamp = v.as_str()?.parse().ok()?;
    Some(ts.as_millisecond() as f64 / 1000.0)
}

/// The time `vmi` entered `phase`, from `status.phaseTransitionTimestamps`.
fn entered(vmi: &Value, phase: &str) -> Option<f64> {
    vmi["status"]["phaseTransitionTimestamps"]
        .as_array()?
        .iter()
        .find(|t| t["phase"].as_str() == Some(phase))
        .and_then(|t| parse_time(&t["phaseTransitionTimestamp"]))
}

impl PhaseTransitions {
    /// Observes `old` → `new` as KubeVirt's informer handlers do: nothing unless the phase
    /// changed; the time of the new phase is its `phaseTransitionTimestamps` entry, measured
    /// from the creation, from the old phase's entry (the creation when the old phase was
    /// unset) and, for a deleted VMI reaching a final phase, from the deletion.
    pub fn observe(&self, old: &Value, new: &Value) {
        let (Some(phase), old_phase) = (
            new["status"]["phase"].as_str().filter(|p| !p.is_empty()),
            old["status"]["phase"].as_str().unwrap_or_default(),
        ) else {
            return;
        };
        if phase == old_phase {
            return;
        }
        let Some(at) = entered(new, phase) else {
            return;
        };
        let created = parse_time(&new["metadata"]["creationTimestamp"]);
        let labels = vec![("phase", phase.to_string())];
        if let Some(c) = created {
            self.from_creation.get_or_create(&labels).observe(at - c);
        }
        let last = if old_phase.is_empty() {
            created
        } else {
            entered(new, old_phase)
        };
        if let Some(l) = last {
            let between = vec![
                ("phase", phase.to_string()),
                ("last_phase", old_phase.to_string()),
            ];
            self.between.get_or_create(&between).observe(at - l);
        }
        let deleted = parse_time(&new["metadata"]["deletionTimestamp"]);
        if let (Some(d), true) = (deleted, matches!(phase, "Succeeded" | "Failed")) {
            self.from_deletion.get_or_create(&labels).observe(at - d);
        }
    }
}

/// Follows every VMI and observes each phase change in [`phase_transitions`], as
/// virt-controller's informer handlers do. Keeps only each VMI's last phase; a VMI first seen
/// (at start or after a relist) is not a transition. Runs until the process ends.
pub async fn watch_vmi_phase_transitions(client: kube::Client) {
    use futures::StreamExt;
    use kube::runtime::watcher::{watcher, Config, Event};
    use kube::runtime::WatchStreamExt;
    // Registered before the first transition, so the families are listed from the start.
    phase_transitions();
    let api: kube::Api<kubevirt_api::VirtualMachineInstance> = kube::Api::all(client);
    let mut last: std::collections::HashMap<String, Value> = Default::default();
    let mut events = std::pin::pin!(watcher(api, Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        let vmi = match event {
            Ok(Event::Apply(vmi) | Event::InitApply(vmi)) => vmi,
            Ok(Event::Delete(vmi)) => {
                let uid = vmi.metadata.uid.unwrap_or_default();
                last.remove(&uid);
                continue;
            }
            Ok(Event::Init | Event::InitDone) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "watching VMIs for phase-transition metrics");
                continue;
            }
        };
        let new = match serde_json::to_value(&vmi) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "encoding a VMI for phase-transition metrics");
                continue;
            }
        };
        let uid = vmi.metadata.uid.clone().unwrap_or_default();
        let phase = new["status"]["phase"].clone();
        if let Some(old) = last.get(&uid) {
            phase_transitions().observe(old, &new);
        }
        last.insert(uid, serde_json::json!({"status": {"phase": phase}}));
    }
}

/// KubeVirt's control-plane readiness gauges (`kubevirt_virt_{controller,api}_ready_status`,
/// `kubevirt_virt_controller_leading_status`): 1 once the component runs in this process.
/// The handler's is [`handler_ready`], registered apart: a node agent exports it alone.
pub struct Components {
    pub controller_ready: Gauge,
    pub controller_leading: Gauge,
    pub api_ready: Gauge,
}

/// This process's component gauges, registered on first use.
pub fn components() -> &'static Components {
    static C: LazyLock<Components> = LazyLock::new(|| {
        let c = Components {
            controller_ready: Gauge::default(),
            controller_leading: Gauge::default(),
            api_ready: Gauge::default(),
        };
        register(
            "kubevirt_virt_controller_ready_status",
            "Indication for a virt-controller that is ready to take the lead.",
            c.controller_ready.clone(),
        );
        register(
            "kubevirt_virt_controller_leading_status",
            "Indication for an operating virt-controller.",
            c.controller_leading.clone(),
        );
        register(
            "kubevirt_virt_api_ready_status",
            "Indication for a virt-api server that is ready to serve requests.",
            c.api_ready.clone(),
        );
        c
    });
    &C
}

/// `kubevirt_virt_handler_ready_status`: 1 once this process's node agent registered its
/// Node; registered on first use, in the server (its own node) and in `kubevirt-rs node`.
pub fn handler_ready() -> &'static Gauge {
    static G: LazyLock<Gauge> = LazyLock::new(|| {
        let g = Gauge::default();
        register(
            "kubevirt_virt_handler_ready_status",
            "Indication for a virt-handler that is ready to serve requests.",
            g.clone(),
        );
        g
    });
    &G
}

/// One stored object as the control-plane metrics read it: its uid, its resourceVersion and its
/// JSON as stored. The JSON is parsed only when the object is new to the collector or its
/// version changed since the last scrape.
#[derive(Clone, Debug)]
pub struct Object {
    pub uid: String,
    pub version: u64,
    pub json: bytes::Bytes,
}

impl Object {
    /// An object from a JSON value (tests, and sources that hold values).
    pub fn from_value(uid: &str, version: u64, value: &Value) -> Object {
        Object {
            uid: uid.to_string(),
            version,
            json: bytes::Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        }
    }
}

/// The objects the control-plane metrics are computed from, as stored.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub vmis: Vec<Object>,
    pub vms: Vec<Object>,
    pub migrations: Vec<Object>,
}

/// KubeVirt's control-plane metrics (virt-controller's `vmistats`, `vmstats` and
/// `migrationstats` collectors), computed on each scrape from a [`Snapshot`] taken by
/// `source` — the API server's in-memory store in `kubevirt-rs server`, so a scrape costs a
/// pass over the objects and no QMP or API call. What each object contributes (its labels)
/// is kept from one scrape to the next by uid and resourceVersion, so a scrape parses only
/// the objects written since the previous one.
pub struct ControlPlane<F> {
    source: F,
    rows: Mutex<Rows>,
}

impl<F: Fn() -> Snapshot + Send + Sync + 'static> ControlPlane<F> {
    pub fn new(source: F) -> Self {
        ControlPlane {
            source,
            rows: Mutex::new(Rows::default()),
        }
    }
}

/// What one migration contributes.
#[derive(Debug)]
enum MigrationRow {
    Succeeded(Labels),
    Failed(Labels),
    InPhase(&'static str),
    Nothing,
}

/// Each object's contribution by uid, with the version it was computed from.
#[derive(Debug, Default)]
struct Rows {
    vmis: HashMap<String, (u64, Labels)>,
    vms: HashMap<String, (u64, Labels)>,
    migrations: HashMap<String, (u64, MigrationRow)>,
}

/// Brings `cache` to exactly `objects`: entries of objects whose version is unchanged are
/// kept, others are computed by `row` from the parsed JSON, gone objects are dropped.
fn refresh_rows<R>(
    cache: &mut HashMap<String, (u64, R)>,
    objects: &[Object],
    row: impl Fn(&Value) -> R,
) {
    let mut next = HashMap::with_capacity(objects.len());
    for o in objects {
        let entry = match cache.remove(&o.uid) {
            Some(e) if e.0 == o.version => e,
            _ => {
                let v: Value = serde_json::from_slice(&o.json).unwrap_or(Value::Null);
                (o.version, row(&v))
            }
        };
        next.insert(o.uid.clone(), entry);
    }
    *cache = next;
}

impl<F> std::fmt::Debug for ControlPlane<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlPlane")
    }
}

/// One family's samples.
struct Samples<'a> {
    name: &'static str,
    help: &'static str,
    rows: Vec<(&'a Labels, i64)>,
}

static NO_LABELS: Labels = Vec::new();

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

/// Pushes `key=value` unless the value is empty (KubeVirt's collectors drop empty labels).
fn push(labels: &mut Labels, key: &'static str, value: &str) {
    if !value.is_empty() {
        labels.push((key, value.to_string()));
    }
}

/// `vm.kubevirt.io/{os,workload,flavor}` annotations, and the instancetype and preference
/// names the VM controller records, as KubeVirt's `kubevirt_vmi_info`/`kubevirt_vm_info`.
fn system_labels(labels: &mut Labels, meta: &Value) {
    let ann = &meta["annotations"];
    for (key, ann_key) in [
        ("os", "vm.kubevirt.io/os"),
        ("workload", "vm.kubevirt.io/workload"),
        ("flavor", "vm.kubevirt.io/flavor"),
    ] {
        push(labels, key, ann[ann_key].as_str().unwrap_or_default());
    }
}

fn instancetype_labels(labels: &mut Labels, ann: &Value) {
    let it = ann["kubevirt.io/instancetype-name"]
        .as_str()
        .or(ann["kubevirt.io/cluster-instancetype-name"].as_str())
        .unwrap_or_default();
    push(labels, "instance_type", it);
    let pref = ann["kubevirt.io/preference-name"]
        .as_str()
        .or(ann["kubevirt.io/cluster-preference-name"].as_str())
        .unwrap_or_default();
    push(labels, "preference", pref);
}

/// KubeVirt's `status_group` of a VM's printableStatus (`getVMStatusGroup`).
pub fn vm_status_group(status: &str) -> &'static str {
    match status {
        "Provisioning" | "Starting" | "WaitingForVolumeBinding" => "starting",
        "Running" => "running",
        "Migrating" => "migrating",
        "Stopped" | "Paused" | "Stopping" | "Terminating" => "non_running",
        "CrashLoopBackOff" | "Unknown" | "ErrorUnschedulable" | "ErrImagePull"
        | "ImagePullBackOff" | "ErrorPvcNotFound" | "DataVolumeError" => "error",
        _ => "",
    }
}

/// `kubevirt_vmi_info`'s labels of one VMI.
fn vmi_row(vmi: &Value) -> Labels {
    let meta = &vmi["metadata"];
    let status = &vmi["status"];
    let mut l = Labels::new();
    push(&mut l, "node", str_at(status, &["nodeName"]));
    push(&mut l, "namespace", str_at(meta, &["namespace"]));
    push(&mut l, "name", str_at(meta, &["name"]));
    push(
        &mut l,
        "phase",
        &str_at(status, &["phase"]).to_ascii_lowercase(),
    );
    system_labels(&mut l, meta);
    instancetype_labels(&mut l, &meta["annotations"]);
    let os = &status["guestOSInfo"];
    push(
        &mut l,
        "guest_os_kernel_release",
        str_at(os, &["kernelRelease"]),
    );
    push(
        &mut l,
        "guest_os_machine",
        str_at(status, &["machine", "type"]),
    );
    push(&mut l, "guest_os_arch", str_at(os, &["machine"]));
    push(&mut l, "guest_os_name", str_at(os, &["name"]));
    push(&mut l, "guest_os_version_id", str_at(os, &["versionId"]));
    l
}

/// `kubevirt_vm_info`'s labels of one VM.
fn vm_row(vm: &Value) -> Labels {
    let meta = &vm["metadata"];
    let mut l = Labels::new();
    push(&mut l, "name", str_at(meta, &["name"]));
    push(&mut l, "namespace", str_at(meta, &["namespace"]));
    system_labels(&mut l, &vm["spec"]["template"]["metadata"]);
    push(
        &mut l,
        "machine_type",
        str_at(
            vm,
            &["spec", "template", "spec", "domain", "machine", "type"],
        ),
    );
    let spec = &vm["spec"];
    push(
        &mut l,
        "instance_type",
        str_at(spec, &["instancetype", "name"]),
    );
    push(&mut l, "preference", str_at(spec, &["preference", "name"]));
    let printable = str_at(vm, &["status", "printableStatus"]);
    push(&mut l, "status", &printable.to_ascii_lowercase());
    push(&mut l, "status_group", vm_status_group(printable));
    l
}

/// What one migration counts for, by its phase (KubeVirt's `migrationstats`).
fn migration_row(m: &Value) -> MigrationRow {
    let labels = || {
        vec![
            ("vmi", str_at(m, &["spec", "vmiName"]).to_string()),
            ("vmim", str_at(m, &["metadata", "name"]).to_string()),
            (
                "namespace",
                str_at(m, &["metadata", "namespace"]).to_string(),
            ),
        ]
    };
    match str_at(m, &["status", "phase"]) {
        "Pending" => MigrationRow::InPhase("pending"),
        "Scheduling" => MigrationRow::InPhase("scheduling"),
        "" => MigrationRow::InPhase("unset"),
        "Running" | "Scheduled" | "PreparingTarget" | "TargetReady" | "WaitingForSync"
        | "Synchronizing" => MigrationRow::InPhase("running"),
        "Succeeded" => MigrationRow::Succeeded(labels()),
        "Failed" => MigrationRow::Failed(labels()),
        _ => MigrationRow::Nothing,
    }
}

impl Rows {
    /// Brings the rows to `snapshot`, parsing only new or changed objects.
    fn refresh(&mut self, snapshot: &Snapshot) {
        refresh_rows(&mut self.vmis, &snapshot.vmis, vmi_row);
        refresh_rows(&mut self.vms, &snapshot.vms, vm_row);
        refresh_rows(&mut self.migrations, &snapshot.migrations, migration_row);
    }

    /// The families, rows in `snapshot`'s order (the store's: by namespace and name).
    fn families<'a>(&'a self, snapshot: &Snapshot) -> Vec<Samples<'a>> {
        let labels_of = |cache: &'a HashMap<String, (u64, Labels)>, objects: &[Object]| {
            objects
                .iter()
                .filter_map(|o| cache.get(&o.uid))
                .map(|(_, l)| (l, 1))
                .collect::<Vec<_>>()
        };
        let vmi_info = labels_of(&self.vmis, &snapshot.vmis);
        let vm_info = labels_of(&self.vms, &snapshot.vms);
        let (mut succeeded, mut failed) = (Vec::new(), Vec::new());
        let mut in_phase: BTreeMap<&'static str, i64> = BTreeMap::new();
        for o in &snapshot.migrations {
            match self.migrations.get(&o.uid).map(|(_, r)| r) {
                Some(MigrationRow::Succeeded(l)) => succeeded.push((l, 1)),
                Some(MigrationRow::Failed(l)) => failed.push((l, 1)),
                Some(MigrationRow::InPhase(bucket)) => *in_phase.entry(bucket).or_default() += 1,
                Some(MigrationRow::Nothing) | None => {}
            }
        }
        let count = |b: &str| vec![(&NO_LABELS, in_phase.get(b).copied().unwrap_or(0))];
        vec![
            Samples {
                name: "kubevirt_vmi_info",
                help: "Information about VirtualMachineInstances.",
                rows: vmi_info,
            },
            Samples {
                name: "kubevirt_vm_info",
                help: "Information about Virtual Machines.",
                rows: vm_info,
            },
            Samples {
                name: "kubevirt_vmi_migration_succeeded",
                help: "Indicates if the VMI migration succeeded.",
                rows: succeeded,
            },
            Samples {
                name: "kubevirt_vmi_migration_failed",
                help: "Indicates if the VMI migration failed.",
                rows: failed,
            },
            Samples {
                name: "kubevirt_vmi_migrations_in_pending_phase",
                help: "Number of current pending migrations.",
                rows: count("pending"),
            },
            Samples {
                name: "kubevirt_vmi_migrations_in_scheduling_phase",
                help: "Number of current scheduling migrations.",
                rows: count("scheduling"),
            },
            Samples {
                name: "kubevirt_vmi_migrations_in_unset_phase",
                help: "Number of current unset migrations. These are pending items the virt-controller hasn’t processed yet from the queue.",
                rows: count("unset"),
            },
            Samples {
                name: "kubevirt_vmi_migrations_in_running_phase",
                help: "Number of current running migrations.",
                rows: count("running"),
            },
        ]
    }
}

impl<F: Fn() -> Snapshot + Send + Sync + 'static> Collector for ControlPlane<F> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = (self.source)();
        // A panic while the lock was held left the rows as they were: still valid.
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.refresh(&snapshot);
        for family in rows.families(&snapshot) {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, MetricType::Gauge)?;
            for (labels, value) in &family.rows {
                ConstGauge::new(*value).encode(metric.encode_family(*labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Stored objects of `values`, each its own uid, at version 1.
    fn objects(values: Vec<Value>) -> Vec<Object> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Object::from_value(&format!("uid-{i}"), 1, v))
            .collect()
    }

    fn vmi(phase: &str, created: &str, entered: &[(&str, &str)]) -> Value {
        let ts: Vec<Value> = entered
            .iter()
            .map(|(p, t)| json!({"phase": p, "phaseTransitionTimestamp": t}))
            .collect();
        json!({"metadata": {"namespace": "default", "name": "a", "creationTimestamp": created},
               "status": {"phase": phase, "phaseTransitionTimestamps": ts}})
    }

    #[test]
    fn phase_transition_is_observed_once_from_creation_and_between_phases() {
        let p = PhaseTransitions {
            from_creation: Family::new_with_constructor(phase_histogram),
            between: Family::new_with_constructor(phase_histogram),
            from_deletion: Family::new_with_constructor(phase_histogram),
        };
        let created = "2026-01-01T00:00:00Z";
        let old = vmi(
            "Scheduled",
            created,
            &[("Scheduled", "2026-01-01T00:00:02Z")],
        );
        let new = vmi(
            "Running",
            created,
            &[
                ("Scheduled", "2026-01-01T00:00:02Z"),
                ("Running", "2026-01-01T00:00:07Z"),
            ],
        );
        p.observe(&old, &new);
        // The same phase again (a status write that changed something else) is not a transition.
        p.observe(&new, &new);
        let mut r = Registry::default();
        r.register("from_creation", "", p.from_creation.clone());
        r.register("between", "", p.between.clone());
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &r).unwrap();
        for line in [
            "from_creation_count{phase=\"Running\"} 1",
            "from_creation_sum{phase=\"Running\"} 7.0",
            "from_creation_bucket{phase=\"Running\",le=\"5\"} 0",
            "from_creation_bucket{phase=\"Running\",le=\"10\"} 1",
            "between_count{phase=\"Running\",last_phase=\"Scheduled\"} 1",
            "between_sum{phase=\"Running\",last_phase=\"Scheduled\"} 5.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    /// KubeVirt's `docs/observability/metrics.md` rows for what this module serves:
    /// name, type, help.
    const KUBEVIRT: &[(&str, &str, &str)] = &[
        ("kubevirt_vmi_info", "gauge", "Information about VirtualMachineInstances."),
        ("kubevirt_vm_info", "gauge", "Information about Virtual Machines."),
        ("kubevirt_vmi_migration_succeeded", "gauge", "Indicates if the VMI migration succeeded."),
        ("kubevirt_vmi_migration_failed", "gauge", "Indicates if the VMI migration failed."),
        ("kubevirt_vmi_migrations_in_pending_phase", "gauge", "Number of current pending migrations."),
        ("kubevirt_vmi_migrations_in_scheduling_phase", "gauge", "Number of current scheduling migrations."),
        ("kubevirt_vmi_migrations_in_unset_phase", "gauge", "Number of current unset migrations. These are pending items the virt-controller hasn’t processed yet from the queue."),
        ("kubevirt_vmi_migrations_in_running_phase", "gauge", "Number of current running migrations."),
        ("kubevirt_vmi_phase_transition_time_from_creation_seconds", "histogram", "Histogram of VM phase transitions duration from creation time in seconds."),
        ("kubevirt_vmi_phase_transition_time_seconds", "histogram", "Histogram of VM phase transitions duration between different phases in seconds."),
        ("kubevirt_vmi_phase_transition_time_from_deletion_seconds", "histogram", "Histogram of VM phase transitions duration from deletion time in seconds."),
        ("kubevirt_virt_controller_ready_status", "gauge", "Indication for a virt-controller that is ready to take the lead."),
        ("kubevirt_virt_controller_leading_status", "gauge", "Indication for an operating virt-controller."),
        ("kubevirt_virt_api_ready_status", "gauge", "Indication for a virt-api server that is ready to serve requests."),
        ("kubevirt_virt_handler_ready_status", "gauge", "Indication for a virt-handler that is ready to serve requests."),
        ("kubevirt_workqueue_adds_total", "counter", "Total number of adds handled by workqueue"),
        ("kubevirt_workqueue_retries_total", "counter", "Total number of retries handled by workqueue"),
        ("kubevirt_workqueue_work_duration_seconds", "histogram", "How long in seconds processing an item from workqueue takes."),
        ("kubevirt_workqueue_unfinished_work_seconds", "gauge", "How many seconds of work have been in progress without being observed by work_duration. Large values indicate stuck threads. The number of stuck threads can be deduced by observing the rate at which this value increases."),
        ("kubevirt_workqueue_longest_running_processor_seconds", "gauge", "How many seconds has the longest running processor for workqueue been running."),
    ];

    /// Label values come from users' objects (names, the `vm.kubevirt.io/os` annotation, the
    /// node a VMI names): quotes, backslashes and newlines in them are escaped, so an object
    /// cannot forge a series or break the exposition for the scraper.
    #[test]
    fn hostile_label_values_cannot_forge_series() {
        let hostile = "x\"} 1\nkubevirt_forged_total 1\n# TYPE kubevirt_forged_total counter\\";
        let snapshot = move || Snapshot {
            vmis: objects(vec![json!({
                "metadata": {"namespace": "ns1", "name": "vm-a",
                             "annotations": {"vm.kubevirt.io/os": hostile}},
                "status": {"phase": "Running", "nodeName": hostile}})]),
            vms: objects(vec![
                json!({"metadata": {"namespace": "ns1", "name": "vm-a"},
                             "spec": {"instancetype": {"name": hostile}},
                             "status": {"printableStatus": hostile}}),
            ]),
            migrations: objects(vec![
                json!({"metadata": {"namespace": "ns1", "name": hostile},
                                    "spec": {"vmiName": hostile}, "status": {"phase": "Failed"}}),
            ]),
        };
        let mut r = Registry::default();
        r.register_collector(Box::new(ControlPlane::new(snapshot)));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &r).expect("encode");
        assert!(
            text.lines()
                .all(|l| !l.starts_with("kubevirt_forged")
                    && !l.starts_with("# TYPE kubevirt_forged")),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("series value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.starts_with("kubevirt_"), "{line}");
        }
        assert!(
            text.contains(r#"os="x\"} 1\nkubevirt_forged_total 1"#),
            "the value is kept, escaped:\n{text}"
        );
    }

    /// Rows are kept between scrapes by uid and version: a written object shows its new
    /// state on the next scrape, a deleted one is gone, and an unchanged one is not parsed
    /// again (its cached row is served even though its bytes were swapped under the same
    /// version, which the store never does: that is how the test sees the cache).
    #[test]
    fn scrapes_follow_writes_and_deletions_and_parse_only_changed_objects() {
        let vmi = |name: &str, phase: &str| json!({"metadata": {"namespace": "ns1", "name": name}, "status": {"phase": phase}});
        let state = std::sync::Arc::new(Mutex::new(vec![
            Object::from_value("a", 1, &vmi("vm-a", "Scheduling")),
            Object::from_value("b", 1, &vmi("vm-b", "Running")),
        ]));
        let source = {
            let state = state.clone();
            move || Snapshot {
                vmis: state.lock().unwrap().clone(),
                ..Snapshot::default()
            }
        };
        let mut r = Registry::default();
        r.register_collector(Box::new(ControlPlane::new(source)));
        let scrape = |r: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut text, r).expect("encode");
            text.lines()
                .filter(|l| l.starts_with("kubevirt_vmi_info{"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            scrape(&r),
            [
                r#"kubevirt_vmi_info{namespace="ns1",name="vm-a",phase="scheduling"} 1"#,
                r#"kubevirt_vmi_info{namespace="ns1",name="vm-b",phase="running"} 1"#,
            ]
        );
        {
            let mut s = state.lock().unwrap();
            s[0] = Object::from_value("a", 2, &vmi("vm-a", "Running"));
            s[1] = Object::from_value("b", 1, &vmi("vm-b", "Failed"));
        }
        assert_eq!(
            scrape(&r),
            [
                r#"kubevirt_vmi_info{namespace="ns1",name="vm-a",phase="running"} 1"#,
                r#"kubevirt_vmi_info{namespace="ns1",name="vm-b",phase="running"} 1"#,
            ],
            "vm-a's new version is read; vm-b's version did not change, so its row is the cached one"
        );
        state.lock().unwrap().remove(0);
        assert_eq!(
            scrape(&r),
            [r#"kubevirt_vmi_info{namespace="ns1",name="vm-b",phase="running"} 1"#]
        );
    }

    #[test]
    fn exposition_has_kubevirts_names_types_help_and_labels() {
        let snapshot = || Snapshot {
            vmis: objects(vec![json!({
                "metadata": {"namespace": "ns1", "name": "vm-a",
                             "annotations": {"vm.kubevirt.io/os": "fedora",
                                             "kubevirt.io/cluster-instancetype-name": "u1.small"}},
                "status": {"phase": "Running", "nodeName": "node01"}})]),
            vms: objects(vec![
                json!({"metadata": {"namespace": "ns1", "name": "vm-a"},
                             "spec": {"instancetype": {"name": "u1.small"}},
                             "status": {"printableStatus": "Running"}}),
            ]),
            migrations: objects(vec![
                json!({"metadata": {"namespace": "ns1", "name": "mig-1"},
                       "spec": {"vmiName": "vm-a"}, "status": {"phase": "Succeeded"}}),
                json!({"metadata": {"namespace": "ns1", "name": "mig-2"},
                       "spec": {"vmiName": "vm-a"}, "status": {"phase": "Running"}}),
            ]),
        };
        components().controller_ready.set(1);
        handler_ready().set(1);
        phase_transitions().observe(
            &json!({"status": {"phase": "Scheduled"}}),
            &json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
                    "status": {"phase": "Running", "phaseTransitionTimestamps": [
                        {"phase": "Scheduled", "phaseTransitionTimestamp": "2026-01-01T00:00:01Z"},
                        {"phase": "Running", "phaseTransitionTimestamp": "2026-01-01T00:00:03Z"}]}}),
        );
        // A deleted VMI that stops: the from-deletion histogram.
        phase_transitions().observe(
            &json!({"status": {"phase": "Running"}}),
            &json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z",
                                 "deletionTimestamp": "2026-01-01T00:01:00Z"},
                    "status": {"phase": "Succeeded", "phaseTransitionTimestamps": [
                        {"phase": "Running", "phaseTransitionTimestamp": "2026-01-01T00:00:03Z"},
                        {"phase": "Succeeded", "phaseTransitionTimestamp": "2026-01-01T00:01:04Z"}]}}),
        );
        register_collector(Box::new(ControlPlane::new(snapshot)));
        crate::workqueue::register_families();
        let text = encode().unwrap();
        let mut seen = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let row = KUBEVIRT.iter().find(|r| r.0 == name);
                let row = row.unwrap_or_else(|| panic!("{name} is not in KubeVirt's table"));
                assert_eq!(row.1, kind, "type of {name}");
                seen.push(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                let row = KUBEVIRT.iter().find(|r| r.0 == name);
                let row =
                    row.unwrap_or_else(|| panic!("HELP of {name} is not in KubeVirt's table"));
                // Exactly KubeVirt's text: one final '.', not prometheus-client's second.
                assert_eq!(row.2, help, "help of {name}");
            } else {
                // name{labels} value
                let (series, value) = line.rsplit_once(' ').unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
                assert!(
                    series.chars().next().unwrap().is_ascii_alphabetic(),
                    "{line}"
                );
            }
        }
        for (name, _, _) in KUBEVIRT {
            assert!(seen.iter().any(|s| s == name), "{name} not served:\n{text}");
        }
        for line in [
            "kubevirt_vmi_info{node=\"node01\",namespace=\"ns1\",name=\"vm-a\",phase=\"running\",os=\"fedora\",instance_type=\"u1.small\"} 1",
            "kubevirt_vm_info{name=\"vm-a\",namespace=\"ns1\",instance_type=\"u1.small\",status=\"running\",status_group=\"running\"} 1",
            "kubevirt_vmi_migration_succeeded{vmi=\"vm-a\",vmim=\"mig-1\",namespace=\"ns1\"} 1",
            "kubevirt_vmi_migrations_in_running_phase 1",
            "kubevirt_vmi_migrations_in_pending_phase 0",
            "kubevirt_virt_controller_ready_status 1",
            "kubevirt_vmi_phase_transition_time_from_creation_seconds_count{phase=\"Running\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn vm_status_groups_are_kubevirts() {
        assert_eq!(vm_status_group("Provisioning"), "starting");
        assert_eq!(vm_status_group("Stopped"), "non_running");
        assert_eq!(vm_status_group("CrashLoopBackOff"), "error");
        assert_eq!(vm_status_group("Running"), "running");
    }

    /// The metric families `docs/observability.md`'s tables list, with their type: the first
    /// cell's backticked names, `{a,b}` expanded.
    fn documented_families() -> BTreeMap<String, String> {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/observability.md"),
        )
        .expect("docs/observability.md");
        fn expand(name: &str) -> Vec<String> {
            match (name.find('{'), name.find('}')) {
                (Some(a), Some(b)) if a < b => name[a + 1..b]
                    .split(',')
                    .flat_map(|alt| expand(&format!("{}{alt}{}", &name[..a], &name[b + 1..])))
                    .collect(),
                _ => vec![name.to_string()],
            }
        }
        let mut out = BTreeMap::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let kind = cells.get(1).expect("a type cell").trim().to_string();
            for name in cells[0].split('`').skip(1).step_by(2) {
                for n in expand(name) {
                    out.insert(n, kind.clone());
                }
            }
        }
        out
    }

    /// The metric names a PromQL expression uses: identifiers of our prefixes (a name with a
    /// `:` is a recording rule's, returned as is).
    fn metric_names(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for c in expr.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                cur.push(c);
                continue;
            }
            let word = std::mem::take(&mut cur);
            if ["kubevirt_", "apiserver_"]
                .iter()
                .any(|p| word.starts_with(p) || word.contains(&format!(":{p}")))
            {
                out.push(word);
            }
        }
        out
    }

    /// Every metric the shipped Grafana dashboard and Prometheus rules query is one we serve
    /// (`docs/observability.md`'s tables, which list every family of this module's registry):
    /// a renamed or dropped family breaks this test, not a user's dashboard.
    #[test]
    fn the_dashboard_and_rules_query_only_metrics_we_serve() {
        let served = documented_families();
        for (name, kind, _) in KUBEVIRT {
            assert_eq!(served.get(*name).map(String::as_str), Some(*kind), "{name}");
        }
        let resolves = |name: &str| {
            served.contains_key(name)
                || ["_bucket", "_sum", "_count"].iter().any(|s| {
                    name.strip_suffix(s)
                        .is_some_and(|base| served.get(base).is_some_and(|k| k == "histogram"))
                })
        };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let rules = std::fs::read_to_string(root.join("deploy/monitoring/kubevirt-rules.yaml"))
            .expect("rules");
        let recorded: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record: "))
            .collect();
        // A rule's expression: its `expr:` line and the lines indented below it.
        let mut rule_exprs = Vec::new();
        let mut lines = rules.lines().peekable();
        while let Some(l) = lines.next() {
            let Some(rest) = l.trim_start().strip_prefix("expr:") else {
                continue;
            };
            let indent = l.len() - l.trim_start().len();
            let mut e = rest.to_string();
            while let Some(next) = lines.next_if(|n| n.len() - n.trim_start().len() > indent) {
                e.push_str(next);
            }
            rule_exprs.push(e);
        }
        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("deploy/monitoring/kubevirt-dashboard.json"))
                .expect("dashboard"),
        )
        .expect("the dashboard is JSON");
        fn queries(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                            ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                            _ => queries(v, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
                _ => {}
            }
        }
        let mut dash_exprs = Vec::new();
        queries(&dashboard, &mut dash_exprs);
        assert!(dash_exprs.len() > 20, "{dash_exprs:?}");
        let mut used = std::collections::BTreeSet::new();
        for e in rule_exprs.iter().chain(&dash_exprs) {
            for name in metric_names(e) {
                let ok = if name.contains(':') {
                    recorded.contains(&name.as_str())
                } else {
                    resolves(&name)
                };
                assert!(ok, "{name} (in {e}) is not a metric we serve");
                used.insert(name);
            }
        }
        // The dashboard covers VMs (CPU, memory, disk, network) and the control plane.
        for family in [
            "kubevirt_vmi_vcpu_seconds_total",
            "kubevirt_vmi_memory_resident_bytes",
            "kubevirt_vmi_storage_read_traffic_bytes_total",
            "kubevirt_vmi_network_receive_bytes_total",
            "kubevirt_vmi_phase_transition_time_from_creation_seconds_bucket",
            "kubevirt_vmi_migrations_in_running_phase",
            "apiserver_request_total",
            "apiserver_request_duration_seconds_bucket",
        ] {
            assert!(
                used.contains(family),
                "the dashboard does not show {family}"
            );
        }
    }
}
