//! MigrationPolicy: KubeVirt's migrationpolicy-admitter.go.

use crate::admission::Request;
use crate::field::{FieldError, Path};
use crate::quantity::Quantity;
use crate::validation::ValidationConfig;
use crate::MigrationPolicy;

pub const STALL_DETECTION_GATE: &str = "MigrationStallDetection";
/// KubeVirt's `StallDetectorFactorPrecision`: decimal places a factor may have.
const FACTOR_PRECISION: i32 = 3;

pub fn rules(
    p: &MigrationPolicy,
    old: Option<&MigrationPolicy>,
    _req: &Request,
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = Path::root("spec");
    let s = &p.spec;
    if s.completion_timeout_per_gi_b.is_some_and(|v| v < 0) {
        errs.push(FieldError::invalid(
            spec.child("completionTimeoutPerGiB"),
            "must not be negative",
        ));
    }
    let gate = cfg.gate(STALL_DETECTION_GATE);
    if s.max_downtime_ms.is_some() {
        let old_v = old.and_then(|o| o.spec.max_downtime_ms);
        if old_v != s.max_downtime_ms && !gate {
            errs.push(FieldError::invalid(
                spec.child("maxDowntimeMs"),
                format!("maxDowntimeMs cannot be modified without enabling the {STALL_DETECTION_GATE} feature gate"),
            ));
        }
    }
    if let Some(sd) = s
        .experimental
        .as_ref()
        .and_then(|e| e.stall_detector.as_ref())
    {
        let field = spec.child("experimental").child("stallDetector");
        let old_sd = old
            .and_then(|o| o.spec.experimental.as_ref())
            .and_then(|e| e.stall_detector.as_ref());
        if old_sd != Some(sd) && !gate {
            errs.push(FieldError::invalid(
                field.clone(),
                format!("experimental.stallDetector cannot be modified without enabling the {STALL_DETECTION_GATE} feature gate"),
            ));
        }
        let factors = [
            ("ewmaAlpha", &sd.ewma_alpha, 0.0, 1.0, true),
            (
                "precopyPossibleFactor",
                &sd.precopy_possible_factor,
                1.0,
                f64::MAX,
                false,
            ),
            (
                "patienceWindowDecayFactor",
                &sd.patience_window_decay_factor,
                0.0,
                1.0,
                false,
            ),
            (
                "completionTimeoutFactor",
                &sd.completion_timeout_factor,
                1.0,
                f64::MAX,
                false,
            ),
        ];
        for (name, value, min, max, exclusive_min) in factors {
            if let Some(v) = value {
                if let Err(e) = check_factor(&v.0, min, max, exclusive_min) {
                    errs.push(FieldError::invalid(field.child(name), e));
                }
            }
        }
    }
    if let Some(bw) = &s.bandwidth_per_migration {
        if Quantity::from_k8s(bw).is_ok_and(|q| q.is_negative()) {
            errs.push(FieldError::invalid(
                spec.child("bandwidthPerMigration"),
                "must not be negative",
            ));
        }
    }
    errs
}

/// KubeVirt's `ParseFactor` and `validateStallDetectorFactor`.
fn check_factor(s: &str, min: f64, max: f64, exclusive_min: bool) -> Result<(), String> {
    let t = s.trim();
    let v: f64 = t.parse().map_err(|_| {
        format!("invalid factor {t:?}: strconv.ParseFloat: parsing {t:?}: invalid syntax")
    })?;
    if t.is_empty() || !v.is_finite() {
        return Err(format!("invalid factor {t:?}"));
    }
    let scale = 10f64.powi(FACTOR_PRECISION);
    if ((v * scale).round() / scale - v).abs() > f64::EPSILON * v.abs().max(1.0) {
        return Err(format!(
            "invalid factor {t:?}: must have at most {FACTOR_PRECISION} decimal places"
        ));
    }
    if exclusive_min {
        if v <= 0.0 {
            return Err("must be greater than 0".into());
        }
    } else if v < min {
        return Err(format!("must be greater than or equal to {min}"));
    }
    if v > max {
        return Err(format!("must be less than or equal to {max}"));
    }
    Ok(())
}
