//! KubeVirt's migrationpolicy-admitter_test.go.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn policy(spec: Value) -> Value {
    let mut spec = spec;
    spec["selectors"] = json!({});
    json!({"apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
           "metadata": {"name": "p"}, "spec": spec})
}

fn sd(v: Value) -> Value {
    policy(json!({"experimental": {"stallDetector": v}}))
}

#[test]
fn migration_policy_table() {
    const GATE: &str = "MigrationStallDetection";
    check(vec![
        Case::new("negative BandwidthPerMigration", policy(json!({"bandwidthPerMigration": "-10Mi"})))
            .refused("spec.bandwidthPerMigration", "must not be negative"),
        Case::new("negative CompletionTimeoutPerGiB", policy(json!({"completionTimeoutPerGiB": -1})))
            .refused("spec.completionTimeoutPerGiB", "must not be negative"),
        Case::new("invalid precopyPossibleFactor", sd(json!({"precopyPossibleFactor": "abc"}))).gates(&[GATE])
            .refused("spec.experimental.stallDetector.precopyPossibleFactor", "invalid factor \"abc\""),
        Case::new("precopyPossibleFactor below minimum", sd(json!({"precopyPossibleFactor": "0.5"}))).gates(&[GATE])
            .refused("spec.experimental.stallDetector.precopyPossibleFactor", "must be greater than or equal to 1"),
        Case::new("patienceWindowDecayFactor above maximum", sd(json!({"patienceWindowDecayFactor": "1.5"}))).gates(&[GATE])
            .refused("spec.experimental.stallDetector.patienceWindowDecayFactor", "must be less than or equal to 1"),
        Case::new("ewmaAlpha of zero", sd(json!({"ewmaAlpha": "0"}))).gates(&[GATE])
            .refused("spec.experimental.stallDetector.ewmaAlpha", "must be greater than 0"),
        Case::new("a factor with too many decimals", sd(json!({"ewmaAlpha": "0.12345"}))).gates(&[GATE])
            .refused("spec.experimental.stallDetector.ewmaAlpha", "must have at most 3 decimal places"),
        Case::new("greater than zero BandwidthPerMigration", policy(json!({"bandwidthPerMigration": "10Mi"}))),
        Case::new("greater than zero CompletionTimeoutPerGiB", policy(json!({"completionTimeoutPerGiB": 10}))),
        Case::new("zero CompletionTimeoutPerGiB", policy(json!({"completionTimeoutPerGiB": 0}))),
        Case::new("valid MaxDowntimeMs", policy(json!({"maxDowntimeMs": 300}))).gates(&[GATE]),
        Case::new("zero BandwidthPerMigration", policy(json!({"bandwidthPerMigration": "0"}))),
        Case::new("empty spec", policy(json!({}))),
        Case::new("completionTimeoutFactor without upper bound", sd(json!({"completionTimeoutFactor": "1000"}))).gates(&[GATE]),
        Case::new("precopyPossibleFactor without upper bound", sd(json!({"precopyPossibleFactor": "1000"}))).gates(&[GATE]),
        // The feature gate, off by default.
        Case::new("maxDowntimeMs: reject on create", policy(json!({"maxDowntimeMs": 900})))
            .refused("spec.maxDowntimeMs", "maxDowntimeMs cannot be modified without enabling the MigrationStallDetection feature gate"),
        Case::new("maxDowntimeMs: allow unchanged update", policy(json!({"maxDowntimeMs": 900})))
            .old(policy(json!({"maxDowntimeMs": 900}))),
        Case::new("maxDowntimeMs: reject changing value on update", policy(json!({"maxDowntimeMs": 900})))
            .old(policy(json!({"maxDowntimeMs": 500})))
            .refused("spec.maxDowntimeMs", "feature gate"),
        Case::new("stallDetector: reject on create", sd(json!({"ewmaAlpha": "0.5"})))
            .refused("spec.experimental.stallDetector", "experimental.stallDetector cannot be modified without enabling the MigrationStallDetection feature gate"),
        Case::new("stallDetector: allow unchanged update", sd(json!({"ewmaAlpha": "0.5"})))
            .old(sd(json!({"ewmaAlpha": "0.5"}))),
        Case::new("stallDetector: reject changing value on update", sd(json!({"ewmaAlpha": "0.5"})))
            .old(sd(json!({"ewmaAlpha": "0.2"})))
            .refused("spec.experimental.stallDetector", "feature gate"),
    ]);
}
