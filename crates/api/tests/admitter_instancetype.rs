//! KubeVirt's pkg/instancetype/webhooks/admitter_test.go and
//! pkg/instancetype/preference/webhooks/admitter_test.go, for the namespaced and cluster kinds.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn it(kind: &str, memory: Value) -> Value {
    json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": kind,
           "metadata": {"name": "i", "namespace": "default"},
           "spec": {"cpu": {"guest": 1}, "memory": memory}})
}

fn pref(kind: &str, cpu: Value) -> Value {
    json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": kind,
           "metadata": {"name": "p", "namespace": "default"}, "spec": {"cpu": cpu}})
}

#[test]
fn instancetype_table() {
    let mut cases = Vec::new();
    for kind in [
        "VirtualMachineInstancetype",
        "VirtualMachineClusterInstancetype",
    ] {
        cases.extend([
            Case::new("should accept valid instancetype", it(kind, json!({"guest": "128Mi"}))),
            Case::new("negative overcommit percent", it(kind, json!({"guest": "128Mi", "overcommitPercent": -15})))
                .refused("spec.memory.overcommitPercent", "spec.memory.overcommitPercent '-15': must be in range between 0 and 100."),
            Case::new("over 100 percent overcommit", it(kind, json!({"guest": "128Mi", "overcommitPercent": 150})))
                .refused("spec.memory.overcommitPercent", "spec.memory.overcommitPercent '150': must be in range between 0 and 100."),
            Case::new("should reject specs with memory overcommit and hugepages",
                it(kind, json!({"guest": "128Mi", "overcommitPercent": 15, "hugepages": {"pageSize": "2Mi"}})))
                .refused("spec.memory.overcommitPercent", "spec.memory.overcommitPercent and spec.memory.hugepages should not be requested together."),
        ]);
    }
    check(cases);
}

#[test]
fn preference_table() {
    let mut cases = Vec::new();
    for kind in [
        "VirtualMachinePreference",
        "VirtualMachineClusterPreference",
    ] {
        cases.extend([
            Case::new("should accept valid preference", pref(kind, json!({"preferredCPUTopology": "cores"}))),
            Case::new("should reject unsupported PreferredCPUTopology value", pref(kind, json!({"preferredCPUTopology": "foo"})))
                .refused("spec.cpu.preferredCPUTopology", "unknown preferredCPUTopology foo"),
            Case::new("unsupported SpreadOptions Across value with spread",
                pref(kind, json!({"preferredCPUTopology": "spread", "spreadOptions": {"across": "foo"}})))
                .refused("spec.cpu.spreadOptions.across", "across foo is not supported"),
            Case::new("unsupported SpreadOptions Across value with preferSpread",
                pref(kind, json!({"preferredCPUTopology": "preferSpread", "spreadOptions": {"across": "foo"}})))
                .refused("spec.cpu.spreadOptions.across", "across foo is not supported"),
            Case::new("CoresThreads with a ratio of 3 with spread",
                pref(kind, json!({"preferredCPUTopology": "spread", "spreadOptions": {"across": "CoresThreads", "ratio": 3}})))
                .refused("spec.cpu.spreadOptions.ratio", "only a ratio of 2 (1 core 2 threads) is allowed when spreading vCPUs over cores and threads"),
            Case::new("CoresThreads with a ratio of 3 with preferSpread",
                pref(kind, json!({"preferredCPUTopology": "preferSpread", "spreadOptions": {"across": "CoresThreads", "ratio": 3}})))
                .refused("spec.cpu.spreadOptions.ratio", "only a ratio of 2"),
            Case::new("CoresThreads with the default ratio",
                pref(kind, json!({"preferredCPUTopology": "spread", "spreadOptions": {"across": "CoresThreads"}}))),
            Case::new("a deprecated topology is still accepted", pref(kind, json!({"preferredCPUTopology": "preferSockets"}))),
        ]);
    }
    check(cases);
}
