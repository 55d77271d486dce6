//! CDI's metrics (`doc/metrics.md` in containerized-data-importer) for what this process runs:
//! the progress of each import and clone (CDI's importer and cloner pods export
//! `kubevirt_cdi_{import,clone}_progress_total{ownerUID}`, the percent done, for as long as
//! the pod lives; here the series lives for as long as the import task's attempt runs), one
//! `kubevirt_cdi_storageprofile_info` row per StorageProfile, and `kubevirt_cdi_cr_ready`.
//! Registered in the process registry (`kubevirt_runtime::metrics`) by [`cdi`], served by the
//! API server's `/metrics`. The table is `docs/observability.md`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

/// What kind of population a progress series counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Population {
    /// An import (http, s3, registry, blank): `kubevirt_cdi_import_progress_total`.
    Import,
    /// A host-assisted clone: `kubevirt_cdi_clone_progress_total`.
    Clone,
}

/// A StorageProfile's `kubevirt_cdi_storageprofile_info` labels, as CDI's
/// storage-profile controller computes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileInfo {
    pub storageclass: String,
    pub provisioner: String,
    /// Every claim property set has access modes and a volume mode (none at all: incomplete).
    pub complete: bool,
    /// `storageclass.kubernetes.io/is-default-class: "true"`.
    pub default: bool,
    /// `storageclass.kubevirt.io/is-default-virt-class: "true"`.
    pub virtdefault: bool,
    /// A claim property set offers `ReadWriteMany`.
    pub rwx: bool,
    /// Cloned by snapshot or CSI clone rather than by copying.
    pub smartclone: bool,
    /// CDI's `(!rwx && !single-node OpenShift) || !smartclone`.
    pub degraded: bool,
}

/// The state behind CDI's families.
#[derive(Debug, Default)]
pub struct Cdi {
    ready: Mutex<bool>,
    /// Percent done by owner (the DataVolume's PVC) uid.
    progress: Mutex<BTreeMap<String, (Population, f64)>>,
    /// By StorageClass name.
    profiles: Mutex<BTreeMap<String, ProfileInfo>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's CDI metrics, registered on first use.
pub fn cdi() -> &'static Arc<Cdi> {
    static C: LazyLock<Arc<Cdi>> = LazyLock::new(|| {
        let c = Arc::new(Cdi::default());
        kubevirt_runtime::metrics::register_collector(Box::new(Collector2(c.clone())));
        c
    });
    &C
}

impl Cdi {
    /// `kubevirt_cdi_cr_ready`: 1 once the CDI controllers run.
    pub fn set_ready(&self, ready: bool) {
        *lock(&self.ready) = ready;
    }

    /// The percent done of the population of the claim `owner_uid` (0..=100; it only goes up
    /// within one attempt, so the counter is monotonic as CDI's).
    pub fn set_progress(&self, what: Population, owner_uid: &str, percent: f64) {
        if owner_uid.is_empty() || !percent.is_finite() {
            return;
        }
        lock(&self.progress).insert(owner_uid.to_string(), (what, percent.clamp(0.0, 100.0)));
    }

    /// The attempt for `owner_uid` ended: its series goes, as CDI's with its pod.
    pub fn forget_progress(&self, owner_uid: &str) {
        lock(&self.progress).remove(owner_uid);
    }

    /// The profile of a StorageClass, replacing its previous row.
    pub fn set_profile(&self, info: ProfileInfo) {
        lock(&self.profiles).insert(info.storageclass.clone(), info);
    }

    /// The StorageClass is gone: its row goes.
    pub fn forget_profile(&self, storageclass: &str) {
        lock(&self.profiles).remove(storageclass);
    }

    /// Every family, for a collector to encode.
    pub fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let progress = lock(&self.progress).clone();
        for (what, name, help) in [
            (
                Population::Import,
                "kubevirt_cdi_import_progress",
                "The import progress in percentage",
            ),
            (
                Population::Clone,
                "kubevirt_cdi_clone_progress",
                "The clone progress in percentage",
            ),
        ] {
            let rows: Vec<_> = progress.iter().filter(|(_, (w, _))| *w == what).collect();
            if rows.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (uid, (_, percent)) in rows {
                let labels = vec![("ownerUID", uid.as_str())];
                ConstCounter::new(*percent).encode(family.encode_family(&labels)?)?;
            }
        }
        let profiles = lock(&self.profiles).clone();
        if !profiles.is_empty() {
            let mut family = encoder.encode_descriptor(
                "kubevirt_cdi_storageprofile_info",
                "`StorageProfiles` info labels: `storageclass`, `provisioner`, `complete` indicates if all storage profiles recommended PVC settings are complete, `default` indicates if it's the Kubernetes default storage class, `virtdefault` indicates if it's the default virtualization storage class, `rwx` indicates if the storage class supports `ReadWriteMany`, `smartclone` indicates if it supports snapshot or CSI based clone, `degraded` indicates it is not optimal for virtualization",
                None,
                MetricType::Gauge,
            )?;
            for p in profiles.values() {
                let b = |v: bool| if v { "true" } else { "false" };
                let labels = vec![
                    ("storageclass", p.storageclass.as_str()),
                    ("provisioner", p.provisioner.as_str()),
                    ("complete", b(p.complete)),
                    ("default", b(p.default)),
                    ("virtdefault", b(p.virtdefault)),
                    ("rwx", b(p.rwx)),
                    ("smartclone", b(p.smartclone)),
                    ("degraded", b(p.degraded)),
                ];
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let ready = i64::from(*lock(&self.ready));
        let family = encoder.encode_descriptor(
            "kubevirt_cdi_cr_ready",
            "CDI install ready",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(ready).encode(family)?;
        Ok(())
    }
}

/// The registry's handle on [`Cdi`].
#[derive(Debug)]
struct Collector2(Arc<Cdi>);

impl Collector for Collector2 {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[derive(Debug)]
    struct Local(Arc<Cdi>);
    impl Collector for Local {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            self.0.encode(encoder)
        }
    }

    fn exposition(c: &Arc<Cdi>) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(Local(c.clone())));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).expect("encode");
        out
    }

    /// CDI's names, types, labels and help texts; a progress series lives while its attempt
    /// runs; a profile row is replaced, not added to; a hostile label value cannot forge a
    /// series.
    #[test]
    fn cdi_families_have_cdis_names_types_and_labels() {
        let c = Arc::new(Cdi::default());
        c.set_ready(true);
        c.set_progress(Population::Import, "uid-1", 45.5);
        c.set_progress(Population::Clone, "uid-2", 150.0);
        c.set_progress(Population::Import, "", 10.0);
        c.set_progress(Population::Import, "uid-nan", f64::NAN);
        let profile = ProfileInfo {
            storageclass: "local-path".into(),
            provisioner: "rancher.io/local-path".into(),
            complete: true,
            default: false,
            virtdefault: false,
            rwx: false,
            smartclone: false,
            degraded: true,
        };
        c.set_profile(ProfileInfo {
            default: true,
            ..profile.clone()
        });
        c.set_profile(profile);
        c.set_profile(ProfileInfo {
            storageclass: "evil\"} 1\nkubevirt_cdi_cr_ready{x=\"".into(),
            provisioner: "x".into(),
            complete: false,
            default: false,
            virtdefault: false,
            rwx: false,
            smartclone: false,
            degraded: true,
        });
        let text = exposition(&c);
        for line in [
            "# HELP kubevirt_cdi_import_progress_total The import progress in percentage",
            "# TYPE kubevirt_cdi_import_progress_total counter",
            "kubevirt_cdi_import_progress_total{ownerUID=\"uid-1\"} 45.5",
            "# HELP kubevirt_cdi_clone_progress_total The clone progress in percentage",
            "# TYPE kubevirt_cdi_clone_progress_total counter",
            "kubevirt_cdi_clone_progress_total{ownerUID=\"uid-2\"} 100.0",
            "# TYPE kubevirt_cdi_storageprofile_info gauge",
            "kubevirt_cdi_storageprofile_info{storageclass=\"local-path\",provisioner=\"rancher.io/local-path\",complete=\"true\",default=\"false\",virtdefault=\"false\",rwx=\"false\",smartclone=\"false\",degraded=\"true\"} 1",
            "# HELP kubevirt_cdi_cr_ready CDI install ready",
            "# TYPE kubevirt_cdi_cr_ready gauge",
            "kubevirt_cdi_cr_ready 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert_eq!(
            text.matches("storageclass=\"local-path\"").count(),
            1,
            "{text}"
        );
        assert!(
            !text.contains("uid-nan") && !text.contains("ownerUID=\"\""),
            "{text}"
        );
        // The hostile class name stays inside its label value.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("kubevirt_cdi_cr_ready"))
                .count(),
            1,
            "{text}"
        );
        c.forget_progress("uid-1");
        c.forget_profile("local-path");
        c.set_ready(false);
        let text = exposition(&c);
        assert!(
            !text.contains("uid-1") && !text.contains("\"local-path\""),
            "{text}"
        );
        assert!(text.contains("kubevirt_cdi_clone_progress_total{ownerUID=\"uid-2\"}"));
        assert!(
            text.lines().any(|l| l == "kubevirt_cdi_cr_ready 0"),
            "{text}"
        );
    }

    /// CDI's labels of our local-path class and of a class we know nothing about.
    #[test]
    fn storage_profile_labels_follow_cdis_rules() {
        use k8s_openapi::api::storage::v1::StorageClass;
        let class = |name: &str, provisioner: &str, ann: &[(&str, &str)]| {
            let mut c = StorageClass {
                provisioner: provisioner.into(),
                ..Default::default()
            };
            c.metadata.name = Some(name.into());
            c.metadata.annotations = Some(
                ann.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            c
        };
        let ours = class(
            crate::STORAGE_CLASS,
            crate::PROVISIONER_NAME,
            &[("storageclass.kubernetes.io/is-default-class", "true")],
        );
        let p = crate::storageprofile::profile_info(&ours);
        assert_eq!(
            (
                p.complete,
                p.default,
                p.virtdefault,
                p.rwx,
                p.smartclone,
                p.degraded
            ),
            (true, true, false, false, false, true)
        );
        let other = class(
            "nfs",
            "nfs.csi.k8s.io",
            &[("storageclass.kubevirt.io/is-default-virt-class", "true")],
        );
        let p = crate::storageprofile::profile_info(&other);
        assert_eq!(p.provisioner, "nfs.csi.k8s.io");
        assert_eq!(
            (p.complete, p.default, p.virtdefault, p.degraded),
            (false, false, true, true)
        );
    }
}
