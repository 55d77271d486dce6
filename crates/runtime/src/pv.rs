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
