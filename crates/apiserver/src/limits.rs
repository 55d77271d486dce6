//! Limits on what the server accepts and keeps: nesting depth and size of request bodies and
//! stored objects, the time a body may take to decode, and the defaults of the connection and
//! watch-window limits in [`Limits`].
//!
//! The depth limit is well under serde_json's own recursion limit (128), so an object the
//! server stored can always be parsed again when the store is loaded.

use crate::error::ApiError;
use bytes::Bytes;
use serde_json::Value;
use std::time::Duration;

/// Deepest nesting of arrays and objects (together) accepted in a body or a stored object.
/// The top-level object counts as 1.
pub const MAX_DEPTH: usize = 64;

/// Largest serialized object the store keeps: the request body cap.
pub const MAX_OBJECT_BYTES: usize = crate::http::MAX_BODY;

/// Bodies larger than this are decoded on a blocking thread, so a slow decode never holds up
/// the async workers (and `/healthz`).
const INLINE_DECODE_BYTES: usize = 16 * 1024;

/// How long decoding one body may take.
pub const DECODE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection and watch limits of a server; see [`crate::Config`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// A TLS handshake that has not finished by then is dropped.
    pub tls_handshake_timeout: Duration,
    /// Time a client has to send a request's headers. hyper starts this timer whenever the
    /// connection waits for a request head, so it is also the idle keep-alive timeout.
    pub header_read_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Bytes of object JSON the watch event window keeps.
    pub watch_window_bytes: usize,
    /// Events the watch event window keeps.
    pub watch_window_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            // Longer than a kube-rs client keeps an idle pooled connection (hyper-util: 90 s),
            // so the client always closes first and never sends on a connection we close.
            header_read_timeout: Duration::from_secs(120),
            max_connections: 4096,
            watch_window_bytes: 64 * 1024 * 1024,
            watch_window_events: crate::store::EVENT_WINDOW,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("nesting depth exceeds the limit of {MAX_DEPTH} levels of arrays and objects")]
    TooDeep,
    #[error("the object is at least {0} bytes, larger than the limit of {MAX_OBJECT_BYTES} bytes")]
    TooLarge(usize),
}

/// Depth of arrays and objects in `v` (a scalar is 0, `{}` is 1), or `Err` as soon as it
/// passes `limit`. Iterative, so an arbitrarily deep value cannot overflow the stack.
pub fn check_depth(v: &Value, limit: usize) -> Result<usize, LimitError> {
    let mut max = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(v, 1)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                if d > limit {
                    return Err(LimitError::TooDeep);
                }
                max = max.max(d);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(m) => {
                if d > limit {
                    return Err(LimitError::TooDeep);
                }
                max = max.max(d);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    Ok(max)
}

/// `Err` as soon as the JSON text of `v` would pass `limit` bytes (estimated from its strings,
/// keys and scalars, without serialising).
pub fn check_size(v: &Value, limit: usize) -> Result<(), LimitError> {
    let mut total = 0usize;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a.iter());
                2 + a.len()
            }
            Value::Object(m) => {
                stack.extend(m.values());
                2 + m.keys().map(|k| k.len() + 4).sum::<usize>()
            }
            _ => 5,
        };
        if total > limit {
            return Err(LimitError::TooLarge(total));
        }
    }
    Ok(())
}

/// What every object must satisfy before it is stored.
pub fn check_object(v: &Value) -> Result<(), LimitError> {
    check_depth(v, MAX_DEPTH).map(|_| ())
}

/// Nesting depth of a JSON text, counting `[` and `{` outside strings; `Err` as soon as it
/// passes `limit`. Linear; does not validate the JSON.
pub fn scan_json(b: &[u8], limit: usize) -> Result<(), LimitError> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &c in b {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(LimitError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// An upper estimate of the nesting depth of a YAML text, `Err` as soon as it passes `limit`.
/// Block collections are tracked by the column they start at (a `- ` item, a `key:`, compact
/// `- - x` and indentless sequences included); flow nesting is `[`/`{` opened at the start of
/// a node, outside quoted and block scalars and comments, and may span lines. Linear.
pub fn scan_yaml(b: &[u8], limit: usize) -> Result<(), LimitError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Quote {
        None,
        Double,
        Single,
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Coll {
        Seq,
        Map,
    }
    let check = |d: usize| {
        if d > limit {
            Err(LimitError::TooDeep)
        } else {
            Ok(())
        }
    };
    let mut flow = 0usize;
    // Open block collections: the column each starts at, and its kind.
    let mut open: Vec<(usize, Coll)> = Vec::new();
    // Indentation of the line that opened a block scalar: more-indented lines are its text.
    let mut block_scalar: Option<usize> = None;
    let mut quote = Quote::None;
    let mut escaped = false;
    for line in b.split(|&c| c == b'\n') {
        let indent = line.iter().take_while(|&&c| c == b' ').count();
        let rest = &line[indent..];
        let blank = rest.iter().all(|c| c.is_ascii_whitespace());
        if let Some(parent) = block_scalar {
            if blank || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut i = 0;
        // Whether the next character starts a node (where a quote, `[`, `{`, `|`, `>` are
        // indicators rather than part of a plain scalar).
        let mut node_start = true;
        // Whether the last token was a quoted scalar: in flow context, a `:` right after one
        // is an indicator even without a following space (`{"a":"b"}`).
        let mut after_quoted = false;
        // The column of this line's node, which a block-level `key:` makes a mapping.
        let mut key_col: Option<usize> = None;
        if quote == Quote::None && flow == 0 {
            if blank || rest.first() == Some(&b'#') {
                continue;
            }
            if rest.starts_with(b"---") || rest.starts_with(b"...") {
                open.clear();
                i = 3;
            }
            while open.last().is_some_and(|&(c, _)| c > indent) {
                open.pop();
            }
            // Sequence items and complex keys, compact ones (`- - x`) included.
            loop {
                while rest.get(i) == Some(&b' ') {
                    i += 1;
                }
                match (rest.get(i), rest.get(i + 1)) {
                    (Some(&m @ (b'-' | b'?')), None | Some(b' ' | b'\t' | b'\r')) => {
                        let entry = (indent + i, if m == b'-' { Coll::Seq } else { Coll::Map });
                        if open.last() != Some(&entry) {
                            open.push(entry);
                            check(open.len())?;
                        }
                        i += 1;
                    }
                    _ => break,
                }
            }
            key_col = Some(indent + i);
        }
        while i < rest.len() {
            let c = rest[i];
            i += 1;
            match quote {
                Quote::Double => {
                    if escaped {
                        escaped = false;
                    } else if c == b'\\' {
                        escaped = true;
                    } else if c == b'"' {
                        quote = Quote::None;
                        node_start = false;
                        after_quoted = true;
                    }
                    continue;
                }
                Quote::Single => {
                    if c == b'\'' {
                        if rest.get(i) == Some(&b'\'') {
                            i += 1;
                        } else {
                            quote = Quote::None;
                            node_start = false;
                            after_quoted = true;
                        }
                    }
                    continue;
                }
                Quote::None => {}
            }
            let quoted_key = std::mem::take(&mut after_quoted);
            match c {
                b' ' | b'\t' | b'\r' => after_quoted = quoted_key,
                b'#' if i == 1 || matches!(rest[i - 2], b' ' | b'\t') => break,
                b'"' if node_start => quote = Quote::Double,
                b'\'' if node_start => quote = Quote::Single,
                b'[' | b'{' if node_start || flow > 0 => {
                    flow += 1;
                    check(open.len() + flow)?;
                    node_start = true;
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    node_start = false;
                }
                b',' if flow > 0 => node_start = true,
                b':' if matches!(rest.get(i), None | Some(b' ' | b'\t' | b'\r'))
                    || (flow > 0 && quoted_key) =>
                {
                    node_start = true;
                    if flow == 0 {
                        if let Some(col) = key_col.take() {
                            // A key at the column of an indentless sequence ends it.
                            if open.last() == Some(&(col, Coll::Seq)) {
                                open.pop();
                            }
                            if open.last() != Some(&(col, Coll::Map)) {
                                open.push((col, Coll::Map));
                                check(open.len())?;
                            }
                        }
                    }
                }
                b'-' | b'?' if node_start && matches!(rest.get(i), None | Some(b' ')) => {}
                b'&' if node_start => {
                    // An anchor: the node follows it.
                    while i < rest.len()
                        && (rest[i].is_ascii_alphanumeric() || matches!(rest[i], b'-' | b'_'))
                    {
                        i += 1;
                    }
                }
                b'!' if node_start => {
                    // A tag: the node follows it.
                    while i < rest.len()
                        && !matches!(rest[i], b' ' | b'\t' | b'[' | b']' | b'{' | b'}' | b',')
                    {
                        i += 1;
                    }
                }
                b'|' | b'>' if node_start && flow == 0 => {
                    let tail = &rest[i..];
                    let end = tail.iter().position(|&c| c == b'#').unwrap_or(tail.len());
                    if tail[..end]
                        .iter()
                        .all(|c| matches!(c, b'+' | b'-' | b'0'..=b'9' | b' ' | b'\t' | b'\r'))
                    {
                        block_scalar = Some(indent);
                        break;
                    }
                    node_start = false;
                }
                _ => node_start = false,
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// Why a request body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the request body is nested deeper than {MAX_DEPTH} levels of arrays and objects")]
    TooDeep,
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("error decoding YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("decoding the request body took longer than {}s", DECODE_TIMEOUT.as_secs())]
    Timeout,
    #[error("decoding the request body failed: {0}")]
    Task(String),
}

impl DecodeError {
    /// The `Status` a client gets: 400, with `json_context` before a JSON syntax error.
    pub fn into_api(self, json_context: impl FnOnce() -> String) -> ApiError {
        match self {
            DecodeError::Json(e) => ApiError::bad_request(format!("{}{e}", json_context())),
            DecodeError::Task(m) => ApiError::internal(m),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

/// Decodes a body synchronously, refusing one nested deeper than [`MAX_DEPTH`] before the
/// parser sees it.
pub fn decode_now(b: &[u8], format: Format) -> Result<Value, DecodeError> {
    match format {
        Format::Json => {
            scan_json(b, MAX_DEPTH).map_err(|_| DecodeError::TooDeep)?;
            Ok(serde_json::from_slice(b)?)
        }
        Format::Yaml => {
            scan_yaml(b, MAX_DEPTH).map_err(|_| DecodeError::TooDeep)?;
            let v: Value = serde_yaml::from_slice(b)?;
            check_depth(&v, MAX_DEPTH).map_err(|_| DecodeError::TooDeep)?;
            Ok(v)
        }
    }
}

/// [`decode_now`], on a blocking thread for large bodies, within [`DECODE_TIMEOUT`].
pub async fn decode(b: Bytes, format: Format) -> Result<Value, DecodeError> {
    if b.len() <= INLINE_DECODE_BYTES {
        return decode_now(&b, format);
    }
    // The scans are linear and cheap; refuse at once what they refuse.
    match format {
        Format::Json => scan_json(&b, MAX_DEPTH),
        Format::Yaml => scan_yaml(&b, MAX_DEPTH),
    }
    .map_err(|_| DecodeError::TooDeep)?;
    let task = tokio::task::spawn_blocking(move || decode_now(&b, format));
    match tokio::time::timeout(DECODE_TIMEOUT, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(DecodeError::Task(e.to_string())),
        Err(_) => Err(DecodeError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(n: usize) -> Value {
        let mut v = json!(1);
        for i in 0..n {
            v = if i % 2 == 0 {
                json!([v])
            } else {
                json!({"a": v})
            };
        }
        v
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert_eq!(check_depth(&json!(1), 64), Ok(0));
        assert_eq!(check_depth(&json!({"a": [1, {"b": []}]}), 64), Ok(4));
        assert_eq!(check_depth(&nested(64), 64), Ok(64));
        assert_eq!(check_depth(&nested(65), 64), Err(LimitError::TooDeep));
    }

    #[test]
    fn json_scan_matches_the_value_depth() {
        let ok = serde_json::to_vec(&nested(64)).unwrap();
        assert!(scan_json(&ok, 64).is_ok());
        let deep = serde_json::to_vec(&nested(65)).unwrap();
        assert!(scan_json(&deep, 64).is_err());
        assert!(scan_json(br#"{"a": "[[[[[[[[[[[[\"[[[["}"#, 2).is_ok());
        assert!(scan_json(&vec![b'['; 1 << 20], 64).is_err());
    }

    #[test]
    fn yaml_scan_bounds_block_and_flow_nesting() {
        assert!(scan_yaml(&vec![b'['; 1 << 20], 64).is_err());
        assert!(scan_yaml("- ".repeat(100).as_bytes(), 64).is_err());
        assert!(scan_yaml("a: {b: ".repeat(100).as_bytes(), 64).is_err());
        let mut block = String::new();
        for d in 0..100 {
            block.push_str(&format!("{}k{d}:\n", " ".repeat(d)));
        }
        assert!(scan_yaml(block.as_bytes(), 64).is_err());
        // Brackets inside scalars, quotes and comments are text.
        let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x # [[[[\ndata:\n  a: \"[[[[[\"\n  b: '[[[{{{'\n  c: echo [[[[ -f x\n  d: |\n    [[[[[[[[[[[[[[[[[\n    {{{{{{{{{{{{{{\n  e: it's [[[[\n  f: [1, [2, {x: 3}]]\n";
        assert!(scan_yaml(doc.as_bytes(), 5).is_ok());
        assert!(scan_yaml(doc.as_bytes(), 4).is_err());
        let without_f = doc.replace("  f: [1, [2, {x: 3}]]\n", "");
        assert!(scan_yaml(without_f.as_bytes(), 2).is_ok());
        let v: Value = serde_yaml::from_str(doc).unwrap();
        assert_eq!(v["data"]["f"], json!([1, [2, {"x": 3}]]));
        // Indentless sequences of mappings: two levels per line.
        let mut chain = String::from("k:\n");
        for d in 0..40 {
            chain.push_str(&format!("{}- k{d}:\n", "  ".repeat(d)));
        }
        let v: Value = serde_yaml::from_str(&chain).unwrap();
        assert_eq!(check_depth(&v, usize::MAX), Ok(81));
        assert!(scan_yaml(chain.as_bytes(), 80).is_err());
        assert!(scan_yaml(chain.as_bytes(), 81).is_ok());
        // What the scan must not miss: a plain scalar with a quote in flow context, an anchor
        // right before a bracket.
        let hidden = format!("[a:\"x, {}", "[".repeat(100));
        assert!(scan_yaml(hidden.as_bytes(), 64).is_err());
        let anchored = format!("a: &x{}", "[".repeat(100));
        assert!(scan_yaml(anchored.as_bytes(), 64).is_err());
        assert!(scan_yaml(br#"{"a":"[[[[[[[[","b":['x', "y"]}"#, 2).is_ok());
        // JSON is YAML.
        let deep = serde_json::to_vec(&nested(65)).unwrap();
        assert!(scan_yaml(&deep, 64).is_err());
        let ok = serde_json::to_vec(&nested(64)).unwrap();
        assert!(scan_yaml(&ok, 64).is_ok());
    }

    /// No false alarm on real manifests: every YAML example in the repository decodes, and
    /// the scan's estimate is never below the true depth.
    #[test]
    fn every_yaml_example_in_the_repository_decodes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut dirs = vec![root.join("crates/api/tests/compat"), root.join("examples")];
        let mut seen = 0;
        while let Some(d) = dirs.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                if !p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    continue;
                }
                let text = std::fs::read(&p).unwrap();
                for doc in String::from_utf8_lossy(&text).split("\n---") {
                    let Ok(v) = serde_yaml::from_str::<Value>(doc) else {
                        continue;
                    };
                    seen += 1;
                    let depth = check_depth(&v, usize::MAX).unwrap();
                    assert!(
                        decode_now(doc.as_bytes(), Format::Yaml).is_ok(),
                        "{}",
                        p.display()
                    );
                    assert!(
                        scan_yaml(doc.as_bytes(), depth.saturating_sub(1)).is_err() || depth == 0,
                        "the scan underestimates {} (depth {depth})",
                        p.display()
                    );
                }
            }
        }
        assert!(seen > 20, "{seen} documents");
    }

    #[test]
    fn decoding_refuses_deep_bodies_and_keeps_normal_ones() {
        let e = decode_now(&vec![b'['; 1 << 20], Format::Yaml).unwrap_err();
        assert!(matches!(e, DecodeError::TooDeep), "{e}");
        let e = decode_now(&vec![b'['; 1 << 20], Format::Json).unwrap_err();
        assert!(matches!(e, DecodeError::TooDeep), "{e}");
        let v = decode_now(b"a:\n  b:\n  - 1\n  - [2]\n", Format::Yaml).unwrap();
        assert_eq!(v, json!({"a": {"b": [1, [2]]}}));
    }
}
