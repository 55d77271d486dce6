//! `kubevirt-rs user add`: a user with a token of their own, bound to one of the aggregated
//! roles (`admin`, `edit`, `view`, which include KubeVirt's `kubevirt.io:*` roles) in one
//! namespace, and a kubeconfig for them.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The roles `user add` binds.
pub const ROLES: &[&str] = &["admin", "edit", "view"];

/// Adds `name` with `role` in `namespace` to the running server whose data directory is
/// `data_dir`; returns the path of the user's kubeconfig (`DATA_DIR/users/NAME.kubeconfig`).
pub async fn add(data_dir: &Path, name: &str, namespace: &str, role: &str) -> Result<PathBuf> {
    if !ROLES.contains(&role) {
        bail!("--role {role:?}: use one of {}", ROLES.join(", "));
    }
    if let Some(why) = kubevirt_api::names::dns1123_label(namespace) {
        bail!("--namespace {namespace:?}: {why}");
    }
    let admin_kubeconfig = data_dir.join("kubeconfig");
    let kc = kube::config::Kubeconfig::read_from(&admin_kubeconfig).with_context(|| {
        format!(
            "reading {} (start `kubevirt-rs server --data-dir {}` first)",
            admin_kubeconfig.display(),
            data_dir.display()
        )
    })?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the admin kubeconfig names no cluster")?;
    let server = cluster
        .server
        .clone()
        .context("the admin kubeconfig names no server")?;
    let ca = cluster
        .certificate_authority_data
        .clone()
        .context("the admin kubeconfig has no CA")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    // The namespace must exist: a binding in a namespace that does not is refused anyway.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    namespaces.get(namespace).await.with_context(|| {
        format!("namespace {namespace} (create it first: kubectl create namespace {namespace})")
    })?;
    let token = crate::auth::add_user(data_dir, name, &[])?;
    let bindings: kube::Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        kube::Api::namespaced(client, namespace);
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("kubevirt-rs-user-{}-{role}", name.replace([':', '@', '_'], "-").to_lowercase()),
                     "labels": {"kubevirt-rs.io/user": "true"}},
        "roleRef": {"apiGroup": crate::rbac::GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": crate::rbac::GROUP, "kind": "User", "name": name}],
    }))?;
    bindings
        .create(&Default::default(), &binding)
        .await
        .with_context(|| format!("binding {name} to {role} in {namespace}"))?;
    let dir = data_dir.join("users");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubevirt-rs\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}@kubevirt-rs\n  context:\n    cluster: kubevirt-rs\n    user: {name}\n    namespace: {namespace}\ncurrent-context: {name}@kubevirt-rs\n"
    );
    crate::server::write_private(&path, text.as_bytes())?;
    Ok(path)
}
