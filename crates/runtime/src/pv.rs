//! Where a PersistentVolume's data can be reached from: shared by every component that opens a
//! claim's volume on its own host (the node agent for disks and memory dumps, CDI for imports,
//! uploads, clones and exports).

use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use kube::api::Api;
use kube::Client;

/// `Some(why)` when PersistentVolume `pv` is pinned to other nodes than `node` (its required
/// `nodeAffinity`, judged against the Node's labels; a Node not registered yet is judged by its
/// name and hostname label). Its data is not here: a local volume's path on this node would be
/// another volume's, or nothing.
pub async fn off_node(
    client: &Client,
    pv: &PersistentVolume,
    node: &str,
) -> kube::Result<Option<String>> {
    if pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_none()
    {
        return Ok(None);
    }
    let this = Api::<Node>::all(client.clone())
        .get_opt(node)
        .await?
        .unwrap_or_else(|| kubevirt_api::core_kinds::bare_node(node));
    Ok(
        (!kubevirt_api::core_kinds::pv_fits_node(pv, &this)).then(|| {
            format!(
                "is not reachable from node {node}: its spec.nodeAffinity pins it to other nodes"
            )
        }),
    )
}

/// Why a provisioned volume's data was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("not one of the provisioner's volumes: {0}")]
    NotOurs(#[from] crate::host_path::HostPathError),
    #[error("removing {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Removes the data of the local-path provisioner's volume at `path` (its directory, or its
/// raw file for a Block volume), only when it is a direct child of the provisioner's `root`
/// ([`crate::host_path::provisioned_volume`]). Already gone is done.
pub async fn remove_provisioned(
    root: &std::path::Path,
    path: &std::path::Path,
) -> Result<(), RemoveError> {
    let p = crate::host_path::provisioned_volume(root, path)?;
    let target = p.clone();
    let removed = tokio::task::spawn_blocking(move || match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&target),
        Ok(_) => std::fs::remove_file(&target),
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| RemoveError::Io {
        path: p.clone(),
        source: std::io::Error::other(e),
    })?;
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RemoveError::Io { path: p, source }),
    }
}
