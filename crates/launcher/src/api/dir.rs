//! The per-VMI directory, `<data>/vms/<key>/`: every file and socket name in it.
//!
//! `<key>` is 32 hex digits, the first 128 bits of SHA-256 over `<namespace>/<name>`, not the
//! names themselves: a namespace may have 63 characters and a name 253, and the sockets in the
//! directory (the launcher's RPC, the console, QMP, the guest agent...) must fit a unix socket
//! address (`sun_path`, 108 bytes). With the key, the longest socket path is the data
//! directory's length plus 57 bytes whatever the names, so any data directory of up to 50
//! bytes works (a longer one fails every VMI with a message naming the socket and the fix).
//! Who the directory belongs to is in its `vmi.json`. SHA-256 rather than a faster hash: a
//! user who could pick a name whose key collides with another namespace's VMI would share its
//! directory.

use super::memstate::{MemoryRestore, SavedState};
use crate::launcher::State;
use kubevirt_api::defaults::DefaultsConfig;
use kubevirt_api::names;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The size of `sockaddr_un.sun_path` on Linux; a socket path needs one byte less (the NUL).
pub const SUN_PATH_MAX: usize = 108;

/// Where VMI directories live under a node's data directory.
const VMS: &str = "vms";
/// The bytes of SHA-256 a VMI directory's name keeps (hex: twice as many characters).
const KEY_BYTES: usize = 16;

const LAUNCHER_SOCKET: &str = "launcher.sock";
const CONSOLE_SOCKET: &str = "console.sock";
const VNC_SOCKET: &str = "vnc.sock";
/// The one directory QEMU may write; it creates its sockets there.
const SOCKETS_DIR: &str = "sockets";
const QMP_SOCKET: &str = "qmp.sock";
const SERIAL_SOCKET: &str = "serial.sock";
const PASST_SOCKET: &str = "passt.sock";
const GUEST_AGENT_SOCKET: &str = "qga.sock";
/// A saved guest state and its manifest (memory snapshots).
const MEMORY_STATE_DIR: &str = "state";
/// Every socket of the directory, relative to it (each checked against [`SUN_PATH_MAX`]).
const SOCKETS: [&[&str]; 8] = [
    &[LAUNCHER_SOCKET],
    &[CONSOLE_SOCKET],
    &[VNC_SOCKET],
    &[SOCKETS_DIR, QMP_SOCKET],
    &[SOCKETS_DIR, SERIAL_SOCKET],
    &[SOCKETS_DIR, VNC_SOCKET],
    &[SOCKETS_DIR, PASST_SOCKET],
    &[SOCKETS_DIR, GUEST_AGENT_SOCKET],
];

/// `path` as pretty JSON, through `path.tmp` renamed over it: a reader never sees half a file.
fn write_json_atomically(path: &Path, value: &impl serde::Serialize) -> Result<(), VmiDirError> {
    write_json_atomically_mode(path, value, 0o644)
}

/// [`write_json_atomically`] with the file's permission bits (`0o600` for Secret data): the
/// temporary file is created with them, so the data is never readable by others, not even
/// briefly.
fn write_json_atomically_mode(
    path: &Path,
    value: &impl serde::Serialize,
    mode: u32,
) -> Result<(), VmiDirError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_vec_pretty(value).map_err(|source| VmiDirError::BadState {
        path: path.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .map_err(|source| VmiDirError::Io {
            path: tmp.clone(),
            source,
        })?;
    std::fs::rename(&tmp, path).map_err(|source| VmiDirError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A JSON file the handler may have written; `None` when it wrote none.
fn read_json_if_present<T: serde::de::DeserializeOwned>(
    path: PathBuf,
) -> Result<Option<T>, VmiDirError> {
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| VmiDirError::BadState { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(VmiDirError::Io { path, source }),
    }
}

/// What the node resolved a VMI's volumes to: the files the launcher opens for its
/// `persistentVolumeClaim` and `dataVolume` volumes. The handler hands these over as this type
/// (`volumes.json`), not as command-line strings parsed back.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeVolumes {
    /// `claimName` → disk image file.
    #[serde(default)]
    pub persistent_volume_claims: BTreeMap<String, PathBuf>,
    /// DataVolume name → disk image file.
    #[serde(default)]
    pub data_volumes: BTreeMap<String, PathBuf>,
    /// Claims (a persistentVolumeClaim's `claimName`, or a DataVolume's name, which is its
    /// claim's) whose volume is on this node only, e.g. a local-path PersistentVolume: a live
    /// migration copies them to the target node (block migration, docs/migration.md) instead
    /// of assuming both nodes see the same data. The target node's file must exist with the
    /// same size. Absent: every claim is shared storage.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub local_claims: std::collections::BTreeSet<String>,
    /// Cloud-init volume name → its data resolved from Secrets (`secretRef`,
    /// `networkDataSecretRef`, `accessCredentials` SSH keys). The file holds Secret data: it is
    /// written readable by its owner only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cloud_init: BTreeMap<String, crate::machine::ResolvedCloudInit>,
}

/// `spec.accessCredentials` propagated by the guest agent (`qemuGuestAgent`), resolved from
/// their Secrets by the handler and handed over as `access-credentials.json` (owner-only). The
/// handler rewrites it when a Secret changes; the launcher applies what it holds whenever it
/// differs from what the guest last got, as KubeVirt's access credential manager does.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCredentials {
    /// Guest user → the whole authorized_keys wanted (`guest-ssh-add-authorized-keys` with
    /// `reset`), from `sshPublicKey` Secrets whose `qemuGuestAgent.users` name the user.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorized_keys: BTreeMap<String, Vec<String>>,
    /// Guest user → password (`guest-set-user-password`), from `userPassword` Secrets: each
    /// key is a user name, its value the password.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub passwords: BTreeMap<String, String>,
}

impl AgentCredentials {
    pub fn is_empty(&self) -> bool {
        self.authorized_keys.is_empty() && self.passwords.is_empty()
    }
}

/// One address of the pod's interface, as its CNI result gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodAddress {
    pub ip: std::net::IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for PodAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// The VMI's pod network as virt-handler set it up (its CNI results, reduced to what the
/// launcher binds guest NICs to), handed over as `network.json`. The handler starts the
/// launcher inside `netns`, where each of the VMI's networks has its pod interface: `eth0`
/// for the pod network (or a Multus default network), `net1`, `net2`, ... for Multus
/// secondary networks, as Multus names them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodNetworkInfo {
    pub netns: PathBuf,
    pub interfaces: Vec<PodInterface>,
    /// The virtual functions of SR-IOV networks (no pod interface: passed through to the
    /// guest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sriov: Vec<SriovDevice>,
}

/// An SR-IOV network's virtual function, by PCI address (checked with
/// [`kubevirt_api::multus::pci_address`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SriovDevice {
    /// The VMI network (`spec.networks[].name`).
    pub network: String,
    pub pci_address: String,
}

/// One pod interface in the VMI's namespace and what CNI gave it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInterface {
    /// The VMI network it serves (`spec.networks[].name`).
    pub network: String,
    /// Its name in the namespace (`eth0`, `net1`): one of [`PodInterface::name_for`]'s.
    pub interface: String,
    /// The first is the interface's IP (`status.interfaces[].ipAddress`).
    pub addresses: Vec<PodAddress>,
    pub gateway: Option<std::net::IpAddr>,
    pub mac: Option<String>,
}

impl PodInterface {
    /// The pod network's interface (kubelet's name for it).
    pub const POD: &'static str = "eth0";

    /// The name of the pod interface of a VMI's network: `eth0` for the default network,
    /// `net<N>` for the N-th (from 1) Multus secondary network, as Multus names them. Only
    /// these names are ever used, so they are safe in commands and file names.
    pub fn name_for(secondary_index: Option<usize>) -> String {
        match secondary_index {
            None => Self::POD.to_string(),
            Some(i) => format!("net{}", i + 1),
        }
    }

    /// The interface's first IPv4 address.
    pub fn ipv4(&self) -> Option<(std::net::Ipv4Addr, u8)> {
        self.addresses.iter().find_map(|a| match a.ip {
            std::net::IpAddr::V4(ip) if a.prefix <= 32 => Some((ip, a.prefix)),
            _ => None,
        })
    }

    /// Whether `name` is one [`PodInterface::name_for`] gives (a `network.json` is read
    /// back from disk: its names are checked before they reach a command).
    pub fn is_our_name(name: &str) -> bool {
        name == Self::POD
            || name
                .strip_prefix("net")
                .and_then(|n| n.parse::<u16>().ok())
                .is_some_and(|n| n >= 1 && format!("net{n}") == name)
    }
}

impl PodNetworkInfo {
    /// The virtual function of the SR-IOV network `network`.
    pub fn sriov_for(&self, network: &str) -> Option<&SriovDevice> {
        self.sriov.iter().find(|d| d.network == network)
    }

    /// The pod interface serving the VMI network `network`.
    pub fn interface_for(&self, network: &str) -> Option<&PodInterface> {
        self.interfaces.iter().find(|i| i.network == network)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmiDirError {
    /// Not a DNS-1123 label (Kubernetes' rule for namespaces; `problem` in its words).
    #[error("invalid namespace {value:?}: {problem}")]
    Namespace { value: String, problem: String },
    /// Not a DNS-1123 subdomain (Kubernetes' rule for object names).
    #[error("invalid name {value:?}: {problem}")]
    Name { value: String, problem: String },
    #[error("{}: would not be beneath {}", path.display(), root.display())]
    OutsideRoot { path: PathBuf, root: PathBuf },
    #[error(
        "{}: a unix socket path may have at most {} bytes, this one has {len}; use a shorter \
         data directory (or VMI name)",
        path.display(), SUN_PATH_MAX - 1
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("resolving {}: {source}", path.display())]
    Absolute {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a launcher state: {source}", path.display())]
    BadState {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Whose a VMI directory is, from its `vmi.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiOwner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One VMI's directory. Built from validated parts ([`VmiDir::new`]) or taken as given by an
/// operator ([`VmiDir::from_path`], `launcher run --dir`); either way its socket paths fit a
/// socket address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VmiDir {
    path: PathBuf,
}

impl VmiDir {
    /// `<data_dir>/vms/<key>` (made absolute, as the launcher binds it; [`VmiDir::key`]), after
    /// checking the namespace (DNS-1123 label) and name (DNS-1123 subdomain), and that its
    /// sockets' paths fit.
    pub fn new(data_dir: &Path, namespace: &str, name: &str) -> Result<VmiDir, VmiDirError> {
        // One owner for Kubernetes' name rules: kubevirt_api::names.
        if let Some(problem) = names::dns1123_label(namespace) {
            return Err(VmiDirError::Namespace {
                value: namespace.to_string(),
                problem,
            });
        }
        if let Some(problem) = names::dns1123_subdomain(name) {
            return Err(VmiDirError::Name {
                value: name.to_string(),
                problem,
            });
        }
        let root = Self::root(data_dir)?;
        let key = Self::key(namespace, name);
        let path = root.join(&key);
        // The key is hex digits only: one plain component beneath the root, by construction.
        if path.parent() != Some(root.as_path()) || !Self::is_key(&key) {
            return Err(VmiDirError::OutsideRoot { path, root });
        }
        let dir = VmiDir { path };
        dir.check_sockets()?;
        Ok(dir)
    }

    /// A directory given as is (`launcher run --dir`), made absolute; only its socket paths
    /// are checked.
    pub fn from_path(path: impl AsRef<Path>) -> Result<VmiDir, VmiDirError> {
        let path = path.as_ref();
        let path = std::path::absolute(path).map_err(|source| VmiDirError::Absolute {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = VmiDir { path };
        dir.check_sockets()?;
        Ok(dir)
    }

    /// For the launcher's own bookkeeping on a directory it already checked.
    pub(crate) fn unchecked(path: &Path) -> VmiDir {
        VmiDir {
            path: path.to_path_buf(),
        }
    }

    /// `<data_dir>/vms`, absolute.
    pub fn root(data_dir: &Path) -> Result<PathBuf, VmiDirError> {
        let root = data_dir.join(VMS);
        std::path::absolute(&root).map_err(|source| VmiDirError::Absolute { path: root, source })
    }

    /// The directory name of a VMI: the first 128 bits of SHA-256 over `<namespace>/<name>`,
    /// as 32 lowercase hex digits (neither part can contain `/`, so the pair is unambiguous).
    pub fn key(namespace: &str, name: &str) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{namespace}/{name}").as_bytes());
        digest[..KEY_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `s` is a directory name [`VmiDir::key`] gives.
    pub fn is_key(s: &str) -> bool {
        s.len() == 2 * KEY_BYTES && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    }

    /// The VMI directories that exist under `<data_dir>/vms`: real directories (never a
    /// symlink) named by a [`VmiDir::key`]; anything else there is skipped.
    pub fn all(data_dir: &Path) -> Vec<VmiDir> {
        let Ok(root) = Self::root(data_dir) else {
            return vec![];
        };
        let mut out: Vec<VmiDir> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(Self::is_key))
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| VmiDir {
                path: root.join(e.file_name()),
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The VMI the handler last started a launcher for here (`vmi.json`): its namespace, name
    /// and uid; `None` when there is no readable one.
    pub fn owner(&self) -> Option<VmiOwner> {
        let text = std::fs::read(self.vmi_file()).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        let m = &v["metadata"];
        let field = |k: &str| m[k].as_str().map(str::to_string);
        Some(VmiOwner {
            namespace: field("namespace")?,
            name: field("name")?,
            uid: field("uid").unwrap_or_default(),
        })
    }

    fn check_sockets(&self) -> Result<(), VmiDirError> {
        for parts in SOCKETS {
            let path = parts.iter().fold(self.path.clone(), |p, s| p.join(s));
            let len = path.as_os_str().len();
            if len >= SUN_PATH_MAX {
                return Err(VmiDirError::SocketPathTooLong { path, len });
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The launcher's RPC socket.
    pub fn launcher_socket(&self) -> PathBuf {
        self.path.join(LAUNCHER_SOCKET)
    }
    /// The serial console, shared by many clients.
    pub fn console_socket(&self) -> PathBuf {
        self.path.join(CONSOLE_SOCKET)
    }
    /// QEMU's VNC server as virt-api reaches it (a hard link to [`Self::qemu_vnc_socket`] the
    /// launcher makes in the directory QEMU cannot write).
    pub fn vnc_socket(&self) -> PathBuf {
        self.path.join(VNC_SOCKET)
    }
    /// `sockets/`: the one directory QEMU may write; it creates its sockets there.
    pub fn sockets_dir(&self) -> PathBuf {
        self.path.join(SOCKETS_DIR)
    }
    /// QEMU's monitor (QMP); only the launcher talks to it.
    pub fn qmp_socket(&self) -> PathBuf {
        self.sockets_dir().join(QMP_SOCKET)
    }
    /// QEMU's serial port; only the launcher's console reads it.
    pub fn serial_socket(&self) -> PathBuf {
        self.sockets_dir().join(SERIAL_SOCKET)
    }
    /// passt's socket, which QEMU's `stream` netdev connects to (the passt binding).
    pub fn passt_socket(&self) -> PathBuf {
        self.sockets_dir().join(PASST_SOCKET)
    }
    /// Where QEMU creates its VNC socket.
    pub fn qemu_vnc_socket(&self) -> PathBuf {
        self.sockets_dir().join(VNC_SOCKET)
    }
    /// The host side of the guest agent's virtio-serial channel (`org.qemu.guest_agent.0`);
    /// only the launcher talks to it.
    pub fn guest_agent_socket(&self) -> PathBuf {
        self.sockets_dir().join(GUEST_AGENT_SOCKET)
    }
    /// Everything the guest wrote to its serial console.
    pub fn serial_log(&self) -> PathBuf {
        self.path.join("serial.log")
    }
    /// A detached launcher's stdout and stderr.
    pub fn launcher_log(&self) -> PathBuf {
        self.path.join("launcher.log")
    }
    /// QEMU's stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }
    /// The previous QEMU log ([`super::logs::QemuLog`]).
    pub fn qemu_log_old(&self) -> PathBuf {
        self.path.join("qemu.log.1")
    }
    /// The QEMU command line, for humans.
    pub fn qemu_cmdline(&self) -> PathBuf {
        self.path.join("qemu.cmdline")
    }
    /// The launcher's pid.
    pub fn launcher_pid_file(&self) -> PathBuf {
        self.path.join("launcher.pid")
    }
    /// The last [`State`], kept after the launcher exits.
    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }
    /// qcow2 overlays, emptyDisks, cloud-init ISOs.
    pub fn disks_dir(&self) -> PathBuf {
        self.path.join("disks")
    }
    /// Read-only containerDisk bases, one directory per disk.
    pub fn container_disks_dir(&self) -> PathBuf {
        self.path.join("container-disks")
    }
    /// kernelBoot's kernel and initrd.
    pub fn kernel_boot_dir(&self) -> PathBuf {
        self.path.join("kernel-boot")
    }
    /// The VMI's own UEFI variable store.
    pub fn ovmf_vars(&self) -> PathBuf {
        self.path.join("OVMF_VARS.fd")
    }
    /// The VMI as the handler gave it to `launcher run -f`.
    pub fn vmi_file(&self) -> PathBuf {
        self.path.join("vmi.json")
    }
    /// The node's volumes for this VMI ([`NodeVolumes`]), written by the handler before it
    /// starts the launcher.
    pub fn volumes_file(&self) -> PathBuf {
        self.path.join("volumes.json")
    }
    /// The cluster's defaults at the time the handler started the launcher
    /// ([`DefaultsConfig`], from the `KubeVirt` resource), written by the handler.
    pub fn defaults_file(&self) -> PathBuf {
        self.path.join("defaults.json")
    }
    /// The VMI's pod network ([`PodNetworkInfo`]), written by the handler after CNI `ADD`;
    /// absent when the node runs VMs on user-mode networking.
    pub fn network_file(&self) -> PathBuf {
        self.path.join("network.json")
    }
    /// The guest agent's access credentials ([`AgentCredentials`]), written by the handler.
    pub fn access_credentials_file(&self) -> PathBuf {
        self.path.join("access-credentials.json")
    }
    /// The handler's marker on a migration target's directory: the uid of the migration it
    /// was made for (a directory of an earlier migration is not reused).
    pub fn migration_target_marker(&self) -> PathBuf {
        self.path.join(".migration-target")
    }
    /// Where a saved guest state lives (`saveState`, docs/memory-snapshots.md): made by the
    /// launcher, owner-only (guest memory may hold secrets).
    pub fn memory_state_dir(&self) -> PathBuf {
        self.path.join(MEMORY_STATE_DIR)
    }
    /// The guest's RAM and device state: QEMU's migration stream, written through a
    /// descriptor the launcher opened (QEMU never gets the path).
    pub fn memory_state(&self) -> PathBuf {
        self.memory_state_dir().join("memory.bin")
    }
    /// The [`SavedState`] of [`Self::memory_state`]: what machine it fits.
    pub fn memory_state_manifest(&self) -> PathBuf {
        self.memory_state_dir().join("memory.json")
    }
    /// `dumpMemory`'s ELF core of the guest's memory (KubeVirt's `virtctl memory-dump`; the
    /// node agent moves it into the claim).
    pub fn memory_dump(&self) -> PathBuf {
        self.memory_state_dir().join("memory.dump")
    }
    /// The handler's instruction to start from [`Self::memory_state`] instead of booting
    /// ([`MemoryRestore`]); absent: boot.
    pub fn memory_restore_file(&self) -> PathBuf {
        self.path.join("restore-memory.json")
    }
    /// The handler's marker: a launcher was spawned for this VMI.
    pub fn spawned_marker(&self) -> PathBuf {
        self.path.join(".spawned")
    }
    /// The handler's marker: the graceful shutdown was signalled (and its event recorded).
    pub fn shutdown_marker(&self) -> PathBuf {
        self.path.join(".shutdown-signaled")
    }

    /// The volumes the handler resolved; none when it wrote no file (a launcher run by hand).
    pub fn read_volumes(&self) -> Result<NodeVolumes, VmiDirError> {
        let path = self.volumes_file();
        match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text)
                .map_err(|source| VmiDirError::BadState { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeVolumes::default()),
            Err(source) => Err(VmiDirError::Io { path, source }),
        }
    }

    /// Write `volumes.json` atomically, readable by its owner only (it may hold Secret data).
    pub fn write_volumes(&self, v: &NodeVolumes) -> Result<(), VmiDirError> {
        write_json_atomically_mode(&self.volumes_file(), v, 0o600)
    }

    /// The guest agent's access credentials; `None` when the handler wrote none.
    pub fn read_access_credentials(&self) -> Result<Option<AgentCredentials>, VmiDirError> {
        read_json_if_present(self.access_credentials_file())
    }

    /// Write `access-credentials.json` atomically, readable by its owner only.
    pub fn write_access_credentials(&self, c: &AgentCredentials) -> Result<(), VmiDirError> {
        write_json_atomically_mode(&self.access_credentials_file(), c, 0o600)
    }

    /// The cluster's defaults the handler wrote; `None` when it wrote none (a launcher run by
    /// hand keeps the single-node defaults).
    pub fn read_defaults(&self) -> Result<Option<DefaultsConfig>, VmiDirError> {
        read_json_if_present(self.defaults_file())
    }

    /// Write `defaults.json` atomically.
    pub fn write_defaults(&self, d: &DefaultsConfig) -> Result<(), VmiDirError> {
        write_json_atomically(&self.defaults_file(), d)
    }

    /// The pod network the handler set up; `None` without one (user-mode networking).
    /// Its interface names are checked: they reach `ip` commands.
    pub fn read_network(&self) -> Result<Option<PodNetworkInfo>, VmiDirError> {
        let network: Option<PodNetworkInfo> = read_json_if_present(self.network_file())?;
        let bad = |what: String| VmiDirError::BadState {
            path: self.network_file(),
            source: serde::de::Error::custom(what),
        };
        if let Some(i) = network
            .iter()
            .flat_map(|n| &n.interfaces)
            .find(|i| !PodInterface::is_our_name(&i.interface))
        {
            return Err(bad(format!(
                "pod interface name {:?} is not eth0 or netN",
                i.interface
            )));
        }
        if let Some(d) = network.iter().flat_map(|n| &n.sriov).find(|d| {
            kubevirt_api::multus::pci_address(&d.pci_address).as_deref()
                != Some(d.pci_address.as_str())
        }) {
            return Err(bad(format!("{:?} is not a PCI address", d.pci_address)));
        }
        Ok(network)
    }

    /// Write `network.json` atomically.
    pub fn write_network(&self, n: &PodNetworkInfo) -> Result<(), VmiDirError> {
        write_json_atomically(&self.network_file(), n)
    }

    /// The restore instruction; `None` when the handler wrote none (the VMI boots).
    pub fn read_memory_restore(&self) -> Result<Option<MemoryRestore>, VmiDirError> {
        read_json_if_present(self.memory_restore_file())
    }

    /// Write `restore-memory.json` atomically (before the launcher starts).
    pub fn write_memory_restore(&self, r: &MemoryRestore) -> Result<(), VmiDirError> {
        write_json_atomically_mode(&self.memory_restore_file(), r, 0o600)
    }

    /// The [`SavedState`] beside the state file; `None` without one.
    pub fn read_saved_state(&self) -> Result<Option<SavedState>, VmiDirError> {
        read_json_if_present(self.memory_state_manifest())
    }

    /// Write `state/memory.json` atomically.
    pub fn write_saved_state(&self, s: &SavedState) -> Result<(), VmiDirError> {
        write_json_atomically_mode(&self.memory_state_manifest(), s, 0o600)
    }

    /// The last state the launcher wrote.
    pub fn read_state(&self) -> Result<State, VmiDirError> {
        let path = self.state_file();
        let text = std::fs::read(&path).map_err(|source| VmiDirError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| VmiDirError::BadState { path, source })
    }

    /// Write `state.json` atomically (a temporary file renamed over it).
    pub fn write_state(&self, state: &State) -> Result<(), VmiDirError> {
        write_json_atomically(&self.state_file(), state)
    }

    /// The pid in `launcher.pid`, if there is one.
    pub fn launcher_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.launcher_pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn write_launcher_pid(&self, pid: u32) -> Result<(), VmiDirError> {
        let path = self.launcher_pid_file();
        std::fs::write(&path, format!("{pid}\n")).map_err(|source| VmiDirError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> PathBuf {
        PathBuf::from("/var/lib/kubevirt-rs")
    }

    #[test]
    fn cluster_defaults_round_trip_and_are_absent_for_a_launcher_run_by_hand() {
        use kubevirt_api::defaults::DefaultBinding;
        let tmp = tempfile::tempdir().unwrap();
        let d = VmiDir::new(tmp.path(), "default", "vm").unwrap();
        std::fs::create_dir_all(d.path()).unwrap();
        assert_eq!(d.read_defaults().unwrap(), None);
        let defaults = DefaultsConfig {
            default_network_interface: DefaultBinding::Masquerade,
            machine_type: Some("q35".into()),
            ..DefaultsConfig::default()
        };
        d.write_defaults(&defaults).unwrap();
        assert_eq!(d.read_defaults().unwrap(), Some(defaults));
        // A damaged file is an error naming it, not silently the launcher's own defaults.
        std::fs::write(d.defaults_file(), b"{").unwrap();
        let e = d.read_defaults().unwrap_err().to_string();
        assert!(e.contains("defaults.json"), "{e}");
    }

    #[test]
    fn a_valid_pair_is_one_key_beneath_vms() {
        let d = VmiDir::new(&data(), "default", "demo.v1-2").unwrap();
        let key = VmiDir::key("default", "demo.v1-2");
        assert!(VmiDir::is_key(&key), "{key}");
        assert_eq!(d.path(), Path::new("/var/lib/kubevirt-rs/vms").join(&key));
        assert_eq!(d.launcher_socket(), d.path().join("launcher.sock"));
        assert_eq!(d.state_file().file_name().unwrap(), "state.json");
        assert!(d.path().starts_with(VmiDir::root(&data()).unwrap()));
        // Stable (a restarted handler finds its launchers), and distinct per pair: the `/`
        // keeps `a` + `b/c` apart from `a/b` + `c`.
        assert_eq!(key, VmiDir::key("default", "demo.v1-2"));
        assert_ne!(VmiDir::key("a", "bc"), VmiDir::key("ab", "c"));
        assert_ne!(VmiDir::key("a", "b.c"), VmiDir::key("a.b", "c"));
        // SHA-256("default/demo"), first 16 bytes: fixed, so a future change of the key is
        // a decision, not an accident (it would orphan running launchers).
        assert_eq!(
            VmiDir::key("default", "demo"),
            "02c8c86b636ca99e50790fccaf6d8050"
        );
    }

    #[test]
    fn relative_data_dirs_are_made_absolute() {
        let d = VmiDir::new(Path::new("data"), "default", "demo").unwrap();
        assert!(d.path().is_absolute());
        assert!(d
            .path()
            .ends_with(Path::new("data/vms").join(VmiDir::key("default", "demo"))));
    }

    #[test]
    fn traversal_and_separators_are_refused() {
        for (ns, name) in [
            ("default", "../x"),
            ("default", ".."),
            ("default", "."),
            ("default", "a/b"),
            ("default", "/etc"),
            ("default", "a\0b"),
            ("default", ""),
            ("..", "x"),
            ("a/b", "x"),
            ("", "x"),
            ("a.b", "x"),
            ("Default", "x"),
            ("default", "Demo"),
            ("default", "a..b"),
            ("default", "-a"),
            ("default", "a-"),
            ("default", "a.-b"),
        ] {
            let e = VmiDir::new(&data(), ns, name).unwrap_err();
            assert!(
                matches!(e, VmiDirError::Namespace { .. } | VmiDirError::Name { .. }),
                "{ns:?}/{name:?}: {e}"
            );
        }
    }

    #[test]
    fn the_problems_are_named_in_kubernetes_words() {
        let e = |ns: &str, name: &str| VmiDir::new(&data(), ns, name).unwrap_err().to_string();
        let msg = e(&"a".repeat(64), "x");
        assert!(msg.starts_with("invalid namespace"), "{msg}");
        assert!(msg.contains("must be no more than 63 characters"), "{msg}");
        let msg = e("default", "a/b");
        assert!(msg.starts_with("invalid name \"a/b\""), "{msg}");
        assert!(msg.contains("RFC 1123 subdomain"), "{msg}");
        assert!(e("default", &"a".repeat(254)).contains("no more than 253"));
        assert!(e("a.b", "x").contains("RFC 1123 label"));
    }

    #[test]
    fn the_longest_names_kubernetes_allows_are_accepted_and_their_sockets_fit() {
        // A 63-character namespace and a 253-character name (Kubernetes' limits) under a
        // typical data directory: every socket path is short, whatever the names.
        let longest_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest_name.len(), 253);
        for (ns, name) in [
            ("default", "x"),
            (&*"n".repeat(63), &*"v".repeat(63)),
            (&*"n".repeat(63), &*longest_name),
            ("0-0", "0-0.x"),
        ] {
            let d = VmiDir::new(&data(), ns, name).unwrap();
            for s in [
                d.launcher_socket(),
                d.console_socket(),
                d.serial_socket(),
                d.qmp_socket(),
            ] {
                assert!(s.as_os_str().len() < SUN_PATH_MAX, "{}", s.display());
            }
            assert_eq!(
                d.serial_socket().as_os_str().len(),
                "/var/lib/kubevirt-rs".len() + 57
            );
        }
    }

    #[test]
    fn a_data_directory_too_long_for_socket_paths_is_refused_up_front() {
        // <data>/vms/<32>/sockets/serial.sock is <data> + 57 bytes: 50 bytes of data
        // directory is the most that fits.
        let fits = PathBuf::from("/").join("d".repeat(49));
        let dir = VmiDir::new(&fits, "default", "demo").unwrap();
        assert_eq!(dir.serial_socket().as_os_str().len(), SUN_PATH_MAX - 1);
        let one_more = PathBuf::from("/").join("d".repeat(50));
        match VmiDir::new(&one_more, "default", "demo").unwrap_err() {
            VmiDirError::SocketPathTooLong { path, len } => {
                assert_eq!(len, SUN_PATH_MAX);
                assert!(path.ends_with("sockets/serial.sock"), "{}", path.display());
            }
            e => panic!("{e}"),
        }
        let e = VmiDir::from_path(Path::new("/").join("x".repeat(100))).unwrap_err();
        assert!(
            e.to_string()
                .contains("a unix socket path may have at most 107 bytes"),
            "{e}"
        );
    }

    #[test]
    fn all_lists_key_directories_only_and_owner_reads_vmi_json() {
        let tmp = tempfile::tempdir().unwrap();
        let d = VmiDir::new(tmp.path(), "default", "demo").unwrap();
        std::fs::create_dir_all(d.path()).unwrap();
        let root = VmiDir::root(tmp.path()).unwrap();
        // Not ours: a name that is no key, a file, and a symlink named like a key.
        std::fs::create_dir_all(root.join("default/demo")).unwrap();
        std::fs::write(root.join("0123456789abcdef0123456789abcdef"), b"").unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("fedcba9876543210fedcba9876543210"))
            .unwrap();
        assert_eq!(VmiDir::all(tmp.path()), vec![d.clone()]);
        assert_eq!(d.owner(), None);
        std::fs::write(
            d.vmi_file(),
            r#"{"metadata":{"namespace":"default","name":"demo","uid":"u-1"}}"#,
        )
        .unwrap();
        assert_eq!(
            d.owner(),
            Some(VmiOwner {
                namespace: "default".into(),
                name: "demo".into(),
                uid: "u-1".into()
            })
        );
    }

    #[test]
    fn node_volumes_round_trip_and_are_empty_when_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let d = VmiDir::new(tmp.path(), "default", "demo").unwrap();
        std::fs::create_dir_all(d.path()).unwrap();
        assert_eq!(d.read_volumes().unwrap(), NodeVolumes::default());
        let mut v = NodeVolumes::default();
        v.persistent_volume_claims
            .insert("claim".into(), PathBuf::from("/v/pvc-1/disk.img"));
        v.data_volumes
            .insert("dv".into(), PathBuf::from("/v/pvc-2/disk.img"));
        d.write_volumes(&v).unwrap();
        assert_eq!(d.read_volumes().unwrap(), v);
        let text = std::fs::read_to_string(d.volumes_file()).unwrap();
        assert!(text.contains("\"persistentVolumeClaims\""), "{text}");
        std::fs::write(d.volumes_file(), "{not json").unwrap();
        assert!(matches!(
            d.read_volumes(),
            Err(VmiDirError::BadState { .. })
        ));
    }

    #[test]
    fn secret_data_files_are_owner_only_and_round_trip() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = VmiDir::new(tmp.path(), "default", "demo").unwrap();
        std::fs::create_dir_all(d.path()).unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let mut v = NodeVolumes::default();
        v.cloud_init.insert(
            "cloudinit".into(),
            crate::machine::ResolvedCloudInit {
                user_data: Some("#!/bin/sh\necho secret\n".into()),
                network_data: None,
                public_keys: vec!["ssh-ed25519 K".into()],
            },
        );
        d.write_volumes(&v).unwrap();
        assert_eq!(d.read_volumes().unwrap(), v);
        assert_eq!(mode(d.volumes_file()), 0o600);
        assert_eq!(d.read_access_credentials().unwrap(), None);
        let mut c = AgentCredentials::default();
        c.passwords.insert("demo".into(), "pw".into());
        c.authorized_keys
            .insert("demo".into(), vec!["ssh-rsa A".into()]);
        d.write_access_credentials(&c).unwrap();
        assert_eq!(d.read_access_credentials().unwrap(), Some(c));
        assert_eq!(mode(d.access_credentials_file()), 0o600);
        // A rewrite (a Secret changed) keeps the mode; no temporary file is left.
        d.write_access_credentials(&AgentCredentials::default())
            .unwrap();
        assert_eq!(mode(d.access_credentials_file()), 0o600);
        assert!(!d.path().join("access-credentials.json.tmp").exists());
    }

    #[test]
    fn state_and_pid_files_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let d = VmiDir::new(tmp.path(), "default", "demo").unwrap();
        assert!(d.read_state().is_err());
        assert_eq!(d.launcher_pid(), None);
        std::fs::create_dir_all(d.path()).unwrap();
        let mut s = State::pending("default/demo");
        // serde_json parses floats fast, not always to the nearest f64 (no `float_roundtrip`):
        // a time of day is compared at a value JSON carries exactly.
        s.timestamp = 1_795_965_296.5;
        d.write_state(&s).unwrap();
        assert_eq!(d.read_state().unwrap(), s);
        d.write_launcher_pid(1234).unwrap();
        assert_eq!(d.launcher_pid(), Some(1234));
        std::fs::create_dir_all(tmp.path().join("vms/default/Not_Valid")).unwrap();
        assert_eq!(VmiDir::all(tmp.path()), vec![d]);
    }
}
