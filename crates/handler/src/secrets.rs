//! The Secrets a VMI's launcher needs: cloud-init `secretRef`/`networkDataSecretRef` and
//! `spec.accessCredentials`, read from the VMI's own namespace and handed to the launcher as
//! [`ResolvedCloudInit`] in `volumes.json` (KubeVirt mounts them into the virt-launcher pod).
//!
//! KubeVirt's rules (pkg/cloud-init): user data is the Secret's `userdata` key, else `userData`;
//! network data `networkdata`, else `networkData`. SSH public keys propagated by `noCloud`
//! (`configDrive`) are every non-empty value of each such Secret, Secrets in spec order and the
//! keys of one Secret by name, and go to the first cloud-init volume when it is a NoCloud
//! (ConfigDrive) volume, numbered `"0"`, `"1"`, ... in its meta-data.
//!
//! While a Secret is missing the VMI waits, as a virt-launcher pod whose Secret volume cannot
//! be mounted does; the reason and message are kubelet's (`FailedMount`, `MountVolume.SetUp
//! failed for volume "<vol>-udata" : secret "<name>" not found`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use kubevirt_api::VirtualMachineInstance;
use kubevirt_launcher::api::AgentCredentials;
use kubevirt_launcher::machine::ResolvedCloudInit;

/// kubelet's event reason for a volume it cannot mount.
pub const FAILED_MOUNT: &str = "FailedMount";

/// Kubernetes' limit on a Secret's data (`MaxSecretSize`, 1 MiB): a value the API server
/// would not have stored is refused here as well.
pub const MAX_SECRET_SIZE: usize = 1 << 20;

/// One Secret the VMI refers to, as KubeVirt mounts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse {
    /// The Secret's name.
    pub name: String,
    /// The field that names it, e.g. `spec.volumes[1].cloudInitNoCloud.secretRef.name`.
    pub field: String,
    /// The virt-launcher pod volume KubeVirt mounts it as (`<volume>-udata`, `<volume>-ndata`,
    /// `<secret>-access-cred`): the name kubelet's message uses.
    pub pod_volume: String,
}

/// Every Secret `vmi` refers to, in spec order (volumes, then access credentials).
pub fn secret_uses(vmi: &VirtualMachineInstance) -> Vec<SecretUse> {
    let mut uses = Vec::new();
    for (i, vol) in vmi.spec.volumes.iter().flatten().enumerate() {
        let refs = if let Some(s) = &vol.cloud_init_no_cloud {
            Some((
                "cloudInitNoCloud",
                &s.secret_ref,
                &s.network_data_secret_ref,
            ))
        } else {
            vol.cloud_init_config_drive.as_ref().map(|s| {
                (
                    "cloudInitConfigDrive",
                    &s.secret_ref,
                    &s.network_data_secret_ref,
                )
            })
        };
        let Some((kind, user, network)) = refs else {
            continue;
        };
        for (r, field, suffix) in [
            (user, "secretRef", "udata"),
            (network, "networkDataSecretRef", "ndata"),
        ] {
            if let Some(r) = r {
                uses.push(SecretUse {
                    name: r.name.clone(),
                    field: format!("spec.volumes[{i}].{kind}.{field}.name"),
                    pod_volume: format!("{}-{suffix}", vol.name),
                });
            }
        }
    }
    for (i, ac) in vmi.spec.access_credentials.iter().flatten().enumerate() {
        let (name, field) = if let Some(k) = &ac.ssh_public_key {
            (
                k.source.secret.as_ref().map(|s| &s.secret_name),
                "sshPublicKey",
            )
        } else if let Some(p) = &ac.user_password {
            (
                p.source.secret.as_ref().map(|s| &s.secret_name),
                "userPassword",
            )
        } else {
            continue;
        };
        if let Some(name) = name {
            uses.push(SecretUse {
                name: name.clone(),
                field: format!("spec.accessCredentials[{i}].{field}.source.secret.secretName"),
                pod_volume: format!("{name}-access-cred"),
            });
        }
    }
    uses
}

/// What the launcher gets, or why the VMI cannot start (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// Volume name → resolved data (only volumes with something resolved).
    Ready(BTreeMap<String, ResolvedCloudInit>),
    /// A Secret or a key is missing: the VMI waits; kubelet's/KubeVirt's message.
    Wait(String),
    /// A value no launcher may be given (a name that is no Secret name, data too large or
    /// not text): the VMI fails to start; the message names the field.
    Refused(String),
}

/// The Secret's data by key (`data`, with any `stringData` over it as the API server would).
fn data_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        d.insert(k.clone(), v.clone().into_bytes());
    }
    d
}

fn text(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8 text"))
}

/// The first of `keys` the Secret has.
fn first_key<'a>(
    data: &'a BTreeMap<String, Vec<u8>>,
    keys: [&'a str; 2],
) -> Option<(&'a str, &'a [u8])> {
    keys.iter()
        .find_map(|k| data.get(*k).map(|v| (*k, v.as_slice())))
}

/// Resolves `vmi`'s Secrets from `secrets` (name → Secret of the VMI's namespace, the ones
/// that exist). Pure: [`resolve`] fetches them.
pub fn resolve_from(vmi: &VirtualMachineInstance, secrets: &BTreeMap<String, Secret>) -> Secrets {
    // Every referenced Secret must exist, as every one is mounted into KubeVirt's pod.
    for u in secret_uses(vmi) {
        if let Some(problem) = kubevirt_api::names::dns1123_subdomain(&u.name) {
            return Secrets::Refused(format!(
                "{}: {:?} is not a valid Secret name: {problem}",
                u.field, u.name
            ));
        }
        let Some(s) = secrets.get(&u.name) else {
            return Secrets::Wait(format!(
                "MountVolume.SetUp failed for volume {:?} : secret {:?} not found",
                u.pod_volume, u.name
            ));
        };
        let size: usize = data_of(s).iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_SECRET_SIZE {
            return Secrets::Refused(format!(
                "{}: Secret {:?} holds {size} bytes, more than the {MAX_SECRET_SIZE} bytes a \
                 Secret may hold",
                u.field, u.name
            ));
        }
    }
    let data = |name: &str| secrets.get(name).map(data_of).unwrap_or_default();
    let mut out: BTreeMap<String, ResolvedCloudInit> = BTreeMap::new();
    let mut first_cloud_init: Option<(String, bool)> = None;
    for vol in vmi.spec.volumes.iter().flatten() {
        let (no_cloud, user, network) = if let Some(s) = &vol.cloud_init_no_cloud {
            (true, &s.secret_ref, &s.network_data_secret_ref)
        } else if let Some(s) = &vol.cloud_init_config_drive {
            (false, &s.secret_ref, &s.network_data_secret_ref)
        } else {
            continue;
        };
        first_cloud_init.get_or_insert((vol.name.clone(), no_cloud));
        if user.is_none() && network.is_none() {
            continue;
        }
        let mut r = ResolvedCloudInit::default();
        let mut missing = Vec::new();
        if let Some(u) = user {
            match first_key(&data(&u.name), ["userdata", "userData"]) {
                Some((k, v)) => match text(v, &format!("Secret {:?} key {k:?}", u.name)) {
                    Ok(t) => r.user_data = Some(t),
                    Err(e) => return Secrets::Refused(e),
                },
                None => missing.push(format!(
                    "Secret {:?} has no \"userdata\" or \"userData\" key",
                    u.name
                )),
            }
        }
        if let Some(n) = network {
            match first_key(&data(&n.name), ["networkdata", "networkData"]) {
                Some((k, v)) => match text(v, &format!("Secret {:?} key {k:?}", n.name)) {
                    Ok(t) => r.network_data = Some(t),
                    Err(e) => return Secrets::Refused(e),
                },
                None => missing.push(format!(
                    "Secret {:?} has no \"networkdata\" or \"networkData\" key",
                    n.name
                )),
            }
        }
        if !missing.is_empty() {
            // KubeVirt's message, then which key is missing.
            return Secrets::Wait(format!(
                "no cloud-init data-source found at volume: {} ({})",
                vol.name,
                missing.join("; ")
            ));
        }
        out.insert(vol.name.clone(), r);
    }
    // SSH keys go to the first cloud-init volume, by its kind's propagation method.
    if let Some((vol, no_cloud)) = first_cloud_init {
        let mut keys = Vec::new();
        for ac in vmi.spec.access_credentials.iter().flatten() {
            let Some(k) = &ac.ssh_public_key else {
                continue;
            };
            let m = &k.propagation_method;
            let propagated = if no_cloud {
                m.no_cloud.is_some()
            } else {
                m.config_drive.is_some()
            };
            let Some(s) = k.source.secret.as_ref().filter(|_| propagated) else {
                continue;
            };
            for (key, v) in data(&s.secret_name) {
                if v.is_empty() || key.starts_with("..") {
                    continue;
                }
                match text(&v, &format!("Secret {:?} key {key:?}", s.secret_name)) {
                    Ok(t) => keys.push(t),
                    Err(e) => return Secrets::Refused(e),
                }
            }
        }
        if !keys.is_empty() {
            out.entry(vol).or_default().public_keys = keys;
        }
    }
    Secrets::Ready(out)
}

/// Whether `vmi` has access credentials the guest agent propagates.
pub fn has_agent_credentials(vmi: &VirtualMachineInstance) -> bool {
    vmi.spec.access_credentials.iter().flatten().any(|ac| {
        ac.ssh_public_key
            .as_ref()
            .is_some_and(|k| k.propagation_method.qemu_guest_agent.is_some())
            || ac
                .user_password
                .as_ref()
                .is_some_and(|p| p.propagation_method.qemu_guest_agent.is_some())
    })
}

/// A user name the guest agent may be given: POSIX's portable user name characters (the agent
/// hands it to `chpasswd` as `user:password`, so no `:` or newline may get through).
fn guest_user_ok(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && !u.starts_with('-')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The credentials the guest agent propagates, as KubeVirt's access credential manager reads
/// them: `sshPublicKey` Secrets give each of their `qemuGuestAgent.users` every line of every
/// value (trimmed, non-empty; Secrets in spec order); `userPassword` Secrets map each key (a
/// user name) to its trimmed value. Values a guest must not get (a user name that is no user
/// name, a password with a line break) are left out, with a warning.
pub fn agent_credentials(
    vmi: &VirtualMachineInstance,
    secrets: &BTreeMap<String, Secret>,
) -> AgentCredentials {
    let mut out = AgentCredentials::default();
    for ac in vmi.spec.access_credentials.iter().flatten() {
        if let Some(k) = &ac.ssh_public_key {
            let (Some(agent), Some(src)) =
                (&k.propagation_method.qemu_guest_agent, &k.source.secret)
            else {
                continue;
            };
            let keys: Vec<String> = secrets
                .get(&src.secret_name)
                .map(data_of)
                .unwrap_or_default()
                .into_iter()
                .filter(|(name, _)| !name.starts_with(".."))
                .flat_map(|(_, v)| {
                    String::from_utf8_lossy(&v)
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect();
            for user in &agent.users {
                if !guest_user_ok(user) {
                    tracing::warn!(%user, "accessCredentials: not a user name the guest agent is given");
                    continue;
                }
                out.authorized_keys
                    .entry(user.clone())
                    .or_default()
                    .extend(keys.iter().cloned());
            }
        } else if let Some(p) = &ac.user_password {
            let (Some(_), Some(src)) = (&p.propagation_method.qemu_guest_agent, &p.source.secret)
            else {
                continue;
            };
            for (user, v) in secrets
                .get(&src.secret_name)
                .map(data_of)
                .unwrap_or_default()
            {
                let password = String::from_utf8_lossy(&v).trim().to_string();
                if password.is_empty() || user.starts_with("..") {
                    continue;
                }
                if !guest_user_ok(&user) || password.contains(['\n', '\r', '\0']) {
                    tracing::warn!(%user, secret = %src.secret_name, "accessCredentials: user name or password the guest agent is not given");
                    continue;
                }
                out.passwords.insert(user, password);
            }
        }
    }
    out
}

/// The Secrets `vmi` refers to that exist, from its own namespace (a reference can name no
/// other namespace; a name that is no Secret name is never looked up).
pub async fn fetch(
    client: &Client,
    vmi: &VirtualMachineInstance,
) -> kube::Result<BTreeMap<String, Secret>> {
    let ns = vmi.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut found = BTreeMap::new();
    for u in &secret_uses(vmi) {
        // A name that is no Secret name never reaches a URL ("../x" would be a path).
        if kubevirt_api::names::dns1123_subdomain(&u.name).is_some() || found.contains_key(&u.name)
        {
            continue;
        }
        if let Some(s) = api.get_opt(&u.name).await? {
            found.insert(u.name.clone(), s);
        }
    }
    Ok(found)
}

/// Fetches the Secrets `vmi` refers to and resolves them; also gives what the guest agent
/// propagates.
pub async fn resolve(
    client: &Client,
    vmi: &VirtualMachineInstance,
) -> kube::Result<(Secrets, AgentCredentials)> {
    if secret_uses(vmi).is_empty() {
        return Ok((Secrets::Ready(BTreeMap::new()), AgentCredentials::default()));
    }
    let found = fetch(client, vmi).await?;
    Ok((resolve_from(vmi, &found), agent_credentials(vmi, &found)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn vmi(spec: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm", "namespace": "ns"},
            "spec": spec,
        }))
        .expect("vmi")
    }

    fn secret(name: &str, data: &[(&str, &[u8])]) -> (String, Secret) {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        );
        (name.to_string(), s)
    }

    fn nocloud_vmi() -> VirtualMachineInstance {
        vmi(serde_json::json!({
            "domain": {"devices": {}},
            "volumes": [
                {"name": "root", "containerDisk": {"image": "x"}},
                {"name": "ci", "cloudInitNoCloud": {
                    "secretRef": {"name": "ud"}, "networkDataSecretRef": {"name": "nd"}}},
            ],
            "accessCredentials": [
                {"sshPublicKey": {"source": {"secret": {"secretName": "keys"}},
                    "propagationMethod": {"noCloud": {}}}},
                {"sshPublicKey": {"source": {"secret": {"secretName": "cd-keys"}},
                    "propagationMethod": {"configDrive": {}}}},
            ],
        }))
    }

    #[test]
    fn a_missing_secret_waits_with_kubelets_message_naming_the_pod_volume() {
        let v = nocloud_vmi();
        let have = BTreeMap::from([secret("ud", &[("userdata", b"x")])]);
        assert_eq!(
            resolve_from(&v, &have),
            Secrets::Wait(
                "MountVolume.SetUp failed for volume \"ci-ndata\" : secret \"nd\" not found".into()
            )
        );
        let have = BTreeMap::from([
            secret("ud", &[("userdata", b"x")]),
            secret("nd", &[("networkData", b"n")]),
            secret("cd-keys", &[]),
        ]);
        assert_eq!(
            resolve_from(&v, &have),
            Secrets::Wait(
                "MountVolume.SetUp failed for volume \"keys-access-cred\" : secret \"keys\" not found"
                    .into()
            )
        );
    }

    #[test]
    fn keys_follow_kubevirts_names_and_precedence() {
        let v = nocloud_vmi();
        let have = BTreeMap::from([
            // `userdata` wins over `userData`; `networkData` is the fallback name.
            secret("ud", &[("userData", b"second"), ("userdata", b"first")]),
            secret("nd", &[("networkData", b"net")]),
            secret(
                "keys",
                &[("b", b"ssh-rsa B"), ("a", b"ssh-ed25519 A"), ("empty", b"")],
            ),
            secret("cd-keys", &[("k", b"ssh-rsa NOT-FOR-NOCLOUD")]),
        ]);
        let Secrets::Ready(r) = resolve_from(&v, &have) else {
            panic!("not ready: {:?}", resolve_from(&v, &have))
        };
        assert_eq!(
            r["ci"],
            ResolvedCloudInit {
                user_data: Some("first".into()),
                network_data: Some("net".into()),
                public_keys: vec!["ssh-ed25519 A".into(), "ssh-rsa B".into()],
            }
        );
    }

    #[test]
    fn a_missing_key_waits_with_kubevirts_message() {
        let v = nocloud_vmi();
        let have = BTreeMap::from([
            secret("ud", &[("user-data", b"wrong key")]),
            secret("nd", &[("networkdata", b"n")]),
            secret("keys", &[]),
            secret("cd-keys", &[]),
        ]);
        let Secrets::Wait(m) = resolve_from(&v, &have) else {
            panic!("should wait")
        };
        assert!(
            m.starts_with("no cloud-init data-source found at volume: ci"),
            "{m}"
        );
        assert!(
            m.contains(r#"Secret "ud" has no "userdata" or "userData" key"#),
            "{m}"
        );
    }

    #[test]
    fn hostile_names_and_huge_data_are_refused_naming_the_field() {
        let v = vmi(serde_json::json!({
            "domain": {"devices": {}},
            "volumes": [{"name": "ci", "cloudInitConfigDrive": {"secretRef": {"name": "../kube-system/x"}}}],
        }));
        let Secrets::Refused(m) = resolve_from(&v, &BTreeMap::new()) else {
            panic!("should refuse")
        };
        assert!(
            m.starts_with("spec.volumes[0].cloudInitConfigDrive.secretRef.name: \"../kube-system/x\" is not a valid Secret name"),
            "{m}"
        );
        let v = vmi(serde_json::json!({
            "domain": {"devices": {}},
            "volumes": [{"name": "ci", "cloudInitConfigDrive": {"secretRef": {"name": "big"}}}],
        }));
        let huge = vec![b'a'; MAX_SECRET_SIZE + 1];
        let have = BTreeMap::from([secret("big", &[("userdata", &huge)])]);
        let Secrets::Refused(m) = resolve_from(&v, &have) else {
            panic!("should refuse")
        };
        assert!(m.contains("more than the 1048576 bytes"), "{m}");
        let have = BTreeMap::from([secret("big", &[("userdata", &[0xff, 0xfe])])]);
        assert_eq!(
            resolve_from(&v, &have),
            Secrets::Refused(r#"Secret "big" key "userdata" is not UTF-8 text"#.into())
        );
    }

    #[test]
    fn agent_credentials_follow_kubevirts_access_credential_manager() {
        let v = vmi(serde_json::json!({
            "domain": {"devices": {}},
            "accessCredentials": [
                {"sshPublicKey": {"source": {"secret": {"secretName": "k1"}},
                    "propagationMethod": {"qemuGuestAgent": {"users": ["demo", "root", "x:y\nz"]}}}},
                {"sshPublicKey": {"source": {"secret": {"secretName": "k2"}},
                    "propagationMethod": {"qemuGuestAgent": {"users": ["demo"]}}}},
                {"userPassword": {"source": {"secret": {"secretName": "pw"}},
                    "propagationMethod": {"qemuGuestAgent": {}}}},
            ],
        }));
        assert!(has_agent_credentials(&v));
        let have = BTreeMap::from([
            secret("k1", &[("a", b"ssh-rsa A1\n\n  ssh-rsa A2  \n")]),
            secret("k2", &[("b", b"ssh-ed25519 B")]),
            secret(
                "pw",
                &[
                    ("demo", b" s3cret\n"),
                    ("root", b"two\nlines"),
                    ("empty", b""),
                ],
            ),
        ]);
        let c = agent_credentials(&v, &have);
        assert_eq!(
            c.authorized_keys["demo"],
            ["ssh-rsa A1", "ssh-rsa A2", "ssh-ed25519 B"]
        );
        assert_eq!(c.authorized_keys["root"], ["ssh-rsa A1", "ssh-rsa A2"]);
        // A user name that would be a second chpasswd line, and a password with a line break,
        // never reach the guest.
        assert_eq!(c.authorized_keys.len(), 2);
        assert_eq!(
            c.passwords,
            BTreeMap::from([("demo".to_string(), "s3cret".to_string())])
        );
        assert!(!has_agent_credentials(&nocloud_vmi()));
    }

    #[test]
    fn configdrive_gets_only_configdrive_keys_and_no_secrets_means_nothing_to_resolve() {
        let v = vmi(serde_json::json!({
            "domain": {"devices": {}},
            "volumes": [{"name": "cd", "cloudInitConfigDrive": {"userData": "#cloud-config"}}],
            "accessCredentials": [
                {"sshPublicKey": {"source": {"secret": {"secretName": "nc"}},
                    "propagationMethod": {"noCloud": {}}}},
                {"sshPublicKey": {"source": {"secret": {"secretName": "cdk"}},
                    "propagationMethod": {"configDrive": {}}}},
            ],
        }));
        let have = BTreeMap::from([
            secret("nc", &[("k", b"ssh-rsa NC")]),
            secret("cdk", &[("k", b"ssh-rsa CD")]),
        ]);
        let Secrets::Ready(r) = resolve_from(&v, &have) else {
            panic!("not ready")
        };
        assert_eq!(r["cd"].public_keys, vec!["ssh-rsa CD".to_string()]);
        assert_eq!(r["cd"].user_data, None);
        let plain = vmi(serde_json::json!({"domain": {"devices": {}}}));
        assert_eq!(
            resolve_from(&plain, &BTreeMap::new()),
            Secrets::Ready(BTreeMap::new())
        );
    }
}
