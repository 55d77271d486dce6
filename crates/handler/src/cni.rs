//! A CNI runtime, as kubelet's (libcni) drives plugins for a Pod: the network of a VMI on this
//! node is set up by the standard CNI plugins (Debian's `containernetworking-plugins`, or
//! whatever a cluster installs) following the CNI specification 1.0:
//!
//! - a network configuration list (`.conflist`, or a single `.conf`) names plugins by `type`;
//! - `ADD` runs them in order, each given the previous one's result as `prevResult`; the final
//!   result is cached, so `CHECK` and `DEL` can hand it back;
//! - `DEL` runs them in reverse order and succeeds when there is nothing left to delete, so it
//!   can be repeated (after a crash, a restart, a half-done `ADD`);
//! - a plugin reports failure with a non-zero exit and an error object on stdout; its message is
//!   carried as it is ([`CniError::Plugin`]).
//!
//! An `ADD` that fails is undone at once with a `DEL`: nothing half-configured stays behind.
//!
//! Hostile input: the network's `name` and every plugin `type` come from configuration an API
//! user may write (a NetworkAttachmentDefinition); `type` must be a plain file name found in
//! the plugin directories, and the name, container id and interface name become a cache file
//! name only in a checked form.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The CNI specification version this runtime speaks.
pub const CNI_VERSION: &str = "1.0.0";

/// How long one plugin may run (kubelet has no limit; a hung plugin must not hang a VMI).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("network configuration: {0}")]
    Config(String),
    #[error("CNI plugin {plugin:?} is not installed in {dirs}")]
    NotInstalled { plugin: String, dirs: String },
    /// The plugin's own error object (CNI spec: `code`, `msg`, `details`).
    #[error("CNI plugin {plugin} failed ({command}): {msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin} did not finish {command} within {timeout:?}")]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("CNI plugin {plugin}: unreadable result of {command}: {message}")]
    BadResult {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A network configuration list: the plugins, in order, and the network's name.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's configuration object (with its `type`), as written.
    pub plugins: Vec<Map<String, Value>>,
}

/// The name of a network, a plugin type, a container id or an interface: what may become part
/// of a file name or be looked up as a binary.
fn plain(what: &str, s: &str, max: usize) -> Result<(), CniError> {
    if kubevirt_api::multus::plain(s, max) {
        Ok(())
    } else {
        Err(CniError::Config(format!(
            "{what} {s:?} must be 1-{max} characters of [A-Za-z0-9_.-]"
        )))
    }
}

impl NetworkConfigList {
    /// Parses a `.conflist` (`{"name", "cniVersion", "plugins": [...]}`) or a single plugin's
    /// `.conf` (`{"name", "cniVersion", "type", ...}`), as a NetworkAttachmentDefinition's
    /// `spec.config` may hold either.
    pub fn parse(text: &str) -> Result<NetworkConfigList, CniError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| CniError::Config(format!("not JSON: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(CniError::Config("not a JSON object".into()));
        };
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| CniError::Config("\"name\" is missing".into()))?
            .to_string();
        plain("network name", &name, 128)?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(CNI_VERSION)
            .to_string();
        let plugins: Vec<Map<String, Value>> = match obj.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| match p {
                    Value::Object(m) => Ok(m.clone()),
                    _ => Err(CniError::Config(
                        "every entry of \"plugins\" must be an object".into(),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(CniError::Config("\"plugins\" must be a list".into())),
            None => vec![obj.clone()],
        };
        if plugins.is_empty() {
            return Err(CniError::Config("\"plugins\" is empty".into()));
        }
        for p in &plugins {
            let t = p
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| CniError::Config("a plugin has no \"type\"".into()))?;
            plain("plugin type", t, 64)?;
        }
        Ok(NetworkConfigList {
            name,
            cni_version,
            plugins,
        })
    }

    /// The list as a `.conflist` document.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": self.plugins,
        })
    }

    fn plugin_type(p: &Map<String, Value>) -> &str {
        p.get("type").and_then(Value::as_str).unwrap_or_default()
    }
}

/// What is attached where (CNI's runtime configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `CNI_CONTAINERID`: unique per VMI on this node.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface inside it.
    pub ifname: String,
    /// `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...); `IgnoreUnknown=1` is added.
    #[serde(default)]
    pub args: Vec<(String, String)>,
}

/// A plugin's result (CNI spec 1.0, "Success").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<ResultInterface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<ResultIp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Value>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub dns: Value,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultInterface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path when the interface is inside the container's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultIp {
    /// CIDR form, e.g. `10.244.0.5/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl CniResult {
    /// The addresses (without prefix length) on the interface named `ifname` inside the
    /// sandbox, in the plugin's order.
    pub fn addresses_of(&self, ifname: &str) -> Vec<String> {
        self.ips_on(ifname)
            .map(|ip| {
                ip.address
                    .split_once('/')
                    .map_or(ip.address.clone(), |(a, _)| a.to_string())
            })
            .collect()
    }

    /// The result's addresses on the interface named `ifname` inside the sandbox (or on no
    /// interface in particular).
    pub fn ips_on<'a>(&'a self, ifname: &'a str) -> impl Iterator<Item = &'a ResultIp> + 'a {
        self.ips.iter().filter(move |ip| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_none_or(|i| i.name == ifname && !i.sandbox.is_empty())
        })
    }

    /// The MAC address of `ifname` inside the sandbox, if the plugin reported it.
    pub fn mac_of(&self, ifname: &str) -> Option<&str> {
        self.interfaces
            .iter()
            .find(|i| i.name == ifname && !i.sandbox.is_empty() && !i.mac.is_empty())
            .map(|i| i.mac.as_str())
    }
}

/// What `ADD` leaves for `CHECK` and `DEL` (libcni keeps the same in `/var/lib/cni/results`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheEntry {
    network: String,
    attachment: Attachment,
    result: CniResult,
    /// The configuration list `ADD` ran (libcni caches it too): `DEL` needs it after its
    /// source (a NetworkAttachmentDefinition) is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
}

/// An attachment an earlier `ADD` left in the cache.
#[derive(Clone, Debug)]
pub struct Cached {
    /// The network's name.
    pub network: String,
    /// The configuration list `ADD` ran, when the cache holds it.
    pub config: Option<NetworkConfigList>,
    pub attachment: Attachment,
    pub result: CniResult,
}

/// Runs CNI plugins from `plugin_dirs`, caching results in `cache_dir`.
#[derive(Clone, Debug)]
pub struct Cni {
    pub plugin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Add,
    Check,
    Del,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Check => "CHECK",
            Command::Del => "DEL",
        }
    }
}

impl Cni {
    /// Debian's `containernetworking-plugins` directory, then the usual `/opt/cni/bin`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Cni {
        Cni {
            plugin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            cache_dir: cache_dir.into(),
            timeout: PLUGIN_TIMEOUT,
        }
    }

    /// The plugin binary for `type` (already checked to be a plain name).
    pub fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniError> {
        plain("plugin type", plugin, 64)?;
        self.plugin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::NotInstalled {
                plugin: plugin.to_string(),
                dirs: self
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    fn cache_file(&self, net: &NetworkConfigList, at: &Attachment) -> Result<PathBuf, CniError> {
        plain("container id", &at.container_id, 128)?;
        plain("interface name", &at.ifname, 15)?;
        Ok(self
            .cache_dir
            .join(format!("{}-{}-{}", net.name, at.container_id, at.ifname)))
    }

    /// The cached result of an earlier `ADD`, if there is one.
    pub fn cached(
        &self,
        net: &NetworkConfigList,
        at: &Attachment,
    ) -> Result<Option<CniResult>, CniError> {
        let path = self.cache_file(net, at)?;
        match std::fs::read(&path) {
            Ok(b) => Ok(serde_json::from_slice::<CacheEntry>(&b)
                .map(|e| e.result)
                .ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CniError::Io { path, source }),
        }
    }

    /// Every attachment in the cache (of `container_id` when given), in no particular order.
    /// Unreadable entries are skipped: they cannot be acted on.
    pub fn cached_attachments(&self, container_id: Option<&str>) -> Vec<Cached> {
        let Ok(dir) = std::fs::read_dir(&self.cache_dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_none_or(|x| x != "tmp"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<CacheEntry>(&b).ok())
            .filter(|e| container_id.is_none_or(|c| e.attachment.container_id == c))
            .map(|e| Cached {
                config: e
                    .config
                    .and_then(|c| NetworkConfigList::parse(&c.to_string()).ok()),
                network: e.network,
                attachment: e.attachment,
                result: e.result,
            })
            .collect()
    }

    /// `ADD`: every plugin in order; the result is cached. On failure, the plugins are asked to
    /// `DEL` what they may have done, and the plugin's error is returned.
    pub async fn add(
        &self,
        net: &NetworkConfigList,
        at: &Attachment,
    ) -> Result<CniResult, CniError> {
        let cache = self.cache_file(net, at)?;
        let mut prev: Option<CniResult> = None;
        for p in &net.plugins {
            match self.exec(Command::Add, net, p, at, prev.as_ref()).await {
                Ok(r) => prev = Some(r.unwrap_or_default()),
                Err(e) => {
                    if let Err(undo) = self.del_with(net, at, prev.as_ref()).await {
                        tracing::warn!(error = %undo, network = %net.name, "undoing a failed CNI ADD");
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or_default();
        std::fs::create_dir_all(&self.cache_dir).map_err(|source| CniError::Io {
            path: self.cache_dir.clone(),
            source,
        })?;
        let entry = CacheEntry {
            network: net.name.clone(),
            attachment: at.clone(),
            result: result.clone(),
            config: Some(net.to_value()),
        };
        let tmp = cache.with_extension("tmp");
        let text = serde_json::to_vec(&entry).map_err(|e| CniError::Config(e.to_string()))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &cache))
            .map_err(|source| CniError::Io {
                path: cache.clone(),
                source,
            })?;
        Ok(result)
    }

    /// `CHECK`: every plugin in order, given the cached result.
    pub async fn check(&self, net: &NetworkConfigList, at: &Attachment) -> Result<(), CniError> {
        let prev = self.cached(net, at)?.ok_or_else(|| {
            CniError::Config(format!(
                "no cached result for {} on {}: nothing to check",
                net.name, at.container_id
            ))
        })?;
        for p in &net.plugins {
            self.exec(Command::Check, net, p, at, Some(&prev)).await?;
        }
        Ok(())
    }

    /// `DEL`: every plugin in reverse order, given the cached result; then the cache entry
    /// goes. Succeeds when there is nothing to delete, so it may be repeated.
    pub async fn del(&self, net: &NetworkConfigList, at: &Attachment) -> Result<(), CniError> {
        let prev = self.cached(net, at)?;
        self.del_with(net, at, prev.as_ref()).await?;
        let cache = self.cache_file(net, at)?;
        match std::fs::remove_file(&cache) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Io {
                path: cache,
                source,
            }),
        }
    }

    async fn del_with(
        &self,
        net: &NetworkConfigList,
        at: &Attachment,
        prev: Option<&CniResult>,
    ) -> Result<(), CniError> {
        let mut first_err = None;
        for p in net.plugins.iter().rev() {
            if let Err(e) = self.exec(Command::Del, net, p, at, prev).await {
                // The others still get their DEL; the first error is reported.
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// One plugin, one command: CNI_* in the environment, the configuration on stdin, the
    /// result (or error object) on stdout.
    async fn exec(
        &self,
        command: Command,
        net: &NetworkConfigList,
        plugin: &Map<String, Value>,
        at: &Attachment,
        prev: Option<&CniResult>,
    ) -> Result<Option<CniResult>, CniError> {
        let ty = NetworkConfigList::plugin_type(plugin).to_string();
        let bin = self.find_plugin(&ty)?;
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::String(net.name.clone()));
        conf.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
        if let Some(prev) = prev {
            let v = serde_json::to_value(prev).map_err(|e| CniError::Config(e.to_string()))?;
            conf.insert("prevResult".into(), v);
        }
        let stdin = serde_json::to_vec(&conf).map_err(|e| CniError::Config(e.to_string()))?;
        // As kubelet: `IgnoreUnknown=1` first, so plugins that do not know `K8S_POD_*` accept
        // them.
        let args = at
            .args
            .iter()
            .filter(|(k, _)| k != "IgnoreUnknown")
            .map(|(k, v)| format!("{k}={v}"))
            .fold(
                if at.args.is_empty() {
                    String::new()
                } else {
                    "IgnoreUnknown=1".to_string()
                },
                |acc, kv| acc + ";" + &kv,
            );
        let path = self
            .plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let t0 = std::time::Instant::now();
        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &at.container_id)
            .env("CNI_NETNS", &at.netns)
            .env("CNI_IFNAME", &at.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CniError::Io {
                path: bin.clone(),
                source,
            })?;
        if let Some(mut i) = child.stdin.take() {
            // A plugin that exits without reading its stdin is judged by its exit status.
            let _ = i.write_all(&stdin).await;
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| CniError::Timeout {
                plugin: ty.clone(),
                command: command.as_str(),
                timeout: self.timeout,
            })?
            .map_err(|source| CniError::Io {
                path: bin.clone(),
                source,
            })?;
        tracing::debug!(
            plugin = %ty,
            command = command.as_str(),
            network = %net.name,
            container = %at.container_id,
            ms = t0.elapsed().as_millis() as u64,
            ok = out.status.success(),
            "CNI plugin"
        );
        if !out.status.success() {
            #[derive(Deserialize)]
            struct ErrorObject {
                #[serde(default)]
                code: u32,
                #[serde(default)]
                msg: String,
                #[serde(default)]
                details: String,
            }
            let (code, msg, details) = match serde_json::from_slice::<ErrorObject>(&out.stdout) {
                Ok(e) => (e.code, e.msg, e.details),
                Err(_) => (
                    0,
                    format!(
                        "{} (stderr: {})",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    String::new(),
                ),
            };
            return Err(CniError::Plugin {
                plugin: ty,
                command: command.as_str(),
                code,
                msg,
                details,
            });
        }
        if command != Command::Add || out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| CniError::BadResult {
                plugin: ty,
                command: command.as_str(),
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conf_and_a_conflist_both_parse() {
        let l = NetworkConfigList::parse(
            r#"{"cniVersion":"0.4.0","name":"pod","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        assert_eq!(l.name, "pod");
        assert_eq!(l.cni_version, "0.4.0");
        assert_eq!(l.plugins.len(), 2);
        let c = NetworkConfigList::parse(r#"{"name":"br","type":"bridge","bridge":"x"}"#).unwrap();
        assert_eq!(c.cni_version, CNI_VERSION);
        assert_eq!(NetworkConfigList::plugin_type(&c.plugins[0]), "bridge");
    }

    #[test]
    fn hostile_names_and_types_are_refused() {
        for (text, needle) in [
            (r#"{"name":"../etc","type":"bridge"}"#, "network name"),
            (r#"{"name":"n","type":"../../bin/sh"}"#, "plugin type"),
            (r#"{"name":"n","type":"/bin/sh"}"#, "plugin type"),
            (r#"{"name":"n","plugins":[{"type":"a,b"}]}"#, "plugin type"),
            (r#"{"name":"n","plugins":[]}"#, "empty"),
            (r#"{"name":"n","plugins":[{"bridge":"x"}]}"#, "no \"type\""),
            (r#"{"type":"bridge"}"#, "\"name\" is missing"),
            (r#"["x"]"#, "not a JSON object"),
        ] {
            let e = NetworkConfigList::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let cni = Cni::new("/nonexistent");
        let net = NetworkConfigList::parse(r#"{"name":"n","type":"bridge"}"#).unwrap();
        let at = Attachment {
            container_id: "../x".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: vec![],
        };
        assert!(cni.cache_file(&net, &at).is_err());
        let at = Attachment {
            container_id: "x".into(),
            ifname: "a-very-long-ifname".into(),
            ..at
        };
        assert!(cni.cache_file(&net, &at).is_err());
    }

    #[test]
    fn addresses_are_those_of_the_sandbox_interface() {
        let r: CniResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"br"},{"name":"veth1"},
                {"name":"eth0","mac":"52:54:00:00:00:01","sandbox":"/run/netns/x"}],
                "ips":[{"interface":2,"address":"10.244.0.5/24","gateway":"10.244.0.1"},
                       {"interface":0,"address":"10.244.0.1/24"}]}"#,
        )
        .unwrap();
        assert_eq!(r.addresses_of("eth0"), vec!["10.244.0.5".to_string()]);
        assert_eq!(r.mac_of("eth0"), Some("52:54:00:00:00:01"));
        assert_eq!(r.mac_of("br"), None);
    }
}
