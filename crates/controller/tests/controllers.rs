//! The controllers against the real embedded API server, started in-process. No handler runs:
//! the tests play it by writing VMI phases (and, where a test says so, a background task
//! finishes deleted VMIs the way the handler does: phase Succeeded once the guest is down).

use std::future::Future;
use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Client, ResourceExt};
use kubevirt_api::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use kubevirt_controller::vm::VM_FINALIZER;
use kubevirt_controller::Config;
use kubevirt_runtime::backoff::Backoff;
use serde_json::json;

const NODE: &str = "node01";

struct Env {
    _dir: tempfile::TempDir,
    client: Client,
    kubeconfig: std::path::PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Env {
    async fn start() -> Env {
        Env::start_with(Config::new()).await
    }

    async fn start_with(config: Config) -> Env {
        Env::start_maybe(Some(config)).await
    }

    /// The API server and its node, without the controller: for tests that call one of its
    /// parts themselves and would race the controller doing the same.
    async fn start_without_controller() -> Env {
        Env::start_maybe(None).await
    }

    async fn start_maybe(config: Option<Config>) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = kubevirt_apiserver::start(kubevirt_apiserver::Config::new(
            dir.path().join("data"),
            "127.0.0.1:0".parse().expect("addr"),
        ))
        .await
        .expect("API server");
        let client = running.client().await.expect("client");
        // The node every VMI goes to, as its handler registers it.
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": NODE, "labels": {
                "kubernetes.io/hostname": NODE, "kubevirt.io/schedulable": "true"}},
        }))
        .expect("node");
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        nodes
            .patch_status(
                NODE,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})),
            )
            .await
            .expect("node status");
        let mut tasks = Vec::new();
        if let Some(mut config) = config {
            // Short enough for tests, long enough that a loaded CI machine still sees the
            // CrashLoopBackOff window of the second failure (2 s × 2² = 8 s).
            config.crash_loop = Backoff::quadratic(Duration::from_secs(2), Duration::from_secs(12));
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = kubevirt_controller::run(c, config).await {
                    eprintln!("controller stopped: {e}");
                }
            }));
        }
        Env {
            _dir: dir,
            client,
            kubeconfig: running.kubeconfig.clone(),
            tasks,
        }
    }

    /// Plays the handler's part of deletion: a deleted VMI that is not final becomes Succeeded.
    fn finish_deletions(&mut self) {
        let vmis = self.vmis();
        self.tasks.push(tokio::spawn(async move {
            loop {
                if let Ok(list) = vmis.list(&ListParams::default()).await {
                    for v in list.items {
                        let p = phase_of(&v);
                        if v.metadata.deletion_timestamp.is_some()
                            && p != "Succeeded"
                            && p != "Failed"
                        {
                            let _ = vmis
                                .patch(
                                    &v.name_any(),
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
                                )
                                .await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn create_vm(&self, name: &str, strategy: &str) -> VirtualMachine {
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"runStrategy": strategy, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
        }))
        .expect("vm");
        self.vms()
            .create(&PostParams::default(), &vm)
            .await
            .expect("create vm")
    }

    async fn set_strategy(&self, name: &str, strategy: &str) {
        self.vms()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"runStrategy": strategy}})),
            )
            .await
            .expect("patch runStrategy");
    }

    /// Writes a VMI phase as the handler would, recording the transition; `Running` also
    /// makes it Ready.
    async fn set_phase(&self, name: &str, phase: &str) {
        let vmis = self.vmis();
        let v = vmis.get(name).await.expect("vmi");
        let mut ts = v
            .status
            .as_ref()
            .and_then(|s| s.phase_transition_timestamps.clone())
            .unwrap_or_default();
        ts.push(
            kubevirt_api::VirtualMachineInstancePhaseTransitionTimestamp {
                phase: Some(phase.into()),
                phase_transition_timestamp: None,
            },
        );
        let ready = if phase == "Running" { "True" } else { "False" };
        let patch = json!({"status": {"phase": phase, "phaseTransitionTimestamps": ts,
            "conditions": [{"type": "Ready", "status": ready}]}});
        vmis.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("set phase");
    }

    async fn printable(&self, name: &str) -> String {
        self.vms()
            .get(name)
            .await
            .ok()
            .and_then(|v| v.status)
            .and_then(|s| s.printable_status)
            .unwrap_or_default()
    }

    async fn wait_printable(&self, name: &str, want: &str) {
        let ok = wait(|| async { (self.printable(name).await == want).then_some(()) }).await;
        let last = self.printable(name).await;
        assert!(
            ok.is_some(),
            "VM {name}: printableStatus stayed {last:?}, wanted {want:?}"
        );
    }

    async fn start_failure(&self, name: &str) -> Option<kubevirt_api::VirtualMachineStartFailure> {
        self.vms().get(name).await.ok()?.status?.start_failure
    }

    /// The start-failure count persists, unlike the CrashLoopBackOff status, which a loaded
    /// machine can skip past between two polls when the backoff is short.
    async fn wait_fail_count(&self, name: &str, n: i32) {
        let ok = wait(|| async {
            let c = self.start_failure(name).await?.consecutive_fail_count?;
            (c >= n).then_some(())
        })
        .await;
        assert!(
            ok.is_some(),
            "VM {name}: startFailure.consecutiveFailCount never reached {n}"
        );
    }

    async fn wait_vmi(&self, name: &str, not_uid: Option<&str>) -> VirtualMachineInstance {
        wait(|| async {
            let v = self.vmis().get_opt(name).await.ok().flatten()?;
            (v.metadata.uid.as_deref() != not_uid && v.metadata.deletion_timestamp.is_none())
                .then_some(v)
        })
        .await
        .unwrap_or_else(|| panic!("no (new) VMI {name}"))
    }

    async fn wait_scheduled(&self, name: &str) -> VirtualMachineInstance {
        wait(|| async {
            let v = self.vmis().get_opt(name).await.ok().flatten()?;
            (phase_of(&v) == "Scheduled").then_some(v)
        })
        .await
        .unwrap_or_else(|| panic!("VMI {name} was not scheduled"))
    }

    async fn wait_vmi_gone(&self, name: &str) {
        let gone = wait(|| async {
            self.vmis()
                .get_opt(name)
                .await
                .ok()
                .and_then(|v| v.is_none().then_some(()))
        })
        .await;
        assert!(gone.is_some(), "VMI {name} is still there");
    }
}

/// Runs the real, unmodified kubectl against the server; its stdout, or its stderr as the
/// error.
fn kubectl(env: &Env, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(args)
        .output()
        .map_err(|e| format!("running kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn kubectl_json(env: &Env, args: &[&str]) -> Option<serde_json::Value> {
    serde_json::from_str(&kubectl(env, args).ok()?).ok()
}

fn condition(
    v: &VirtualMachineInstance,
    kind: &str,
) -> Option<kubevirt_api::VirtualMachineInstanceCondition> {
    v.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.r#type == kind)
        .cloned()
}

fn phase_of(v: &VirtualMachineInstance) -> String {
    v.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// Polls `f` every 50 ms for up to 20 s.
async fn wait<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..400 {
        if let Some(t) = f().await {
            return Some(t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn always_starts_the_vmi_reports_running_and_restarts_it() {
    let mut env = Env::start().await;
    env.finish_deletions();
    let vm = env.create_vm("demo", "Always").await;
    let vmi = env.wait_vmi("demo", None).await;
    let owner = &vmi.owner_references()[0];
    assert_eq!(owner.kind, "VirtualMachine");
    assert_eq!(Some(&owner.uid), vm.metadata.uid.as_ref());
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(vmi.labels().get("app").map(String::as_str), Some("demo"));
    assert_eq!(
        vmi.labels().get("vm.kubevirt.io/name").map(String::as_str),
        Some("demo")
    );
    assert_eq!(
        vmi.spec
            .domain
            .firmware
            .as_ref()
            .and_then(|f| f.uuid.clone()),
        Some(kubevirt_api::defaults::firmware_uuid("demo"))
    );
    assert_eq!(
        vmi.spec
            .domain
            .machine
            .as_ref()
            .and_then(|m| m.r#type.as_deref()),
        Some("q35")
    );
    env.wait_printable("demo", "Starting").await;

    env.wait_scheduled("demo").await;
    env.set_phase("demo", "Running").await;
    env.wait_printable("demo", "Running").await;
    let st = env
        .vms()
        .get("demo")
        .await
        .expect("vm")
        .status
        .expect("status");
    assert_eq!((st.ready, st.created), (Some(true), Some(true)));
    let ready = st
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.r#type == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True");
    assert_eq!(st.observed_generation, st.desired_generation);

    // The guest shut down: Always starts a new VMI.
    env.set_phase("demo", "Succeeded").await;
    let again = env.wait_vmi("demo", vmi.metadata.uid.as_deref()).await;
    assert_ne!(again.metadata.uid, vmi.metadata.uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vmis_are_placed_on_the_node() {
    let env = Env::start().await;
    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "placed"},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}
    }))
    .expect("vmi");
    env.vmis()
        .create(&PostParams::default(), &vmi)
        .await
        .expect("create");
    let v = env.wait_scheduled("placed").await;
    let st = v.status.clone().expect("status");
    assert_eq!(st.node_name.as_deref(), Some(NODE));
    assert_eq!(
        v.labels().get("kubevirt.io/nodeName").map(String::as_str),
        Some(NODE)
    );
    let phases: Vec<String> = st
        .phase_transition_timestamps
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| t.phase)
        .collect();
    assert_eq!(phases, ["Pending", "Scheduling", "Scheduled"]);
    let ready = st
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.r#type == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "False");
    assert!(v
        .finalizers()
        .iter()
        .any(|f| f == kubevirt_controller::vmi::VMI_FINALIZER));

    // Deleted while Scheduled, the finalizer holds it until the handler reports it final.
    env.vmis()
        .delete("placed", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.vmis().get_opt("placed").await.expect("get").is_some());
    env.set_phase("placed", "Succeeded").await;
    env.wait_vmi_gone("placed").await;
}

fn node_api(env: &Env) -> Api<k8s_openapi::api::core::v1::Node> {
    Api::all(env.client.clone())
}

/// A Node as `kubevirt-rs node` registers it: schedulable, Ready, heartbeat now.
async fn add_node(env: &Env, name: &str, heartbeat: &str) {
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": name,
            "labels": {"kubernetes.io/hostname": name, "kubevirt.io/schedulable": "true"},
            "annotations": {"kubevirt.io/heartbeat": heartbeat}},
    }))
    .expect("node");
    node_api(env)
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    node_api(env)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})),
        )
        .await
        .expect("node status");
}

fn pod_scheduled(v: &VirtualMachineInstance) -> Option<(String, String, String)> {
    v.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.r#type == "PodScheduled")
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vmi_no_node_takes_waits_unschedulable_until_one_does() {
    let env = Env::start().await;
    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "picky"},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}},
                 "nodeSelector": {"kubernetes.io/hostname": "node02"}}
    }))
    .expect("vmi");
    env.vmis()
        .create(&PostParams::default(), &vmi)
        .await
        .expect("create");
    let waiting = wait(|| async {
        let v = env.vmis().get_opt("picky").await.ok().flatten()?;
        pod_scheduled(&v).map(|c| (phase_of(&v), c))
    })
    .await
    .expect("an Unschedulable condition");
    assert_eq!(
        waiting,
        (
            "Scheduling".to_string(),
            (
                "False".to_string(),
                "Unschedulable".to_string(),
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
                    .to_string()
            )
        )
    );
    // The node it asks for joins: the VMI goes there, and the condition goes.
    add_node(&env, "node02", "2099-01-01T00:00:00Z").await;
    let v = env.wait_scheduled("picky").await;
    assert_eq!(
        v.status.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node02")
    );
    assert_eq!(pod_scheduled(&v), None);
    // Spread: with node01 and node02 both free of other VMIs but node02 running one, a VMI
    // without preferences goes to node01.
    let free: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "free"},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}
    }))
    .expect("vmi");
    env.vmis()
        .create(&PostParams::default(), &free)
        .await
        .expect("create");
    let v = env.wait_scheduled("free").await;
    assert_eq!(
        v.status.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(NODE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_handler_went_silent_is_marked_unschedulable() {
    let mut config = Config::new();
    config.node_heartbeat_timeout = Duration::from_secs(2);
    let env = Env::start_with(config).await;
    // node01 never heartbeats (no annotation): not judged. node02's last heartbeat is old.
    add_node(&env, "node02", "2020-01-01T00:00:00Z").await;
    let marked = wait(|| async {
        let n = node_api(&env).get("node02").await.ok()?;
        (n.labels()
            .get("kubevirt.io/schedulable")
            .map(String::as_str)
            == Some("false"))
        .then_some(n)
    })
    .await
    .expect("node02 marked unschedulable");
    let ready = marked
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    assert_eq!(ready.as_deref(), Some("Unknown"));
    let node01 = node_api(&env).get(NODE).await.expect("node01");
    assert_eq!(
        node01
            .labels()
            .get("kubevirt.io/schedulable")
            .map(String::as_str),
        Some("true")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn halted_stays_off_and_switching_starts_and_stops() {
    let env = Env::start().await;
    env.create_vm("h", "Halted").await;
    env.wait_printable("h", "Stopped").await;
    assert!(env.vmis().get_opt("h").await.expect("get").is_none());

    env.set_strategy("h", "Always").await;
    env.wait_scheduled("h").await;
    env.set_phase("h", "Running").await;
    env.wait_printable("h", "Running").await;

    env.set_strategy("h", "Halted").await;
    // The VMI is deleted; it stays (finalizer) until the "handler" reports the guest down.
    env.wait_printable("h", "Stopping").await;
    env.set_phase("h", "Succeeded").await;
    env.wait_vmi_gone("h").await;
    env.wait_printable("h", "Stopped").await;
    // "Stopped" may be written while the finished VMI still exists (created: true); the next
    // sync, with the VMI gone, says created: false.
    let st = wait(|| async {
        let st = env.vms().get("h").await.ok()?.status?;
        (st.created == Some(false)).then_some(st)
    })
    .await
    .expect("status.created becomes false once the VMI is gone");
    assert_eq!(st.ready, Some(false));
    assert_eq!(st.printable_status.as_deref(), Some("Stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_follows_start_and_stop_requests() {
    let mut env = Env::start().await;
    env.finish_deletions();
    env.create_vm("m", "Manual").await;
    env.wait_printable("m", "Stopped").await;
    let request = |r: serde_json::Value| json!({"status": {"stateChangeRequests": [r]}});
    env.vms()
        .patch_status(
            "m",
            &PatchParams::default(),
            &Patch::Merge(request(json!({"action": "Start"}))),
        )
        .await
        .expect("start request");
    let vmi = env.wait_vmi("m", None).await;
    let cleared = wait(|| async {
        let st = env.vms().get("m").await.ok()?.status?;
        st.state_change_requests.is_none().then_some(())
    })
    .await;
    assert!(
        cleared.is_some(),
        "the Start request is removed once the VMI exists"
    );

    env.vms()
        .patch_status(
            "m",
            &PatchParams::default(),
            &Patch::Merge(request(json!({"action": "Stop", "uid": vmi.metadata.uid}))),
        )
        .await
        .expect("stop request");
    env.wait_vmi_gone("m").await;
    env.wait_printable("m", "Stopped").await;
    // A final VMI already reads Stopped; the request goes once the VMI itself is gone.
    let cleared = wait(|| async {
        let st = env.vms().get("m").await.ok()?.status?;
        st.state_change_requests.is_none().then_some(())
    })
    .await;
    assert!(
        cleared.is_some(),
        "the Stop request is removed once the VMI is gone"
    );
    // Manual never restarts on its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.vmis().get_opt("m").await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rerun_on_failure_restarts_failures_only() {
    let mut env = Env::start().await;
    env.finish_deletions();
    env.create_vm("r", "RerunOnFailure").await;
    let first = env.wait_scheduled("r").await;
    env.set_phase("r", "Running").await;
    env.wait_printable("r", "Running").await;
    env.set_phase("r", "Failed").await;
    let second = env.wait_vmi("r", first.metadata.uid.as_deref()).await;
    env.wait_scheduled("r").await;
    env.set_phase("r", "Running").await;
    env.set_phase("r", "Succeeded").await;
    env.wait_vmi_gone("r").await;
    env.wait_printable("r", "Stopped").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        env.vmis().get_opt("r").await.expect("get").is_none(),
        "Succeeded is not restarted"
    );
    assert_ne!(second.metadata.uid, first.metadata.uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_never_restarts() {
    let mut env = Env::start().await;
    env.finish_deletions();
    env.create_vm("o", "Once").await;
    let first = env.wait_scheduled("o").await;
    env.set_phase("o", "Running").await;
    env.wait_printable("o", "Running").await;
    env.set_phase("o", "Failed").await;
    env.wait_printable("o", "Stopped").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = env.vmis().get("o").await.expect("the final VMI stays");
    assert_eq!(still.metadata.uid, first.metadata.uid);
    assert_eq!(phase_of(&still), "Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_failures_back_off_and_reset_on_running() {
    let mut env = Env::start().await;
    env.finish_deletions();
    env.create_vm("c", "Always").await;
    let first = env.wait_scheduled("c").await;
    env.set_phase("c", "Failed").await;
    env.wait_fail_count("c", 1).await;
    let sf = env.start_failure("c").await.expect("startFailure");
    assert_eq!(sf.consecutive_fail_count, Some(1));
    assert_eq!(sf.last_failed_vmiuid, first.metadata.uid);
    assert!(sf.retry_after_timestamp.is_some());

    // base 2 s × 1² later, a new VMI.
    let second = env.wait_vmi("c", first.metadata.uid.as_deref()).await;
    env.wait_scheduled("c").await;
    env.set_phase("c", "Failed").await;
    env.wait_fail_count("c", 2).await;
    env.wait_printable("c", "CrashLoopBackOff").await;
    let sf = env.start_failure("c").await.expect("startFailure");
    assert_eq!(sf.consecutive_fail_count, Some(2));
    assert_eq!(sf.last_failed_vmiuid, second.metadata.uid);
    // 8 s this time: nothing 2 s in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The failed VMI may still be on its way out; what must not exist yet is a new one.
    let current = env.vmis().get_opt("c").await.expect("get");
    assert!(
        current
            .as_ref()
            .is_none_or(|v| v.metadata.uid == second.metadata.uid),
        "no new VMI while backing off"
    );

    env.wait_vmi("c", second.metadata.uid.as_deref()).await;
    env.wait_scheduled("c").await;
    env.set_phase("c", "Running").await;
    env.wait_printable("c", "Running").await;
    let sf = env.start_failure("c").await;
    assert!(sf.is_none(), "a VMI that runs resets the count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_vm_deletes_its_vmi_and_the_vm_goes_only_after_it() {
    let mut env = Env::start().await;
    env.create_vm("d", "Always").await;
    env.wait_scheduled("d").await;
    let held = wait(|| async {
        let vm = env.vms().get("d").await.ok()?;
        vm.finalizers()
            .iter()
            .any(|f| f == VM_FINALIZER)
            .then_some(())
    })
    .await;
    assert!(held.is_some(), "the VM never got {VM_FINALIZER}");
    // The embedded server answers an unconditional DELETE racing a status write with 409
    // (kube-apiserver retries internally); retry like a client would.
    let deleted =
        wait(|| async { env.vms().delete("d", &DeleteParams::default()).await.ok() }).await;
    assert!(deleted.is_some(), "delete the VM");
    // The VMI is deleted but held by its own finalizer (no "handler" yet): the VM waits.
    let vmi_deleting = wait(|| async {
        let v = env.vmis().get_opt("d").await.ok()??;
        v.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    assert!(vmi_deleting.is_some(), "the VMI was not deleted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let vm = env.vms().get("d").await.expect("the VM waits for its VMI");
    assert!(vm.metadata.deletion_timestamp.is_some());
    assert!(vm.finalizers().iter().any(|f| f == VM_FINALIZER));
    env.wait_printable("d", "Terminating").await;

    env.finish_deletions();
    env.wait_vmi_gone("d").await;
    let gone = wait(|| async {
        env.vms()
            .get_opt("d")
            .await
            .ok()
            .and_then(|v| v.is_none().then_some(()))
    })
    .await;
    assert!(gone.is_some(), "the VM goes too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphan_deletion_leaves_the_vmi_running() {
    let env = Env::start().await;
    env.create_vm("o", "Always").await;
    let vmi = env.wait_scheduled("o").await;
    env.set_phase("o", "Running").await;
    env.wait_printable("o", "Running").await;
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    let deleted = wait(|| async { env.vms().delete("o", &dp).await.ok() }).await;
    assert!(deleted.is_some(), "delete the VM");
    let gone = wait(|| async {
        env.vms()
            .get_opt("o")
            .await
            .ok()
            .and_then(|v| v.is_none().then_some(()))
    })
    .await;
    assert!(gone.is_some(), "the VM was not released");
    // Give a wrong deletion time to happen, then check the VMI is untouched, unowned.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = env.vmis().get("o").await.expect("the VMI stays");
    assert_eq!(v.metadata.uid, vmi.metadata.uid);
    assert!(
        v.metadata.deletion_timestamp.is_none(),
        "the VMI was deleted"
    );
    assert!(
        v.owner_references().is_empty(),
        "{:?}",
        v.owner_references()
    );
    assert_eq!(phase_of(&v), "Running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicaset_keeps_n_vmis() {
    let mut env = Env::start().await;
    env.finish_deletions();
    let rss: Api<VirtualMachineInstanceReplicaSet> = Api::namespaced(env.client.clone(), "default");
    let rs: VirtualMachineInstanceReplicaSet = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
        "metadata": {"name": "pool"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"rs": "pool"}},
                 "template": {"metadata": {"labels": {"rs": "pool"}},
                              "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
    }))
    .expect("rs");
    rss.create(&PostParams::default(), &rs)
        .await
        .expect("create rs");
    let live = |n: usize| {
        let vmis = env.vmis();
        async move {
            wait(|| async {
                let l = vmis
                    .list(&ListParams::default().labels("rs=pool"))
                    .await
                    .ok()?;
                let live: Vec<_> = l
                    .items
                    .into_iter()
                    .filter(|v| v.metadata.deletion_timestamp.is_none())
                    .collect();
                (live.len() == n).then_some(live)
            })
            .await
        }
    };
    let three = live(3).await.expect("3 VMIs");
    assert!(three.iter().all(|v| v.name_any().starts_with("pool-")));
    assert!(three.iter().all(|v| v
        .owner_references()
        .iter()
        .any(|o| o.kind == "VirtualMachineInstanceReplicaSet")));

    rss.patch(
        "pool",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale down");
    live(1).await.expect("1 VMI after scaling down");
    let st = wait(|| async {
        let s = rss.get("pool").await.ok()?.status?;
        (s.replicas == Some(1)).then_some(s)
    })
    .await
    .expect("status.replicas = 1");
    assert_eq!(st.label_selector.as_deref(), Some("rs=pool"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instancetype_sizes_the_vmi_and_events_are_recorded() {
    let env = Env::start().await;
    let its: Api<kubevirt_api::VirtualMachineClusterInstancetype> = Api::all(env.client.clone());
    let it: kubevirt_api::VirtualMachineClusterInstancetype = serde_json::from_value(json!({
        "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterInstancetype",
        "metadata": {"name": "u1.small"},
        "spec": {"cpu": {"guest": 2}, "memory": {"guest": "128Mi"}}
    }))
    .expect("instancetype");
    its.create(&PostParams::default(), &it)
        .await
        .expect("create instancetype");
    let vm: VirtualMachine = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "sized"},
        "spec": {"runStrategy": "Always", "instancetype": {"name": "u1.small"},
                 "template": {"spec": {"domain": {"devices": {}}}}}
    }))
    .expect("vm");
    env.vms()
        .create(&PostParams::default(), &vm)
        .await
        .expect("create vm");
    let vmi = env.wait_vmi("sized", None).await;
    assert_eq!(
        vmi.spec.domain.cpu.as_ref().and_then(|c| c.sockets),
        Some(2)
    );
    assert_eq!(
        vmi.spec
            .domain
            .memory
            .as_ref()
            .and_then(|m| m.guest.clone())
            .map(|q| q.0),
        Some("128Mi".to_string())
    );

    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), "default");
    let found = wait(|| async {
        let l = events.list(&ListParams::default()).await.ok()?;
        l.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("SuccessfulCreate")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("sized")
        })
    })
    .await
    .expect("a SuccessfulCreate event");
    assert!(found
        .note
        .unwrap_or_default()
        .starts_with("Started the virtual machine by creating the new virtual machine instance"));
}

/// Revisions: the VM keeps a copy of its instancetype and preference in ControllerRevisions
/// it owns, recorded in its status; editing the instancetype afterwards does not resize the
/// VM (its next VMI still has the copied size), and pointing the VM at another instancetype
/// takes a new copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instancetype_edited_after_the_vm_started_does_not_change_it() {
    use k8s_openapi::api::apps::v1::ControllerRevision;
    let mut env = Env::start().await;
    env.finish_deletions();
    let its: Api<kubevirt_api::VirtualMachineInstancetype> =
        Api::namespaced(env.client.clone(), "default");
    for (name, cpus) in [("small", 1), ("large", 3)] {
        let it: kubevirt_api::VirtualMachineInstancetype = serde_json::from_value(json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineInstancetype",
            "metadata": {"name": name, "labels": {"team": "a"}},
            "spec": {"cpu": {"guest": cpus}, "memory": {"guest": "128Mi"}}
        }))
        .expect("instancetype");
        its.create(&PostParams::default(), &it)
            .await
            .expect("create instancetype");
    }
    let prefs: Api<kubevirt_api::VirtualMachineClusterPreference> = Api::all(env.client.clone());
    let pref: kubevirt_api::VirtualMachineClusterPreference = serde_json::from_value(json!({
        "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterPreference",
        "metadata": {"name": "cores"},
        "spec": {"cpu": {"preferredCPUTopology": "cores"}}
    }))
    .expect("preference");
    prefs
        .create(&PostParams::default(), &pref)
        .await
        .expect("create preference");
    let vm: VirtualMachine = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "pinned"},
        "spec": {"runStrategy": "Always",
                 "instancetype": {"name": "small", "kind": "VirtualMachineInstancetype"},
                 "preference": {"name": "cores"},
                 "template": {"spec": {"domain": {"devices": {}}}}}
    }))
    .expect("vm");
    env.vms()
        .create(&PostParams::default(), &vm)
        .await
        .expect("create vm");
    let first = env.wait_vmi("pinned", None).await;
    let cores = |v: &VirtualMachineInstance| v.spec.domain.cpu.as_ref().and_then(|c| c.cores);
    assert_eq!(cores(&first), Some(1));

    // The status names the copies, and the copies are KubeVirt's ControllerRevisions.
    let status = wait(|| async {
        let s = env.vms().get("pinned").await.ok()?.status?;
        let it = s.instancetype_ref.clone()?.controller_revision_ref?.name?;
        let pref = s.preference_ref.clone()?.controller_revision_ref?.name?;
        Some((s, it, pref))
    })
    .await
    .expect("status.instancetypeRef and preferenceRef with controllerRevisionRef");
    let (status, it_rev, pref_rev) = status;
    let it_ref = status.instancetype_ref.expect("instancetypeRef");
    assert_eq!(it_ref.name.as_deref(), Some("small"));
    assert_eq!(it_ref.kind.as_deref(), Some("VirtualMachineInstancetype"));
    assert_eq!(
        status.preference_ref.and_then(|r| r.kind),
        Some("VirtualMachineClusterPreference".to_string())
    );
    let revs: Api<ControllerRevision> = Api::namespaced(env.client.clone(), "default");
    let rev = revs
        .get(&it_rev)
        .await
        .expect("the instancetype's ControllerRevision");
    assert!(it_rev.starts_with("pinned-small-v1beta1-"), "{it_rev}");
    let labels = rev.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("instancetype.kubevirt.io/object-name")
            .map(String::as_str),
        Some("small")
    );
    assert_eq!(
        labels
            .get("instancetype.kubevirt.io/object-kind")
            .map(String::as_str),
        Some("VirtualMachineInstancetype")
    );
    let data = rev.data.expect("data").0;
    assert_eq!(data["spec"]["cpu"]["guest"], 1);
    assert!(
        data["metadata"].get("labels").is_none(),
        "labels are not copied: {data}"
    );
    let owner = rev.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        owner.first().map(|o| o.kind.as_str()),
        Some("VirtualMachine")
    );
    revs.get(&pref_rev)
        .await
        .expect("the preference's ControllerRevision");

    // Edit the instancetype, restart the VM: the new VMI is sized from the copy.
    its.patch(
        "small",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cpu": {"guest": 4}}})),
    )
    .await
    .expect("edit instancetype");
    let first_uid = first.metadata.uid.clone().expect("uid");
    env.vmis()
        .delete("pinned", &DeleteParams::default())
        .await
        .expect("delete vmi");
    let second = env.wait_vmi("pinned", Some(&first_uid)).await;
    assert_eq!(
        cores(&second),
        Some(1),
        "the edited instancetype must not resize the VM"
    );

    // Pointing the VM at another instancetype takes a new copy.
    env.vms()
        .patch(
            "pinned",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"instancetype": {"name": "large"}}})),
        )
        .await
        .expect("switch instancetype");
    let renamed = wait(|| async {
        let s = env.vms().get("pinned").await.ok()?.status?;
        let name = s.instancetype_ref?.controller_revision_ref?.name?;
        name.starts_with("pinned-large-").then_some(name)
    })
    .await
    .expect("a new revision for the new instancetype");
    let second_uid = second.metadata.uid.clone().expect("uid");
    env.vmis()
        .delete("pinned", &DeleteParams::default())
        .await
        .expect("delete vmi");
    let third = env.wait_vmi("pinned", Some(&second_uid)).await;
    assert_eq!(cores(&third), Some(3), "sized from {renamed}");
}

/// dataVolumeTemplates: the VM creates its DataVolume (owned by it) and holds the VMI back
/// until the DataVolume succeeded: `Provisioning` and `DataVolumesReady=False` meanwhile,
/// `DataVolumeError` when it failed. No CDI runs here: the test writes the DataVolume's phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_volume_templates_are_created_and_awaited() {
    use kubevirt_api::DataVolume;
    let env = Env::start().await;
    let vm: VirtualMachine = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "withdv"},
        "spec": {"runStrategy": "Always",
            "dataVolumeTemplates": [{"metadata": {"name": "withdv-root", "labels": {"x": "y"}},
                "spec": {"source": {"http": {"url": "http://example.invalid/disk.img"}},
                         "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}],
            "template": {"spec": {"domain": {"devices": {"disks": [{"name": "root", "disk": {}}]},
                                             "memory": {"guest": "64Mi"}},
                                  "volumes": [{"name": "root", "dataVolume": {"name": "withdv-root"}}]}}}
    }))
    .expect("vm");
    let vm = env
        .vms()
        .create(&PostParams::default(), &vm)
        .await
        .expect("create vm");
    let dvs: Api<DataVolume> = Api::namespaced(env.client.clone(), "default");
    let dv = wait(|| async { dvs.get_opt("withdv-root").await.ok().flatten() })
        .await
        .expect("the VM creates its DataVolume");
    let owner = &dv.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("VirtualMachine", vm.metadata.uid.as_ref())
    );
    assert_eq!(dv.metadata.labels.as_ref().expect("labels")["x"], "y");

    let set_dv_phase = |phase: &'static str| {
        let dvs = dvs.clone();
        async move {
            dvs.patch_status(
                "withdv-root",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": phase}})),
            )
            .await
            .expect("DataVolume status");
        }
    };
    let dv_cond = |vm: &VirtualMachine| {
        vm.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.r#type == "DataVolumesReady"))
            .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
    };
    set_dv_phase("ImportInProgress").await;
    env.wait_printable("withdv", "Provisioning").await;
    let got = env.vms().get("withdv").await.expect("vm");
    assert_eq!(
        dv_cond(&got),
        Some(("False".to_string(), "NotAllDVsReady".to_string()))
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        env.vmis().get_opt("withdv").await.expect("get").is_none(),
        "a VMI was created before its DataVolume was ready"
    );

    set_dv_phase("Failed").await;
    env.wait_printable("withdv", "DataVolumeError").await;

    set_dv_phase("Succeeded").await;
    env.wait_vmi("withdv", None).await;
    let ok = wait(|| async {
        let vm = env.vms().get("withdv").await.ok()?;
        (dv_cond(&vm)? == ("True".to_string(), "AllDVsReady".to_string())).then_some(())
    })
    .await;
    assert!(ok.is_some(), "DataVolumesReady never became True");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_keeps_n_indexed_vms() {
    let env = Env::start().await;
    let pools: Api<kubevirt_api::VirtualMachinePool> =
        Api::namespaced(env.client.clone(), "default");
    let pool: kubevirt_api::VirtualMachinePool = serde_json::from_value(json!({
        "apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"pool": "web"}},
                 "virtualMachineTemplate": {
                     "metadata": {"labels": {"pool": "web"}},
                     "spec": {"runStrategy": "Halted", "template": {"spec": {
                         "domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}}}
    }))
    .expect("pool");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");
    let names = |n: usize| {
        let vms = env.vms();
        async move {
            wait(|| async {
                let l = vms
                    .list(&ListParams::default().labels("pool=web"))
                    .await
                    .ok()?;
                let mut names: Vec<String> = l
                    .items
                    .iter()
                    .filter(|v| v.metadata.deletion_timestamp.is_none())
                    .map(|v| v.name_any())
                    .collect();
                names.sort();
                (names.len() == n).then_some(names)
            })
            .await
        }
    };
    assert_eq!(names(3).await.expect("3 VMs"), ["web-0", "web-1", "web-2"]);
    let vm = env.vms().get("web-1").await.expect("web-1");
    assert!(vm
        .owner_references()
        .iter()
        .any(|o| o.kind == "VirtualMachinePool" && o.controller == Some(true)));

    // A deleted member is replaced under its own index; scale-down removes the highest.
    env.vms()
        .delete("web-1", &DeleteParams::default())
        .await
        .expect("delete web-1");
    assert!(
        wait(|| async {
            let v = env.vms().get("web-1").await.ok()?;
            (v.metadata.uid != vm.metadata.uid && v.metadata.deletion_timestamp.is_none())
                .then_some(())
        })
        .await
        .is_some(),
        "web-1 was not replaced"
    );
    pools
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale down");
    assert_eq!(names(1).await.expect("1 VM"), ["web-0"]);
    let st = wait(|| async {
        let s = pools.get("web").await.ok()?.status?;
        (s.replicas == Some(1)).then_some(s)
    })
    .await
    .expect("status.replicas = 1");
    assert_eq!(st.label_selector.as_deref(), Some("pool=web"));
}

/// `virtctl expose vmi`'s Service, the way a user writes it: a Service selecting the VMI's
/// `kubevirt.io/domain` label gets Endpoints and an EndpointSlice with the VMI's pod-network
/// address (through its launcher Pod) and the Service's ports; they follow the VMI's Ready,
/// address and stop, and go with the Service. Read back with unmodified kubectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_selecting_a_vmi_gets_its_endpoints() {
    let env = Env::start().await;
    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "labels": {"kubevirt.io/domain": "vm1"}},
        "spec": {"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {},
                    "ports": [{"name": "http", "port": 80}]}]},
                 "memory": {"guest": "64Mi"}},
                 "networks": [{"name": "default", "pod": {}}]}
    }))
    .expect("vmi");
    env.vmis()
        .create(&PostParams::default(), &vmi)
        .await
        .expect("create vmi");
    env.wait_scheduled("vm1").await;
    // The handler's part: Running, Ready, the guest's address on the pod network.
    env.set_phase("vm1", "Running").await;
    let set_ip = |ip: &'static str| {
        let vmis = env.vmis();
        async move {
            vmis.patch(
                "vm1",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"interfaces": [
                    {"name": "default", "ipAddress": ip, "ipAddresses": [ip]}]}})),
            )
            .await
            .expect("interfaces");
        }
    };
    set_ip("10.244.0.7").await;
    let svcs: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(env.client.clone(), "default");
    let svc = |name: &str, selector: serde_json::Value| -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": selector, "ports": [
                {"name": "ssh", "port": 22, "targetPort": 22},
                {"name": "web", "port": 8080, "targetPort": "http"}]}
        }))
        .expect("service")
    };
    svcs.create(
        &PostParams::default(),
        &svc("vm1-svc", json!({"kubevirt.io/domain": "vm1"})),
    )
    .await
    .expect("create service");
    svcs.create(
        &PostParams::default(),
        &svc("nothing", json!({"kubevirt.io/domain": "nope"})),
    )
    .await
    .expect("create service");

    let endpoints =
        |name: &'static str| kubectl_json(&env, &["get", "endpoints", name, "-o", "json"]);
    let ready_ips = |ep: &serde_json::Value, field: &str| -> Vec<String> {
        ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s[field].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str().map(String::from))
            .collect()
    };
    let ep = wait(|| async {
        let ep = endpoints("vm1-svc")?;
        (ready_ips(&ep, "addresses") == ["10.244.0.7"]).then_some(ep)
    })
    .await
    .unwrap_or_else(|| panic!("no ready address: {:?}", endpoints("vm1-svc")));
    let subset = &ep["subsets"][0];
    assert_eq!(subset["addresses"][0]["nodeName"], NODE);
    assert_eq!(subset["addresses"][0]["targetRef"]["kind"], "Pod");
    assert!(subset["addresses"][0]["targetRef"]["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("virt-launcher-vm1-")));
    // targetPort by number and by name (the VMI interface's port `http`).
    let mut ports: Vec<(String, i64)> = subset["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["port"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    ports.sort();
    assert_eq!(ports, [("ssh".to_string(), 22), ("web".to_string(), 80)]);
    let slices = kubectl_json(
        &env,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=vm1-svc",
            "-o",
            "json",
        ],
    )
    .expect("kubectl get endpointslices");
    let slice = &slices["items"][0];
    assert_eq!(
        slices["items"].as_array().map(Vec::len),
        Some(1),
        "{slices}"
    );
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["endpoints"][0]["addresses"], json!(["10.244.0.7"]));
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    // Settled: not rewritten again and again.
    let rv = |v: &serde_json::Value| v["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rv(&endpoints("vm1-svc").expect("endpoints")), rv(&ep));
    let again = kubectl_json(
        &env,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=vm1-svc",
            "-o",
            "json",
        ],
    )
    .expect("kubectl get endpointslices");
    assert_eq!(rv(&again["items"][0]), rv(slice));
    // Discovery and OpenAPI know the kinds.
    let explained = kubectl(&env, &["explain", "endpointslices.endpoints.conditions"])
        .expect("kubectl explain");
    assert!(explained.contains("ready"), "{explained}");
    // The table printers work too.
    let table = kubectl(&env, &["get", "endpoints,endpointslices"]).expect("kubectl get");
    assert!(
        table.contains("vm1-svc") && table.contains("10.244.0.7"),
        "{table}"
    );

    // A selector that matches nothing: Endpoints without subsets, an empty slice.
    let none = wait(|| async { endpoints("nothing") })
        .await
        .expect("endpoints of nothing");
    assert!(
        none["subsets"].as_array().is_none_or(Vec::is_empty),
        "{none}"
    );

    // Not Ready: the address moves to notReadyAddresses.
    env.vmis()
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        )
        .await
        .expect("not ready");
    wait(|| async {
        let ep = endpoints("vm1-svc")?;
        (ready_ips(&ep, "notReadyAddresses") == ["10.244.0.7"]
            && ready_ips(&ep, "addresses").is_empty())
        .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("address not moved to notReady: {:?}", endpoints("vm1-svc")));
    // A new address (the VMI moved): the Endpoints follow.
    env.set_phase("vm1", "Running").await;
    set_ip("10.244.0.9").await;
    wait(|| async {
        (ready_ips(&endpoints("vm1-svc")?, "addresses") == ["10.244.0.9"]).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("address not updated: {:?}", endpoints("vm1-svc")));
    // Stopped: no address.
    env.set_phase("vm1", "Succeeded").await;
    wait(|| async {
        endpoints("vm1-svc")?["subsets"]
            .as_array()
            .is_none_or(Vec::is_empty)
            .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("stopped VMI still listed: {:?}", endpoints("vm1-svc")));

    // The Service goes: so do its Endpoints and slices.
    kubectl(&env, &["delete", "service", "vm1-svc"]).expect("kubectl delete service");
    wait(|| async {
        let gone = kubectl(&env, &["get", "endpoints", "vm1-svc"]).is_err();
        let slices = kubectl_json(
            &env,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=vm1-svc",
                "-o",
                "json",
            ],
        )?;
        (gone && slices["items"].as_array().is_some_and(Vec::is_empty)).then_some(())
    })
    .await
    .expect("endpoints and slices of a deleted Service are gone");
}

/// What kube-apiserver refuses: a Service selector that is not a label map, and Endpoints a
/// user writes with addresses a Service must not forward to or ports out of range or named
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_selectors_and_user_written_endpoints_are_refused() {
    let env = Env::start().await;
    let svcs: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(env.client.clone(), "default");
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => (0, other.to_string()),
    };
    for sel in [
        json!({"bad key!": "x"}),
        json!({"app": "a b"}),
        json!({"app": "x".repeat(64)}),
    ] {
        let s: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": "bad"}, "spec": {"selector": sel, "ports": [{"port": 80}]}
        }))
        .expect("service");
        let err = svcs
            .create(&PostParams::default(), &s)
            .await
            .map(|_| ())
            .map_err(refused);
        assert!(
            matches!(&err, Err((422, m)) if m.contains("spec.selector")),
            "{sel}: {err:?}"
        );
    }
    let eps: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(env.client.clone(), "default");
    let cases = [
        (
            json!([{"addresses": [{"ip": "not-an-ip"}], "ports": [{"port": 80}]}]),
            "must be a valid IP address",
        ),
        (
            json!([{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 80}]}]),
            "loopback",
        ),
        (
            json!([{"addresses": [{"ip": "169.254.1.1"}], "ports": [{"port": 80}]}]),
            "link-local",
        ),
        (
            json!([{"addresses": [{"ip": "0.0.0.0"}], "ports": [{"port": 80}]}]),
            "unspecified",
        ),
        (
            json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 0}]}]),
            "between 1 and 65535",
        ),
        (
            json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 70000}]}]),
            "between 1 and 65535",
        ),
        (
            json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [
            {"name": "a", "port": 80}, {"name": "a", "port": 81}]}]),
            "Duplicate value",
        ),
        (
            json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [
            {"port": 80}, {"port": 81}]}]),
            "Required value",
        ),
        (
            json!([{"ports": [{"port": 80}]}]),
            "must specify `addresses` or `notReadyAddresses`",
        ),
    ];
    for (subsets, want) in cases {
        let e: k8s_openapi::api::core::v1::Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "manual"}, "subsets": subsets
        }))
        .expect("endpoints");
        let err = eps
            .create(&PostParams::default(), &e)
            .await
            .map(|_| ())
            .map_err(refused);
        assert!(
            matches!(&err, Err((422, m)) if m.contains(want)),
            "{subsets}: {err:?}"
        );
    }
    // A valid one, for a Service without a selector, is the user's: kept as written.
    let e: k8s_openapi::api::core::v1::Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "manual"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]
    }))
    .expect("endpoints");
    eps.create(&PostParams::default(), &e)
        .await
        .expect("valid endpoints");
    let s: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "manual"}, "spec": {"ports": [{"port": 5432}]}
    }))
    .expect("service");
    svcs.create(&PostParams::default(), &s)
        .await
        .expect("service without selector");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = kubectl_json(&env, &["get", "endpoints", "manual", "-o", "json"]).expect("get");
    assert_eq!(kept["subsets"][0]["addresses"][0]["ip"], "192.0.2.10");
}

/// A Service deleted while the controller was down leaves its Endpoints behind; the
/// controller's start-up sweep removes them, and never Endpoints a user wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_left_by_services_deleted_while_the_controller_was_down_are_removed() {
    // Without the controller: its own start-up sweep would race this one (CI once saw it
    // remove the leftover first, so this sweep counted 0).
    let env = Env::start_without_controller().await;
    let eps: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(env.client.clone(), "default");
    let subsets = json!([{"addresses": [{"ip": "192.0.2.20"}], "ports": [{"port": 80}]}]);
    for (name, labels) in [
        // What the controller made for a Service that is gone now.
        (
            "leftover",
            json!({"endpointslice.kubernetes.io/skip-mirror": "true"}),
        ),
        // A user's, for a Service they have not created yet.
        ("handwritten", json!({"app": "db"})),
    ] {
        let e: k8s_openapi::api::core::v1::Endpoints = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels}, "subsets": subsets
        }))
        .expect("endpoints");
        eps.create(&PostParams::default(), &e).await.expect(name);
    }
    let removed = kubevirt_controller::endpoints::sweep_leftovers(&env.client)
        .await
        .expect("sweep");
    assert_eq!(removed, 1);
    assert!(eps.get_opt("leftover").await.expect("get").is_none());
    assert!(eps.get_opt("handwritten").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_or_restore_in_progress_keeps_the_vm_from_starting() {
    let mut env = Env::start().await;
    env.finish_deletions();
    env.create_vm("held", "Manual").await;
    env.wait_printable("held", "Stopped").await;
    // A snapshot holds the VM (as the snapshot controller writes it); a start request (a
    // status write, which admission does not see) must not create the VMI.
    env.vms()
        .patch_status(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"snapshotInProgress": "snap",
                "stateChangeRequests": [{"action": "Start"}]}})),
        )
        .await
        .expect("hold and start");
    let failure = wait(|| async {
        let st = env.vms().get("held").await.ok()?.status?;
        st.conditions?
            .into_iter()
            .find(|c| c.r#type == "Failure" && c.status == "True")
    })
    .await
    .expect("a Failure condition says why the VM does not start");
    assert_eq!(failure.reason.as_deref(), Some("SnapshotInProgress"));
    assert_eq!(
        failure.message.as_deref(),
        Some("Cannot start VM until snapshot \"snap\" completes")
    );
    assert!(env.vmis().get_opt("held").await.expect("get").is_none());
    // The restore holds it the same way.
    env.vms()
        .patch_status(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"snapshotInProgress": null,
                "restoreInProgress": "rest"}})),
        )
        .await
        .expect("restore holds");
    let msg = wait(|| async {
        let st = env.vms().get("held").await.ok()?.status?;
        st.conditions?
            .into_iter()
            .find(|c| c.r#type == "Failure")
            .and_then(|c| c.message)
            .filter(|m| m.contains("restore"))
    })
    .await;
    assert_eq!(
        msg.as_deref(),
        Some("Cannot start VM until restore \"rest\" completes")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.vmis().get_opt("held").await.expect("get").is_none());
    // Released: the pending start goes ahead.
    env.vms()
        .patch_status(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"restoreInProgress": null}})),
        )
        .await
        .expect("release");
    env.wait_vmi("held", None).await;
}

fn snapshots(env: &Env) -> Api<kubevirt_api::VirtualMachineSnapshot> {
    Api::namespaced(env.client.clone(), "default")
}

fn restores(env: &Env) -> Api<kubevirt_api::VirtualMachineRestore> {
    Api::namespaced(env.client.clone(), "default")
}

fn clones(env: &Env) -> Api<kubevirt_api::VirtualMachineClone> {
    Api::namespaced(env.client.clone(), "default")
}

/// A stopped VM with labels, annotations, a MAC, a firmware UUID and serial; no claims (so no
/// CSI snapshotter is needed: its snapshot is ready at once).
async fn create_identity_vm(env: &Env, name: &str) {
    let vm: VirtualMachine = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"app": "web", "team/owner": "a"},
            "annotations": {"note": "n"}},
        "spec": {"runStrategy": "Halted", "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"domain": {
                "firmware": {"uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223", "serial": "S-1"},
                "devices": {"interfaces": [
                    {"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}]},
                "memory": {"guest": "64Mi"}},
                "networks": [{"name": "default", "pod": {}}]}}}
    }))
    .expect("vm");
    env.vms()
        .create(&PostParams::default(), &vm)
        .await
        .expect("create vm");
}

async fn snapshot_ready(env: &Env, vm: &str, name: &str) {
    let snap: kubevirt_api::VirtualMachineSnapshot = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}}
    }))
    .expect("snapshot");
    snapshots(env)
        .create(&PostParams::default(), &snap)
        .await
        .expect("create snapshot");
    wait(|| async {
        let s = snapshots(env).get(name).await.ok()?.status?;
        (s.ready_to_use == Some(true)).then_some(())
    })
    .await
    .expect("snapshot ready");
}

async fn restore_reason(env: &Env, name: &str) -> Option<String> {
    restores(env)
        .get(name)
        .await
        .ok()?
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.r#type == "Ready")?
        .reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_to_a_new_vm_creates_it_patched_and_refuses_hostile_patches() {
    let env = Env::start().await;
    create_identity_vm(&env, "src").await;
    snapshot_ready(&env, "src", "snap").await;
    let restore = |name: &str, target: &str, patches: serde_json::Value| {
        serde_json::from_value::<kubevirt_api::VirtualMachineRestore>(json!({
            "metadata": {"name": name},
            "spec": {"virtualMachineSnapshotName": "snap", "patches": patches,
                "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": target}}
        }))
        .expect("restore")
    };
    restores(&env)
        .create(
            &PostParams::default(),
            &restore(
                "to-new",
                "newvm",
                json!([r#"{"op": "add", "path": "/metadata/labels/restored", "value": "yes"}"#]),
            ),
        )
        .await
        .expect("create restore");
    let vm = wait(|| async { env.vms().get_opt("newvm").await.ok().flatten() })
        .await
        .expect("the restore creates the new VM");
    let labels = vm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("restored").map(String::as_str), Some("yes"));
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(vm.spec.run_strategy.as_deref(), Some("Halted"));
    assert!(vm
        .annotations()
        .get("restore.kubevirt.io/lastRestoreUID")
        .is_some_and(|v| v.starts_with("to-new-")));
    let done = wait(|| async {
        let s = restores(&env).get("to-new").await.ok()?.status?;
        (s.complete == Some(true)).then_some(())
    })
    .await;
    assert!(done.is_some(), "the restore completes");

    // Patches outside the VM's labels, annotations and spec are refused at admission.
    for (i, patch) in [
        r#"{"op": "replace", "path": "/metadata/name", "value": "other"}"#,
        r#"{"op": "replace", "path": "/metadata/namespace", "value": "kube-system"}"#,
        r#"{"op": "add", "path": "/status", "value": {"ready": true}}"#,
        r#"{"op": "move", "from": "/metadata/uid", "path": "/spec/x"}"#,
    ]
    .iter()
    .enumerate()
    {
        let name = format!("outside-{i}");
        let e = restores(&env)
            .create(
                &PostParams::default(),
                &restore(&name, &format!("outside-vm-{i}"), json!([patch])),
            )
            .await
            .expect_err("refused at admission");
        assert!(
            e.to_string()
                .contains("patching is valid only for elements under /spec/"),
            "{patch}: {e}"
        );
    }
    // Patches that admission lets through but that break the VM: refused by the controller,
    // naming the patch; no VM appears.
    let hostile = [
        (
            r#"{"op": "replace", "path": "/spec/template", "value": "not a template"}"#,
            "leaves no valid VirtualMachine",
        ),
        (
            r#"{"op": "remove", "path": "/spec/no/such/path"}"#,
            "does not apply",
        ),
        (
            r#"{"op": "explode", "path": "/spec/x"}"#,
            "is not a JSON patch operation",
        ),
        (
            r#"{"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/0/macAddress", "value": "02:00:00:00:00:01,romfile=/etc/passwd"}"#,
            "error creating VM",
        ),
    ];
    for (i, (patch, want)) in hostile.iter().enumerate() {
        let name = format!("hostile-{i}");
        let target = format!("hostile-vm-{i}");
        restores(&env)
            .create(
                &PostParams::default(),
                &restore(&name, &target, json!([patch])),
            )
            .await
            .expect("create restore");
        let reason = wait(|| async {
            restore_reason(&env, &name)
                .await
                .filter(|r| r.contains("error patching VM") || r.contains("error creating VM"))
        })
        .await
        .unwrap_or_else(|| panic!("restore {name} never refused {patch}"));
        assert!(reason.contains(want), "{name}: {reason:?} lacks {want:?}");
        if !want.starts_with("error creating") {
            assert!(
                reason.contains(&format!("patch 0 ({patch})")),
                "{name}: {reason:?} does not quote the patch"
            );
        }
        assert!(env.vms().get_opt(&target).await.expect("get").is_none());
        // Nothing was created for a VM that was refused: no restored claim is left behind.
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(env.client.clone(), "default");
        let left: Vec<String> = claims
            .list(&Default::default())
            .await
            .expect("list claims")
            .items
            .into_iter()
            .filter(|c| {
                c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("restore.kubevirt.io/name"))
                    .is_some_and(|n| *n == name)
            })
            .filter_map(|c| c.metadata.name)
            .collect();
        assert!(left.is_empty(), "{name} left claims {left:?}");
    }
    assert!(env.vms().get_opt("other").await.expect("get").is_none());
    // Patches over the snapshot's own VM would be dropped: such a restore is refused.
    restores(&env)
        .create(
            &PostParams::default(),
            &restore(
                "in-place-patched",
                "src",
                json!([r#"{"op": "add", "path": "/metadata/labels/x", "value": "y"}"#]),
            ),
        )
        .await
        .expect("create restore");
    let reason = wait(|| async {
        restore_reason(&env, "in-place-patched")
            .await
            .filter(|r| r.contains("spec.patches"))
    })
    .await
    .expect("an in-place restore with patches is refused");
    assert!(reason.contains("only to a restore to a new VM"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clone_of_a_vm_gets_new_identity_and_filtered_labels() {
    let env = Env::start().await;
    create_identity_vm(&env, "orig").await;
    let clone: kubevirt_api::VirtualMachineClone = serde_json::from_value(json!({
        "apiVersion": "clone.kubevirt.io/v1beta1", "kind": "VirtualMachineClone",
        "metadata": {"name": "c1"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "orig"},
            "labelFilters": ["*", "!team/*"],
            "annotationFilters": ["nothing-matches"],
            "patches": [r#"{"op": "add", "path": "/metadata/labels/cloned", "value": "true"}"#]}
    }))
    .expect("clone");
    let created = clones(&env)
        .create(&PostParams::default(), &clone)
        .await
        .expect("create clone");
    // The create mutator names the target.
    let target = created.spec.target.clone().expect("target").name;
    assert!(target.starts_with("clone-orig-") && target.len() == "clone-orig-".len() + 5);
    let st = wait(|| async {
        let s = clones(&env).get("c1").await.ok()?.status?;
        (s.phase.as_deref() == Some("Succeeded") && s.restore_name.is_none()).then_some(s)
    })
    .await;
    let Some(st) = st else {
        let c = clones(&env).get("c1").await.expect("clone");
        let r = restores(&env)
            .list(&ListParams::default())
            .await
            .expect("restores");
        let sn = snapshots(&env)
            .list(&ListParams::default())
            .await
            .expect("snapshots");
        panic!(
            "the clone does not succeed: {:?}\nrestores: {:?}\nsnapshots: {:?}",
            c.status,
            r.items
                .iter()
                .map(|r| (&r.spec, &r.status))
                .collect::<Vec<_>>(),
            sn.items.iter().map(|s| &s.status).collect::<Vec<_>>()
        );
    };
    assert_eq!(st.target_name.as_deref(), Some(target.as_str()));
    let ready = st
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.r#type == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("True", Some("Ready"))
    );
    let vm = env.vms().get(&target).await.expect("target VM");
    let labels = vm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(labels.get("cloned").map(String::as_str), Some("true"));
    assert!(!labels.contains_key("team/owner"), "filtered out");
    assert!(!vm.annotations().contains_key("note"), "filtered out");
    let t = vm.spec.template.spec.clone().expect("template");
    let fw = t.domain.firmware.clone().unwrap_or_default();
    // The firmware UUID is not the source's (the VM controller writes one derived from the
    // clone's name); the serial is gone.
    assert_ne!(
        fw.uuid.as_deref(),
        Some("5d307ca9-b3ef-428c-8861-06e72d69f223")
    );
    assert_eq!(fw.serial, None);
    let ifs = t.domain.devices.interfaces.clone().unwrap_or_default();
    assert_eq!(ifs[0].mac_address, None, "a new MAC is generated at start");
    assert_eq!(vm.spec.run_strategy.as_deref(), Some("Halted"));
    // The temporary snapshot and restore are gone; the source is untouched.
    let snaps_left = wait(|| async {
        let l = snapshots(&env).list(&ListParams::default()).await.ok()?;
        l.items.is_empty().then_some(())
    })
    .await;
    assert!(snaps_left.is_some(), "the temporary snapshot is deleted");
    assert!(restores(&env)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty());
    let src = env.vms().get("orig").await.expect("source");
    assert_eq!(
        src.spec
            .template
            .spec
            .and_then(|s| s.domain.firmware)
            .and_then(|f| f.uuid)
            .as_deref(),
        Some("5d307ca9-b3ef-428c-8861-06e72d69f223")
    );
    // Started, the clone's VMI has its own firmware UUID (derived from its name).
    env.set_strategy(&target, "Always").await;
    let vmi = env.wait_vmi(&target, None).await;
    let uuid = vmi.spec.domain.firmware.and_then(|f| f.uuid);
    assert!(uuid.is_some());
    assert_ne!(
        uuid.as_deref(),
        Some("5d307ca9-b3ef-428c-8861-06e72d69f223")
    );

    // kubectl sees the clone with KubeVirt's columns.
    let out = kubectl(&env, &["get", "vmclone", "c1"]).expect("kubectl get vmclone");
    assert!(out.contains("Succeeded") && out.contains(&target), "{out}");

    // A clone of a VM that does not exist waits (Pending) without a phase change.
    let missing: kubevirt_api::VirtualMachineClone = serde_json::from_value(json!({
        "metadata": {"name": "c2"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "ghost"},
            "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "dst2"}}
    }))
    .expect("clone");
    clones(&env)
        .create(&PostParams::default(), &missing)
        .await
        .expect("create clone");
    let pending = wait(|| async {
        let s = clones(&env).get("c2").await.ok()?.status?;
        s.conditions?
            .into_iter()
            .find(|c| c.r#type == "Progressing" && c.reason.as_deref() == Some("Pending"))
            .map(|_| s.phase)
    })
    .await
    .expect("Pending");
    assert_eq!(pending, None);

    // A clone whose user patch is hostile waits with the restore's reason, naming the patch.
    let bad: kubevirt_api::VirtualMachineClone = serde_json::from_value(json!({
        "metadata": {"name": "c3"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "orig"},
            "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "dst3"},
            "patches": [r#"{"op": "replace", "path": "/metadata/name", "value": "x"}"#]}
    }))
    .expect("clone");
    clones(&env)
        .create(&PostParams::default(), &bad)
        .await
        .expect("create clone");
    let reason = wait(|| async {
        let s = clones(&env).get("c3").await.ok()?.status?;
        s.conditions?
            .into_iter()
            .find(|c| c.r#type == "Ready")?
            .reason
            .filter(|r| r.contains("/metadata/name"))
    })
    .await
    .expect("the clone reports the refused patch");
    assert!(reason.contains("under /spec/"), "{reason}");
    assert!(env.vms().get_opt("dst3").await.expect("get").is_none());
}

/// A VMI waits, unplaced, for a claim that does not exist or is not bound (KubeVirt's and
/// kube-scheduler's words), and then goes to the node its volume is pinned to even when another
/// node is emptier; a volume pinned to no node that exists keeps it off every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmi_waits_for_its_claim_and_goes_where_its_volume_is() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let env = Env::start().await;
    add_node(&env, "node02", "2099-01-01T00:00:00Z").await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), "default");
    let pvs: Api<PersistentVolume> = Api::all(env.client.clone());
    let vmi_on = |name: &str, claim: &str| -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name},
            "spec": {"domain": {"devices": {"disks": [{"name": "d", "disk": {}}]},
                                "memory": {"guest": "64Mi"}},
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}
        }))
        .expect("vmi")
    };
    let waiting_with = |name: &'static str, phase: &'static str, want: String| {
        let env = &env;
        async move {
            wait(|| async {
                let v = env.vmis().get_opt(name).await.ok().flatten()?;
                let c = pod_scheduled(&v)?;
                (phase_of(&v) == phase && c.2 == want).then_some(v)
            })
            .await
            .unwrap_or_else(|| panic!("{name} never waited {phase} with {want:?}"))
        }
    };
    // node01 is busier: without volumes, a VMI would go to node02.
    for i in 0..2 {
        let busy: VirtualMachineInstance = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": format!("busy{i}")},
            "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}},
                     "nodeSelector": {"kubernetes.io/hostname": NODE}}
        }))
        .expect("vmi");
        env.vmis()
            .create(&PostParams::default(), &busy)
            .await
            .expect("busy");
        env.wait_scheduled(&format!("busy{i}")).await;
    }

    env.vmis()
        .create(&PostParams::default(), &vmi_on("disky", "data"))
        .await
        .expect("create");
    // KubeVirt makes no launcher Pod for it: the VMI stays Pending.
    let v = waiting_with(
        "disky",
        "Pending",
        "PVC default/data does not exist, waiting for it to appear".into(),
    )
    .await;
    let sync = condition(&v, "Synchronized").expect("Synchronized");
    assert_eq!(
        (sync.status.as_str(), sync.reason.as_deref()),
        ("False", Some("FailedPvcNotFound"))
    );

    // The claim appears, unbound (no provisioner runs here): kube-scheduler's verdict.
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("pvc");
    let claim = pvcs
        .create(&PostParams::default(), &claim)
        .await
        .expect("claim");
    let v = waiting_with(
        "disky",
        "Scheduling",
        "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims.".into(),
    )
    .await;
    assert!(condition(&v, "Synchronized").is_none());

    // A local volume on node01 binds it (as a provisioner would): the VMI goes to node01.
    let pin = |pv: &str, host: &str, claim: &PersistentVolumeClaim| -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "local": {"path": format!("/nonexistent/{pv}")},
                     "claimRef": {"namespace": "default", "name": claim.name_any(),
                                  "uid": claim.metadata.uid},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}}
        }))
        .expect("pv")
    };
    let bind = |claim: &'static str, pv: &'static str| {
        let pvcs = pvcs.clone();
        async move {
            pvcs.patch(
                claim,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"volumeName": pv}})),
            )
            .await
            .expect("volumeName");
            pvcs.patch_status(
                claim,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Bound"}})),
            )
            .await
            .expect("Bound");
        }
    };
    pvs.create(&PostParams::default(), &pin("pv-data", NODE, &claim))
        .await
        .expect("pv");
    bind("data", "pv-data").await;
    let v = env.wait_scheduled("disky").await;
    assert_eq!(
        v.status.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(NODE),
        "the VMI went where its volume is not"
    );
    assert_eq!(pod_scheduled(&v), None);

    // A volume pinned to a node that is not there: no node takes the VMI.
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "far"},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("pvc");
    let claim = pvcs
        .create(&PostParams::default(), &claim)
        .await
        .expect("claim");
    pvs.create(&PostParams::default(), &pin("pv-far", "node09", &claim))
        .await
        .expect("pv");
    bind("far", "pv-far").await;
    env.vmis()
        .create(&PostParams::default(), &vmi_on("stranded", "far"))
        .await
        .expect("create");
    waiting_with(
        "stranded",
        "Scheduling",
        "0/2 nodes are available: 2 node(s) had volume node affinity conflict.".into(),
    )
    .await;

    // A hotplugged volume whose claim is not there does not hold the VMI back.
    let mut hot = vmi_on("hot", "not-yet");
    if let Some(c) = hot
        .spec
        .volumes
        .as_mut()
        .and_then(|v| v.first_mut())
        .and_then(|v| v.persistent_volume_claim.as_mut())
    {
        c.hotpluggable = Some(true);
    }
    env.vmis()
        .create(&PostParams::default(), &hot)
        .await
        .expect("create");
    env.wait_scheduled("hot").await;
}
