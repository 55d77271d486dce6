//! Authentication: who a request is from, as kube-apiserver's authenticators decide it.
//!
//! - the admin token (`token` in the data directory): user `admin` in `system:masters`;
//! - a static token file (`tokens.csv`, kube-apiserver's `--token-auth-file` format:
//!   `token,user,uid,"group1,group2"`), re-read when it changes, which
//!   `kubevirt-rs user add` appends to;
//! - ServiceAccount tokens issued by the TokenRequest API (`kubectl create token`): JWTs
//!   signed with HMAC-SHA256 under a key kept in the data directory (`sa.key`), valid until
//!   they expire and while the ServiceAccount (same uid) exists.
//!
//! Every authenticated user is also in `system:authenticated`.

use crate::objects::ApiServer;
use crate::store::Key;
use base64::Engine;
use parking_lot::RwLock;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The static token file in the data directory.
pub const TOKENS_FILE: &str = "tokens.csv";
/// The ServiceAccount token signing key in the data directory.
pub const SA_KEY_FILE: &str = "sa.key";
/// The issuer of ServiceAccount tokens (kube-apiserver's default `--service-account-issuer`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The admin token's user.
pub const ADMIN_USER: &str = "admin";
pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
/// Longest token lifetime a TokenRequest gets (kube-apiserver's default maximum is longer;
/// 48 h keeps a leaked token short-lived) and the default (1 h, as kube-apiserver).
pub const MAX_TOKEN_SECONDS: i64 = 48 * 3600;
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn info(&self) -> Value {
        json!({"username": self.name, "uid": self.uid, "groups": self.groups})
    }
}

struct TokenFile {
    modified: Option<SystemTime>,
    checked: Option<std::time::Instant>,
    tokens: Vec<(String, User)>,
}

pub struct Authenticator {
    admin_token: String,
    tokens_path: PathBuf,
    tokens: RwLock<TokenFile>,
    sa_key: ring::hmac::Key,
}

/// Constant-time string equality.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// One CSV field list with double-quoted fields (`"a,b"`); no escapes inside quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|f| f.trim().to_string()).collect()
}

/// Parses a token file; malformed lines are skipped with a warning.
pub fn parse_tokens(text: &str) -> Vec<(String, User)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f = csv_fields(line);
        if f.len() < 3 || f[0].len() < 16 || f[1].is_empty() {
            tracing::warn!(
                line = n + 1,
                "tokens.csv: a line needs token (16+ characters), user and uid; skipped"
            );
            continue;
        }
        let mut groups: Vec<String> = f
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        groups.push(AUTHENTICATED.into());
        out.push((
            f[0].clone(),
            User {
                name: f[1].clone(),
                uid: f[2].clone(),
                groups,
            },
        ));
    }
    out
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Authenticator {
    /// Loads (or creates) the signing key; the token file is read on first use.
    pub fn load(data_dir: &Path, admin_token: &str) -> anyhow::Result<Authenticator> {
        let key_path = data_dir.join(SA_KEY_FILE);
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() >= 32 => k,
            _ => {
                let mut k = vec![0u8; 32];
                rand::fill(&mut k[..]);
                crate::server::write_private(&key_path, &k)?;
                k
            }
        };
        Ok(Authenticator {
            admin_token: admin_token.to_string(),
            tokens_path: data_dir.join(TOKENS_FILE),
            tokens: RwLock::new(TokenFile {
                modified: None,
                checked: None,
                tokens: Vec::new(),
            }),
            sa_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        })
    }

    /// Re-reads the token file when its modification time changed (checked at most once a
    /// second).
    fn static_tokens(&self) -> parking_lot::RwLockReadGuard<'_, TokenFile> {
        let stale = self
            .tokens
            .read()
            .checked
            .is_none_or(|t| t.elapsed().as_secs() >= 1);
        if stale {
            let mut f = self.tokens.write();
            f.checked = Some(std::time::Instant::now());
            let modified = std::fs::metadata(&self.tokens_path)
                .and_then(|m| m.modified())
                .ok();
            if modified != f.modified {
                f.modified = modified;
                f.tokens = std::fs::read_to_string(&self.tokens_path)
                    .map(|t| parse_tokens(&t))
                    .unwrap_or_default();
                tracing::info!(users = f.tokens.len(), "loaded tokens.csv");
            }
        }
        self.tokens.read()
    }

    /// The user a bearer token stands for.
    pub fn authenticate(&self, token: &str, api: &ApiServer) -> Option<User> {
        if same(token, &self.admin_token) {
            return Some(User {
                name: ADMIN_USER.into(),
                uid: String::new(),
                groups: vec![MASTERS.into(), AUTHENTICATED.into()],
            });
        }
        if token.matches('.').count() == 2 {
            if let Some(u) = self.service_account(token, api) {
                return Some(u);
            }
        }
        self.static_tokens()
            .tokens
            .iter()
            .find(|(t, _)| same(t, token))
            .map(|(_, u)| u.clone())
    }

    /// Issues a ServiceAccount token: `(token, expiration as unix seconds)`.
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
    ) -> (String, i64) {
        let now = unix_now();
        let exp = now + seconds.clamp(600, MAX_TOKEN_SECONDS);
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": if audiences.is_empty() { vec![ISSUER.to_string()] } else { audiences.to_vec() },
            "iat": now, "nbf": now, "exp": exp,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        });
        let payload = b64(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{payload}");
        let sig = ring::hmac::sign(&self.sa_key, signing_input.as_bytes());
        (format!("{signing_input}.{}", b64(sig.as_ref())), exp)
    }

    fn service_account(&self, token: &str, api: &ApiServer) -> Option<User> {
        let (signing_input, sig) = token.rsplit_once('.')?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .ok()?;
        ring::hmac::verify(&self.sa_key, signing_input.as_bytes(), &sig).ok()?;
        let (_, payload) = signing_input.split_once('.')?;
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()?,
        )
        .ok()?;
        if claims["exp"].as_i64().is_none_or(|e| e < unix_now()) {
            return None;
        }
        let k = &claims["kubernetes.io"];
        let ns = k["namespace"].as_str()?;
        let name = k["serviceaccount"]["name"].as_str()?;
        let uid = k["serviceaccount"]["uid"].as_str()?;
        // Valid only while the ServiceAccount it was issued for exists.
        let sa = api.store.get(&Key::new("", "serviceaccounts", ns, name))?;
        if sa.value()["metadata"]["uid"].as_str() != Some(uid) {
            return None;
        }
        Some(User {
            name: format!("system:serviceaccount:{ns}:{name}"),
            uid: uid.to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                AUTHENTICATED.into(),
            ],
        })
    }
}

/// Adds a user with a new token to the data directory's token file and returns the token.
/// `name` must be a plain user name (no commas, quotes or line breaks: it is a CSV field).
pub fn add_user(data_dir: &Path, name: &str, groups: &[String]) -> anyhow::Result<String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
    };
    if !plain(name) {
        anyhow::bail!("user name {name:?}: use letters, digits and - _ . : @ (at most 253)");
    }
    if let Some(g) = groups.iter().find(|g| !plain(g)) {
        anyhow::bail!("group {g:?}: use letters, digits and - _ . : @ (at most 253)");
    }
    let path = data_dir.join(TOKENS_FILE);
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    if parse_tokens(&existing).iter().any(|(_, u)| u.name == name) {
        anyhow::bail!("user {name} already exists in {}", path.display());
    }
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = b64(&bytes);
    let uid = uuid::Uuid::new_v4().to_string();
    let line = format!("{token},{name},{uid},\"{}\"\n", groups.join(","));
    crate::server::write_private(&path, format!("{existing}{line}").as_bytes())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines_parse_and_malformed_ones_are_skipped() {
        let t = parse_tokens(
            "# comment\nabcdefghijklmnopq,alice,u1,\"devs,ops\"\nshort,bob,u2\nabcdefghijklmnopqr,carol,u3\n,,,\n",
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].1.name, "alice");
        assert_eq!(t[0].1.groups, vec!["devs", "ops", AUTHENTICATED]);
        assert_eq!(t[1].1.groups, vec![AUTHENTICATED]);
    }

    #[test]
    fn user_names_that_would_break_the_file_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        for bad in ["a,b", "a\nb", "x\"y", ""] {
            assert!(add_user(dir.path(), bad, &[]).is_err(), "{bad:?}");
        }
        let t = add_user(dir.path(), "alice", &["devs".into()]).expect("add");
        assert!(add_user(dir.path(), "alice", &[]).is_err(), "added twice");
        let parsed =
            parse_tokens(&std::fs::read_to_string(dir.path().join(TOKENS_FILE)).expect("read"));
        assert_eq!(parsed[0].0, t);
    }
}
