//! The ClusterRoles (and their bindings) KubeVirt and CDI install for users of their
//! resources: `kubevirt.io:admin|edit|view` and `cdi.kubevirt.io:admin|edit|view`, aggregated
//! into Kubernetes' `admin`, `edit` and `view` by their `rbac.authorization.k8s.io/aggregate-to-*`
//! labels, and the roles every authenticated user is bound to.
//!
//! The one definition of them: the embedded API server creates them at its first start, and
//! `kubevirt-rs crds --with-rbac` prints them for a real cluster, so both get the same rules.
//! Sources: KubeVirt v1.9 `pkg/virt-operator/resource/generate/rbac/cluster.go`, CDI
//! `pkg/operator/resources/cluster/rbac.go`.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

pub const ADMIN: &str = "kubevirt.io:admin";
pub const EDIT: &str = "kubevirt.io:edit";
pub const VIEW: &str = "kubevirt.io:view";
/// Bound to every authenticated user: the KubeVirt install and virt-api's version.
pub const DEFAULT: &str = "kubevirt.io:default";
/// Migrating VMs is not part of admin/edit in KubeVirt: a separate role, not aggregated.
pub const MIGRATE: &str = "kubevirt.io:migrate";
/// Bound to every authenticated user: the cluster-wide instance types and preferences.
pub const INSTANCETYPE_VIEW: &str = "instancetype.kubevirt.io:view";
pub const CDI_ADMIN: &str = "cdi.kubevirt.io:admin";
pub const CDI_EDIT: &str = "cdi.kubevirt.io:edit";
pub const CDI_VIEW: &str = "cdi.kubevirt.io:view";
/// Bound to every authenticated user and service account: CDIConfig and StorageProfiles.
pub const CDI_CONFIG_READER: &str = "cdi.kubevirt.io:config-reader";

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";

/// The label that aggregates a ClusterRole into Kubernetes' `admin`, `edit` or `view`.
pub fn aggregate_label(to: &str) -> String {
    format!("rbac.authorization.k8s.io/aggregate-to-{to}")
}

const SUB: &str = "subresources.kubevirt.io";
const KUBEVIRT: &str = "kubevirt.io";
const CDI: &str = "cdi.kubevirt.io";

const READ: &[&str] = &["get", "list", "watch"];
const EDIT_VERBS: &[&str] = &[
    "get", "delete", "create", "update", "patch", "list", "watch",
];
const ADMIN_VERBS: &[&str] = &[
    "get",
    "delete",
    "create",
    "update",
    "patch",
    "list",
    "watch",
    "deletecollection",
];

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn autoupdate() -> Option<BTreeMap<String, String>> {
    Some(labels(&[(
        "rbac.authorization.kubernetes.io/autoupdate",
        "true",
    )]))
}

fn role(
    name: &str,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    rules: Vec<PolicyRule>,
) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations,
            ..Default::default()
        },
        rules: Some(rules),
        aggregation_rule: None,
    }
}

/// KubeVirt's labels: `kubevirt.io: ""`, plus the aggregation label for `to`.
fn kubevirt_labels(to: Option<&str>) -> BTreeMap<String, String> {
    let mut l = labels(&[(KUBEVIRT, "")]);
    if let Some(to) = to {
        l.insert(aggregate_label(to), "true".into());
    }
    l
}

/// CDI's labels: `cdi.kubevirt.io: ""`, plus the aggregation label for `to`.
fn cdi_labels(to: Option<&str>) -> BTreeMap<String, String> {
    let mut l = labels(&[(CDI, "")]);
    if let Some(to) = to {
        l.insert(aggregate_label(to), "true".into());
    }
    l
}

const INSTANCETYPES: &[&str] = &[
    "virtualmachineinstancetypes",
    "virtualmachineclusterinstancetypes",
    "virtualmachinepreferences",
    "virtualmachineclusterpreferences",
];
const VMS: &[&str] = &[
    "virtualmachines",
    "virtualmachineinstances",
    "virtualmachineinstancepresets",
    "virtualmachineinstancereplicasets",
];
const SNAPSHOTS: &[&str] = &[
    "virtualmachinesnapshots",
    "virtualmachinesnapshotcontents",
    "virtualmachinerestores",
];
const BACKUPS: &[&str] = &["virtualmachinebackups", "virtualmachinebackuptrackers"];

/// The rules `kubevirt.io:admin` and `kubevirt.io:edit` share; `writes` are the verbs on the
/// resources (admin's include `deletecollection`), and admin also gets the VNC screenshot.
fn writer_rules(admin: bool) -> Vec<PolicyRule> {
    let writes = if admin { ADMIN_VERBS } else { EDIT_VERBS };
    let mut access = vec![
        "virtualmachineinstances/console",
        "virtualmachineinstances/vnc",
    ];
    if admin {
        access.push("virtualmachineinstances/vnc/screenshot");
    }
    access.extend([
        "virtualmachineinstances/portforward",
        "virtualmachineinstances/guestosinfo",
        "virtualmachineinstances/filesystemlist",
        "virtualmachineinstances/userlist",
        "virtualmachineinstances/sev/fetchcertchain",
        "virtualmachineinstances/sev/querylaunchmeasurement",
        "virtualmachineinstances/usbredir",
        "virtualmachines/objectgraph",
        "virtualmachineinstances/objectgraph",
    ]);
    let mut rules = vec![
        rule(SUB, &access, &["get"]),
        rule(
            SUB,
            &[
                "virtualmachineinstances/pause",
                "virtualmachineinstances/unpause",
                "virtualmachineinstances/addvolume",
                "virtualmachineinstances/removevolume",
                "virtualmachineinstances/freeze",
                "virtualmachineinstances/unfreeze",
                "virtualmachineinstances/savememory",
                "virtualmachineinstances/resumememory",
                "virtualmachineinstances/softreboot",
                "virtualmachineinstances/reset",
                "virtualmachineinstances/sev/setupsession",
                "virtualmachineinstances/sev/injectlaunchsecret",
                "virtualmachineinstances/evacuate/cancel",
            ],
            &["update"],
        ),
        rule(
            SUB,
            &["virtualmachines/expand-spec", "virtualmachines/portforward"],
            &["get"],
        ),
        rule(
            SUB,
            &[
                "virtualmachines/start",
                "virtualmachines/stop",
                "virtualmachines/restart",
                "virtualmachines/addvolume",
                "virtualmachines/removevolume",
                "virtualmachines/memorydump",
                "virtualmachines/evacuate/cancel",
            ],
            &["update"],
        ),
        rule(SUB, &["expand-vm-spec"], &["update"]),
        rule(KUBEVIRT, VMS, writes),
        rule(KUBEVIRT, &["virtualmachineinstancemigrations"], READ),
        rule("snapshot.kubevirt.io", SNAPSHOTS, writes),
        rule("backup.kubevirt.io", BACKUPS, writes),
    ];
    if admin {
        rules.push(rule("plugin.kubevirt.io", &["plugins"], writes));
    }
    rules.extend([
        rule("export.kubevirt.io", &["virtualmachineexports"], writes),
        rule("clone.kubevirt.io", &["virtualmachineclones"], writes),
        rule("instancetype.kubevirt.io", INSTANCETYPES, writes),
        rule("pool.kubevirt.io", &["virtualmachinepools"], writes),
    ]);
    if !admin {
        rules.push(rule(KUBEVIRT, &["kubevirts"], &["get", "list"]));
    }
    rules.push(rule("migrations.kubevirt.io", &["migrationpolicies"], READ));
    rules
}

fn view_rules() -> Vec<PolicyRule> {
    let mut vms = VMS.to_vec();
    vms.push("virtualmachineinstancemigrations");
    vec![
        rule(KUBEVIRT, &["kubevirts"], &["get", "list"]),
        rule(
            SUB,
            &[
                "virtualmachines/expand-spec",
                "virtualmachineinstances/guestosinfo",
                "virtualmachineinstances/filesystemlist",
                "virtualmachineinstances/userlist",
                "virtualmachineinstances/sev/fetchcertchain",
                "virtualmachineinstances/sev/querylaunchmeasurement",
                "virtualmachines/objectgraph",
                "virtualmachineinstances/objectgraph",
            ],
            &["get"],
        ),
        rule(SUB, &["expand-vm-spec"], &["update"]),
        rule(KUBEVIRT, &vms, READ),
        rule("snapshot.kubevirt.io", SNAPSHOTS, READ),
        rule("backup.kubevirt.io", BACKUPS, READ),
        rule("export.kubevirt.io", &["virtualmachineexports"], READ),
        rule("clone.kubevirt.io", &["virtualmachineclones"], READ),
        rule("instancetype.kubevirt.io", INSTANCETYPES, READ),
        rule("pool.kubevirt.io", &["virtualmachinepools"], READ),
        rule("migrations.kubevirt.io", &["migrationpolicies"], READ),
        rule("plugin.kubevirt.io", &["plugins"], READ),
    ]
}

/// CDI's admin and edit roles are the same rules.
fn cdi_writer_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            CDI,
            &[
                "datavolumes",
                "dataimportcrons",
                "datasources",
                "volumeimportsources",
                "volumeuploadsources",
                "volumeclonesources",
            ],
            &["*"],
        ),
        rule(CDI, &["datavolumes/source"], &["create"]),
        rule("upload.cdi.kubevirt.io", &["uploadtokenrequests"], &["*"]),
        rule(
            "forklift.cdi.kubevirt.io",
            &["ovirtvolumepopulators", "openstackvolumepopulators"],
            &["*"],
        ),
    ]
}

fn cdi_view_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            CDI,
            &[
                "cdiconfigs",
                "dataimportcrons",
                "datasources",
                "datavolumes",
                "objecttransfers",
                "storageprofiles",
                "volumeimportsources",
                "volumeuploadsources",
                "volumeclonesources",
            ],
            READ,
        ),
        rule(
            "forklift.cdi.kubevirt.io",
            &["ovirtvolumepopulators", "openstackvolumepopulators"],
            READ,
        ),
        rule(CDI, &["datavolumes/source"], &["create"]),
    ]
}

/// KubeVirt's and CDI's ClusterRoles, as they install them.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let mut default_labels = kubevirt_labels(None);
    default_labels.insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
    vec![
        role(
            DEFAULT,
            default_labels,
            autoupdate(),
            vec![
                rule(KUBEVIRT, &["kubevirts"], &["get", "list"]),
                rule(SUB, &["version", "guestfs"], &["get", "list"]),
            ],
        ),
        role(
            ADMIN,
            kubevirt_labels(Some("admin")),
            None,
            writer_rules(true),
        ),
        role(
            EDIT,
            kubevirt_labels(Some("edit")),
            None,
            writer_rules(false),
        ),
        role(VIEW, kubevirt_labels(Some("view")), None, view_rules()),
        role(
            INSTANCETYPE_VIEW,
            kubevirt_labels(None),
            None,
            vec![rule(
                "instancetype.kubevirt.io",
                &[
                    "virtualmachineclusterinstancetypes",
                    "virtualmachineclusterpreferences",
                ],
                READ,
            )],
        ),
        role(
            MIGRATE,
            kubevirt_labels(None),
            None,
            vec![
                rule(SUB, &["virtualmachines/migrate"], &["update"]),
                rule(KUBEVIRT, &["virtualmachineinstancemigrations"], ADMIN_VERBS),
            ],
        ),
        role(
            CDI_ADMIN,
            cdi_labels(Some("admin")),
            None,
            cdi_writer_rules(),
        ),
        role(CDI_EDIT, cdi_labels(Some("edit")), None, cdi_writer_rules()),
        role(CDI_VIEW, cdi_labels(Some("view")), None, cdi_view_rules()),
        role(
            CDI_CONFIG_READER,
            cdi_labels(None),
            None,
            vec![rule(CDI, &["cdiconfigs", "storageprofiles"], READ)],
        ),
    ]
}

fn binding(
    name: &str,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    groups: &[&str],
) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations,
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: GROUP.into(),
            kind: "ClusterRole".into(),
            name: name.into(),
        },
        subjects: Some(
            groups
                .iter()
                .map(|g| Subject {
                    api_group: Some(GROUP.into()),
                    kind: "Group".into(),
                    name: g.to_string(),
                    namespace: None,
                })
                .collect(),
        ),
    }
}

/// The bindings KubeVirt and CDI install: their default roles for every authenticated user.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding(
            DEFAULT,
            kubevirt_labels(None),
            autoupdate(),
            &[AUTHENTICATED],
        ),
        binding(
            INSTANCETYPE_VIEW,
            kubevirt_labels(None),
            autoupdate(),
            &[AUTHENTICATED],
        ),
        binding(
            CDI_CONFIG_READER,
            cdi_labels(None),
            None,
            &[AUTHENTICATED, "system:serviceaccount"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> ClusterRole {
        cluster_roles()
            .into_iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .expect(name)
    }

    fn grants(r: &ClusterRole, group: &str, resource: &str, verb: &str) -> bool {
        r.rules.iter().flatten().any(|p| {
            p.api_groups.iter().flatten().any(|g| g == group)
                && p.resources
                    .iter()
                    .flatten()
                    .any(|x| x == resource || x == "*")
                && p.verbs.iter().any(|v| v == verb || v == "*")
        })
    }

    #[test]
    fn the_user_roles_aggregate_into_admin_edit_and_view() {
        for (name, to) in [
            (ADMIN, "admin"),
            (EDIT, "edit"),
            (VIEW, "view"),
            (CDI_ADMIN, "admin"),
            (CDI_EDIT, "edit"),
            (CDI_VIEW, "view"),
        ] {
            let r = named(name);
            let l = r.metadata.labels.unwrap_or_default();
            assert_eq!(
                l.get(&aggregate_label(to)).map(String::as_str),
                Some("true"),
                "{name}"
            );
        }
    }

    #[test]
    fn rules_follow_kubevirt_v1_9() {
        let (admin, edit, view) = (named(ADMIN), named(EDIT), named(VIEW));
        assert!(grants(
            &admin,
            KUBEVIRT,
            "virtualmachines",
            "deletecollection"
        ));
        assert!(!grants(
            &edit,
            KUBEVIRT,
            "virtualmachines",
            "deletecollection"
        ));
        assert!(grants(&edit, SUB, "virtualmachines/start", "update"));
        assert!(!grants(
            &edit,
            SUB,
            "virtualmachineinstances/vnc/screenshot",
            "get"
        ));
        assert!(grants(
            &admin,
            SUB,
            "virtualmachineinstances/vnc/screenshot",
            "get"
        ));
        // Migrations are their own role.
        assert!(!grants(
            &admin,
            KUBEVIRT,
            "virtualmachineinstancemigrations",
            "create"
        ));
        assert!(!grants(&admin, SUB, "virtualmachines/migrate", "update"));
        assert!(grants(
            &named(MIGRATE),
            SUB,
            "virtualmachines/migrate",
            "update"
        ));
        assert!(grants(&view, KUBEVIRT, "virtualmachineinstances", "watch"));
        assert!(!grants(
            &view,
            KUBEVIRT,
            "virtualmachineinstances",
            "create"
        ));
        assert!(!grants(
            &view,
            SUB,
            "virtualmachineinstances/console",
            "get"
        ));
        assert!(grants(
            &named(CDI_VIEW),
            CDI,
            "datavolumes/source",
            "create"
        ));
    }

    #[test]
    fn every_name_is_unique() {
        let mut names: Vec<_> = cluster_roles()
            .into_iter()
            .filter_map(|r| r.metadata.name)
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
