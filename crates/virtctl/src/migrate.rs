//! `migrate` and `migrate-cancel`, as KubeVirt's virtctl (pkg/virtctl/vm/migrate.go,
//! migrate_cancel.go): `migrate` is a `PUT` on the VM's `migrate` subresource, which virt-api
//! turns into a VirtualMachineInstanceMigration; `migrate-cancel` deletes the VMI's migration
//! that has not finished yet (found by KubeVirt's `kubevirt.io/vmi-name` label).

use crate::client::{connect, Error};
use crate::GlobalArgs;
use http::Method;
use serde_json::{json, Map, Value};

/// `metav1.DryRunAll`.
const DRY_RUN_ALL: &str = "All";
/// KubeVirt's `MigrationSelectorLabel`: every migration carries its VMI's name in it.
const SELECTOR_LABEL: &str = "kubevirt.io/vmi-name";

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The VirtualMachine to migrate.
    #[arg(value_name = "VM")]
    pub name: String,
    /// --addedNodeSelector=key=value1,key2=value2: an additional node selector for this one
    /// migration attempt. It can only restrict constraints already set on the VM.
    #[arg(long = "addedNodeSelector", value_name = "KEY=VALUE,...", value_parser = parse_selector)]
    pub added_node_selector: Option<NodeSelector>,
    /// Perform a dry run: the server validates the request and changes nothing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub struct MigrateCancelArgs {
    /// The VirtualMachine whose migration to cancel.
    #[arg(value_name = "VM")]
    pub name: String,
    /// Perform a dry run: the server validates the request and changes nothing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub dry_run: bool,
}

/// The pairs of `--addedNodeSelector`, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSelector(pub Vec<(String, String)>);

/// `key=value,key2=value2`, as cobra's `StringToString` flag reads it: every pair needs a `=`.
pub fn parse_selector(s: &str) -> Result<NodeSelector, String> {
    if s.is_empty() {
        return Ok(NodeSelector(Vec::new()));
    }
    s.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("{pair} must be formatted as key=value")),
        })
        .collect::<Result<_, _>>()
        .map(NodeSelector)
}

/// KubeVirt's `MigrateOptions`, encoded as Go encodes it (empty fields omitted).
pub fn migrate_options(a: &MigrateArgs) -> Value {
    let mut o = Map::new();
    if a.dry_run {
        o.insert("dryRun".into(), json!([DRY_RUN_ALL]));
    }
    if let Some(sel) = a.added_node_selector.as_ref().filter(|s| !s.0.is_empty()) {
        let m: Map<String, Value> = sel
            .0
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        o.insert("addedNodeSelector".into(), Value::Object(m));
    }
    Value::Object(o)
}

pub async fn migrate(g: &GlobalArgs, a: MigrateArgs) -> crate::Result<i32> {
    let c = connect(g, false).await?;
    if a.dry_run {
        println!("Dry Run execution");
    }
    let body = migrate_options(&a);
    c.put_subresource("virtualmachines", &a.name, "migrate", Some(&body))
        .await
        .map_err(|e| e.context("Error migrating VirtualMachine "))?;
    println!("VM {} was scheduled to migrate", a.name);
    Ok(0)
}

/// Percent-encodes everything but unreserved characters, so a name cannot add query parameters.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether a migration (as JSON) has finished: KubeVirt's `IsFinal`.
fn is_final(migration: &Value) -> bool {
    matches!(
        migration["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

pub async fn migrate_cancel(g: &GlobalArgs, a: MigrateCancelArgs) -> crate::Result<i32> {
    let c = connect(g, false).await?;
    if a.dry_run {
        println!("Dry Run execution");
    }
    let base = format!(
        "/apis/kubevirt.io/v1/namespaces/{}/virtualmachineinstancemigrations",
        c.namespace
    );
    let selector = query_escape(&format!("{SELECTOR_LABEL}=={}", a.name));
    let list = c
        .get(&format!("{base}?labelSelector={selector}"))
        .await
        .map_err(|e| e.context("Error fetching virtual machine instance migration list "))?;
    let active = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| !is_final(m));
    let Some(migration) = active else {
        return Err(Error::Failed(format!(
            "Found no migration to cancel for {}",
            a.name
        )));
    };
    let mig_name = migration["metadata"]["name"].as_str().unwrap_or_default();
    let mut opts = Map::new();
    opts.insert("kind".into(), json!("DeleteOptions"));
    opts.insert("apiVersion".into(), json!("v1"));
    if a.dry_run {
        opts.insert("dryRun".into(), json!([DRY_RUN_ALL]));
    }
    c.json(
        Method::DELETE,
        &format!("{base}/{mig_name}"),
        Some(&Value::Object(opts)),
    )
    .await
    .map_err(|e| {
        e.context(format!(
            "Error canceling migration {mig_name} of a VirtualMachine {}: ",
            a.name
        ))
    })?;
    println!("VM {} was scheduled to migrate-cancel", a.name);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_as_cobra_reads_them() {
        assert_eq!(
            parse_selector("a=1,b=x=y").unwrap().0,
            vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]
        );
        assert_eq!(parse_selector("").unwrap().0, vec![]);
        assert!(parse_selector("novalue").is_err());
        assert!(parse_selector("=v").is_err());
    }

    #[test]
    fn the_flags_parse_into_their_types() {
        use clap::{CommandFactory, Parser};
        crate::Cli::command().debug_assert();
        let cli = crate::Cli::try_parse_from([
            "virtctl",
            "migrate",
            "vm1",
            "--addedNodeSelector=zone=a,tier=gold",
        ])
        .unwrap();
        let crate::Command::Migrate(a) = cli.command else {
            panic!("not migrate")
        };
        assert_eq!(
            migrate_options(&a),
            json!({"addedNodeSelector": {"zone": "a", "tier": "gold"}})
        );
    }

    #[test]
    fn a_hostile_name_cannot_add_query_parameters() {
        assert_eq!(
            query_escape("kubevirt.io/vmi-name==a&watch=true"),
            "kubevirt.io%2Fvmi-name%3D%3Da%26watch%3Dtrue"
        );
    }

    #[test]
    fn options_omit_what_is_not_set() {
        let a = MigrateArgs {
            name: "vm".into(),
            added_node_selector: None,
            dry_run: false,
        };
        assert_eq!(migrate_options(&a), json!({}));
        let a = MigrateArgs {
            name: "vm".into(),
            added_node_selector: Some(NodeSelector(vec![("zone".into(), "a".into())])),
            dry_run: true,
        };
        assert_eq!(
            migrate_options(&a),
            json!({"dryRun": ["All"], "addedNodeSelector": {"zone": "a"}})
        );
    }
}
