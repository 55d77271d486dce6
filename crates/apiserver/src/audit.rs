//! The audit log: one JSON line per write request (who, verb, resource, result), as
//! kube-apiserver's audit backend writes at the `Metadata` level. The file (`audit.log` in
//! the data directory, mode 0600) is rotated to `audit.log.1` at 100 MiB.

use crate::auth::User;
use crate::rbac::Attributes;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const AUDIT_FILE: &str = "audit.log";
const MAX_BYTES: u64 = 100 * 1024 * 1024;

#[derive(Clone)]
pub struct AuditLog(Arc<parking_lot::Mutex<(PathBuf, Option<std::fs::File>)>>);

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl AuditLog {
    pub fn open(data_dir: &Path) -> std::io::Result<AuditLog> {
        let path = data_dir.join(AUDIT_FILE);
        let f = open(&path)?;
        Ok(AuditLog(Arc::new(parking_lot::Mutex::new((path, Some(f))))))
    }

    /// Records one request; a failure to write is logged, never fails the request.
    pub fn record(&self, user: &User, a: &Attributes, code: u16) {
        let mut line = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "stage": "ResponseComplete",
            "requestReceivedTimestamp": crate::objects::now(),
            "verb": a.verb,
            "requestURI": a.path,
            "user": user.info(),
            "responseStatus": {"code": code},
        });
        if a.resource_request {
            line["objectRef"] = json!({
                "resource": a.resource, "subresource": a.subresource, "apiGroup": a.group,
                "namespace": a.namespace, "name": a.name,
            });
        }
        let mut text = line.to_string();
        text.push('\n');
        let mut guard = self.0.lock();
        let (path, file) = &mut *guard;
        if file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() > MAX_BYTES)
        {
            let _ = std::fs::rename(&*path, path.with_extension("log.1"));
            *file = open(path).ok();
        }
        if let Some(f) = file.as_mut() {
            if let Err(e) = f.write_all(text.as_bytes()) {
                tracing::warn!(error = %e, "writing the audit log");
            }
        }
    }
}
