//! The object store: every object as JSON in a redb file, mirrored in memory, with one global
//! revision counter (the `resourceVersion`) and a window of recent events for watches.
//!
//! Writes go through one writer thread that batches whatever is queued into a single redb
//! transaction (group commit): a write is acknowledged only after its transaction is durable,
//! so an acknowledged write survives `kill -9`, while many concurrent writers still share one
//! fsync. Readers never see an uncommitted write: the in-memory state is updated after commit.

use bytes::Bytes;
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{broadcast, oneshot};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Objects that did not parse when the store was loaded, kept aside under their key.
pub const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

/// How many past events a watch can resume from (by default; see [`WindowLimits`]).
pub const EVENT_WINDOW: usize = 100_000;

/// How much history the watch event window keeps: at most `events` events and at most
/// `bytes` bytes of their objects' JSON (and keys); the oldest go first.
#[derive(Clone, Copy, Debug)]
pub struct WindowLimits {
    pub events: usize,
    pub bytes: usize,
}

impl Default for WindowLimits {
    fn default() -> Self {
        WindowLimits {
            events: EVENT_WINDOW,
            bytes: 64 * 1024 * 1024,
        }
    }
}

/// What a data directory's store file holds, before it is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFile {
    Missing,
    /// 0 bytes, or a database without our tables.
    Empty,
    Present,
}

/// Where an object lives: `<group>/<resource>/<namespace>/<name>` (namespace empty for
/// cluster-scoped objects). The string form orders objects so that one resource, or one
/// namespace of it, is a contiguous range.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    pub fn new(group: &str, resource: &str, namespace: &str, name: &str) -> Key {
        Key(format!("{group}/{resource}/{namespace}/{name}"))
    }

    /// The prefix of every key of one resource, optionally in one namespace.
    pub fn prefix(group: &str, resource: &str, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{group}/{resource}/{ns}/"),
            None => format!("{group}/{resource}/"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parts(&self) -> (&str, &str) {
        // namespace, name
        let mut it = self.0.splitn(4, '/');
        let _group = it.next();
        let _resource = it.next();
        (it.next().unwrap_or(""), it.next().unwrap_or(""))
    }

    pub fn namespace(&self) -> &str {
        self.parts().0
    }

    pub fn name(&self) -> &str {
        self.parts().1
    }
}

/// redb's page cache. Every read is served from the in-memory mirror, so redb's cache only
/// holds the b-tree pages a commit touches (and, at open, the pages the load reads): with
/// redb's default of 1 GiB it kept a second copy of the whole database for the process's
/// life (tens of MiB with 10,000 VMIs). Pages it does not hold are read back through the
/// kernel's page cache, which does not count against the server's RSS.
pub const REDB_CACHE_BYTES: usize = 8 << 20;

/// One stored object: its JSON (with `metadata.resourceVersion` filled in) and the metadata the
/// server filters and garbage-collects on, parsed once at write time.
#[derive(Debug)]
pub struct Stored {
    pub key: Key,
    pub rv: u64,
    pub json: Bytes,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// `metadata.ownerReferences[*].uid`.
    pub owners: Vec<String>,
    /// Whether `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.finalizers`.
    pub finalizers: Vec<String>,
}

impl Stored {
    /// An object as loaded from the database: its JSON must parse, as an object within the
    /// depth limit serde_json reads back.
    fn load(key: Key, json: Bytes, store_rv: u64) -> Result<Stored, StoreError> {
        let v: Value =
            serde_json::from_slice(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !v.is_object() {
            return Err(StoreError::Corrupt("not a JSON object".into()));
        }
        let rv = v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(store_rv);
        Ok(Self::with_meta(key, rv, json, &v))
    }

    fn with_meta(key: Key, rv: u64, json: Bytes, v: &Value) -> Stored {
        let meta = &v["metadata"];
        let labels = meta["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let owners = meta["ownerReferences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|o| o["uid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let finalizers = meta["finalizers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Stored {
            key,
            rv,
            json,
            uid: meta["uid"].as_str().unwrap_or_default().to_string(),
            labels,
            owners,
            deleting: meta["deletionTimestamp"].is_string(),
            finalizers,
        }
    }

    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A committed change, as watches see it.
#[derive(Debug)]
pub struct Event {
    pub kind: EventType,
    /// The object after the change; for a deletion, its last state at the deletion's revision.
    pub object: Arc<Stored>,
    /// Labels before the change, so a watch with a label selector can turn an object
    /// entering or leaving the selection into ADDED/DELETED.
    pub prev_labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    #[error("the object has been modified; please apply your changes to the latest version and try again")]
    Conflict,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("stored object is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(#[from] crate::limits::LimitError),
    #[error("the store is shutting down")]
    Closed,
}

/// What must hold for a write to go ahead.
#[derive(Clone, Copy, Debug)]
pub enum Precondition {
    /// Create: the key must be free.
    Absent,
    /// Update/delete of exactly this revision (optimistic concurrency).
    Revision(u64),
    /// Update/delete of whatever is there, which must exist.
    Exists,
}

pub enum Change {
    /// Store this object (its `metadata.resourceVersion` is set by the store).
    Put(Value),
    Delete,
}

struct WriteOp {
    key: Key,
    change: Change,
    pre: Precondition,
    reply: oneshot::Sender<Result<Arc<Stored>, StoreError>>,
}

struct State {
    objects: BTreeMap<Key, Arc<Stored>>,
    /// Last committed revision.
    rv: u64,
    events: VecDeque<Arc<Event>>,
    /// Bytes of the events in `events`, as [`event_bytes`] counts them.
    events_bytes: usize,
    /// Every event with a revision above this one is in `events`.
    window_start: u64,
    window: WindowLimits,
}

/// What one event costs the window: its object's JSON and key.
fn event_bytes(e: &Event) -> usize {
    e.object.json.len() + e.object.key.0.len()
}

pub struct Store {
    state: RwLock<State>,
    writer: std::sync::mpsc::Sender<WriteOp>,
    events: broadcast::Sender<Arc<Event>>,
}

/// A consistent view for a watch: what happened after the requested revision (or the current
/// objects), plus a receiver for everything after that.
pub struct WatchStart {
    pub initial: Vec<Arc<Event>>,
    pub rx: broadcast::Receiver<Arc<Event>>,
    pub rv: u64,
}

impl Store {
    /// Whether `path` holds a store with data, without creating or changing it.
    pub fn probe(path: &Path) -> Result<StoreFile, StoreError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoreFile::Missing),
            Err(e) => return Err(storage(e)),
            Ok(m) if m.len() == 0 => return Ok(StoreFile::Empty),
            Ok(_) => {}
        }
        let db = Database::open(path).map_err(storage)?;
        let read = db.begin_read().map_err(storage)?;
        let mut tables = read.list_tables().map_err(storage)?;
        Ok(if tables.any(|t| t.name() == "objects") {
            StoreFile::Present
        } else {
            StoreFile::Empty
        })
    }

    /// Opens (or creates) the store in `path`, loading every object into memory, with the
    /// default watch window.
    pub fn open(path: &Path) -> Result<Arc<Store>, StoreError> {
        Self::open_with(path, WindowLimits::default())
    }

    /// Opens (or creates) the store in `path`, loading every object into memory. An object
    /// that does not parse is moved to the `quarantine` table (and logged as an error) instead
    /// of failing the start.
    pub fn open_with(path: &Path, window: WindowLimits) -> Result<Arc<Store>, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let mut objects = BTreeMap::new();
        let mut rv = 0;
        let mut bad: Vec<(String, Vec<u8>)> = Vec::new();
        {
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(OBJECTS).map_err(storage)?;
            txn.open_table(META).map_err(storage)?;
            txn.commit().map_err(storage)?;
            let read = db.begin_read().map_err(storage)?;
            let meta = read.open_table(META).map_err(storage)?;
            if let Some(v) = meta.get("rv").map_err(storage)? {
                rv = v.value();
            }
            let table = read.open_table(OBJECTS).map_err(storage)?;
            for row in table.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let key = Key(k.value().to_string());
                let json = Bytes::copy_from_slice(v.value());
                match Stored::load(key.clone(), json, rv) {
                    Ok(s) => {
                        objects.insert(key, Arc::new(s));
                    }
                    Err(e) => {
                        tracing::error!(
                            key = key.as_str(),
                            error = %e,
                            "stored object does not parse: moving it to the quarantine table"
                        );
                        bad.push((key.0, v.value().to_vec()));
                    }
                }
            }
        }
        if !bad.is_empty() {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut q = txn.open_table(QUARANTINE).map_err(storage)?;
                let mut o = txn.open_table(OBJECTS).map_err(storage)?;
                for (k, v) in &bad {
                    q.insert(k.as_str(), v.as_slice()).map_err(storage)?;
                    o.remove(k.as_str()).map_err(storage)?;
                }
            }
            txn.commit().map_err(storage)?;
            tracing::error!(
                count = bad.len(),
                keys = ?bad.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                "quarantined stored objects that do not parse; the server starts without them"
            );
        }
        let (events, _) = broadcast::channel(65_536);
        let (tx, rx) = std::sync::mpsc::channel();
        let store = Arc::new(Store {
            state: RwLock::new(State {
                objects,
                rv,
                events: VecDeque::new(),
                events_bytes: 0,
                window_start: rv,
                window,
            }),
            writer: tx,
            events,
        });
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(db, rx, weak))
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        Ok(store)
    }

    /// The watch event window now: its events, their bytes, and the revision it starts after.
    pub fn window_usage(&self) -> (usize, usize, u64) {
        let st = self.state.read();
        (st.events.len(), st.events_bytes, st.window_start)
    }

    pub fn revision(&self) -> u64 {
        self.state.read().rv
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Stored>> {
        self.state.read().objects.get(key).cloned()
    }

    /// Objects whose key starts with `prefix`, in key order, and the revision of the snapshot.
    pub fn list(&self, prefix: &str) -> (Vec<Arc<Stored>>, u64) {
        let st = self.state.read();
        let items = st
            .objects
            .range(Key(prefix.to_string())..)
            .take_while(|(k, _)| k.0.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.rv)
    }

    /// Every object (for garbage collection).
    pub fn all(&self) -> Vec<Arc<Stored>> {
        self.state.read().objects.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.state.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn write(
        &self,
        key: Key,
        change: Change,
        pre: Precondition,
    ) -> Result<Arc<Stored>, StoreError> {
        if let Change::Put(v) = &change {
            crate::limits::check_object(v)?;
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteOp {
                key,
                change,
                pre,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Subscribe to events of keys starting with `prefix`. `since`: `None` starts with a
    /// synthetic ADDED for every current object; `Some(rv)` replays what came after `rv`
    /// (`Err` when `rv` is older than the event window: the client must list again).
    pub fn watch(&self, prefix: &str, since: Option<u64>) -> Result<WatchStart, u64> {
        let st = self.state.read();
        let rx = self.events.subscribe();
        let initial = match since {
            None => st
                .objects
                .range(Key(prefix.to_string())..)
                .take_while(|(k, _)| k.0.starts_with(prefix))
                .map(|(_, o)| {
                    Arc::new(Event {
                        kind: EventType::Added,
                        object: o.clone(),
                        prev_labels: None,
                    })
                })
                .collect(),
            Some(rv) if rv < st.window_start => return Err(st.window_start),
            Some(rv) => st
                .events
                .iter()
                .filter(|e| e.object.rv > rv && e.object.key.0.starts_with(prefix))
                .cloned()
                .collect(),
        };
        Ok(WatchStart {
            initial,
            rx,
            rv: st.rv,
        })
    }
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Sets `metadata.resourceVersion` and serialises.
fn encode(mut v: Value, rv: u64) -> (Bytes, Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    let json = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
    (json, v)
}

fn writer_loop(
    db: Database,
    rx: std::sync::mpsc::Receiver<WriteOp>,
    store: std::sync::Weak<Store>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let Some(store) = store.upgrade() else { return };
        commit_batch(&db, &store, batch);
    }
}

fn commit_batch(db: &Database, store: &Store, batch: Vec<WriteOp>) {
    struct Staged {
        reply: oneshot::Sender<Result<Arc<Stored>, StoreError>>,
        event: Option<Event>,
    }
    let mut staged: Vec<Staged> = Vec::with_capacity(batch.len());
    // What this batch has written so far, on top of the committed state.
    let mut overlay: HashMap<Key, Option<Arc<Stored>>> = HashMap::new();
    let rv = {
        let st = store.state.read();
        let mut rv = st.rv;
        for op in batch {
            let current = match overlay.get(&op.key) {
                Some(o) => o.clone(),
                None => st.objects.get(&op.key).cloned(),
            };
            let check = match (op.pre, &current) {
                (Precondition::Absent, Some(_)) => Err(StoreError::AlreadyExists),
                (Precondition::Absent, None) => Ok(()),
                (_, None) => Err(StoreError::NotFound),
                (Precondition::Revision(want), Some(cur)) if cur.rv != want => {
                    Err(StoreError::Conflict)
                }
                _ => Ok(()),
            };
            if let Err(e) = check {
                let _ = op.reply.send(Err(e));
                continue;
            }
            rv += 1;
            let event = match op.change {
                Change::Put(v) => {
                    let (json, v) = encode(v, rv);
                    if json.len() > crate::limits::MAX_OBJECT_BYTES {
                        rv -= 1;
                        let _ = op.reply.send(Err(StoreError::Invalid(
                            crate::limits::LimitError::TooLarge(json.len()),
                        )));
                        continue;
                    }
                    let obj = Arc::new(Stored::with_meta(op.key.clone(), rv, json, &v));
                    overlay.insert(op.key, Some(obj.clone()));
                    Event {
                        kind: if current.is_some() {
                            EventType::Modified
                        } else {
                            EventType::Added
                        },
                        prev_labels: current.map(|c| c.labels.clone()),
                        object: obj,
                    }
                }
                Change::Delete => {
                    let cur = current.expect("checked above");
                    let (json, v) = encode(cur.value(), rv);
                    let obj = Arc::new(Stored::with_meta(op.key.clone(), rv, json, &v));
                    overlay.insert(op.key, None);
                    Event {
                        kind: EventType::Deleted,
                        prev_labels: Some(cur.labels.clone()),
                        object: obj,
                    }
                }
            };
            staged.push(Staged {
                reply: op.reply,
                event: Some(event),
            });
        }
        rv
    };
    if staged.is_empty() {
        return;
    }
    let t_commit = std::time::Instant::now();
    let persisted = (|| -> Result<(), StoreError> {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(OBJECTS).map_err(storage)?;
            for s in &staged {
                let Some(e) = &s.event else { continue };
                match e.kind {
                    EventType::Deleted => {
                        table.remove(e.object.key.as_str()).map_err(storage)?;
                    }
                    _ => {
                        table
                            .insert(e.object.key.as_str(), e.object.json.as_ref())
                            .map_err(storage)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert("rv", rv).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    })();
    let commit_time = t_commit.elapsed();
    crate::metrics::observe_commit(commit_time);
    if let Err(e) = persisted {
        tracing::error!(error = %e, "store commit failed");
        for s in staged {
            let _ = s.reply.send(Err(StoreError::Storage(e.to_string())));
        }
        return;
    }
    let mut st = store.state.write();
    for s in &mut staged {
        let Some(e) = s.event.take() else { continue };
        let e = Arc::new(e);
        match e.kind {
            EventType::Deleted => {
                st.objects.remove(&e.object.key);
            }
            _ => {
                st.objects.insert(e.object.key.clone(), e.object.clone());
            }
        }
        st.events_bytes += event_bytes(&e);
        st.events.push_back(e.clone());
        while st.events.len() > st.window.events || st.events_bytes > st.window.bytes {
            let Some(old) = st.events.pop_front() else {
                break;
            };
            st.events_bytes -= event_bytes(&old);
            st.window_start = old.object.rv;
        }
        let _ = store.events.send(e.clone());
        let reply = std::mem::replace(&mut s.reply, oneshot::channel().0);
        let _ = reply.send(Ok(e.object.clone()));
    }
    st.rv = rv;
    drop(st);
    tracing::debug!(
        rv,
        writes = staged.len(),
        commit_us = commit_time.as_micros() as u64,
        total_us = t_commit.elapsed().as_micros() as u64,
        "committed batch"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "labels": {"a": "b"}}})
    }

    #[tokio::test]
    async fn writes_are_ordered_by_revision_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let s = Store::open(&path).unwrap();
            let k = Key::new("", "configmaps", "default", "a");
            let a = s
                .write(k.clone(), Change::Put(obj("a")), Precondition::Absent)
                .await
                .unwrap();
            assert_eq!(a.rv, 1);
            let err = s
                .write(k.clone(), Change::Put(obj("a")), Precondition::Absent)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::AlreadyExists));
            let err = s
                .write(k.clone(), Change::Put(obj("a")), Precondition::Revision(7))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Conflict));
            let b = s
                .write(k.clone(), Change::Put(obj("a")), Precondition::Revision(1))
                .await
                .unwrap();
            assert_eq!(b.rv, 2);
            assert_eq!(b.value()["metadata"]["resourceVersion"], "2");
            s.write(
                Key::new("", "configmaps", "default", "b"),
                Change::Put(obj("b")),
                Precondition::Absent,
            )
            .await
            .unwrap();
        }
        // The writer thread holds the database until the store is dropped.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let s = Store::open(&path).unwrap();
        assert_eq!(s.revision(), 3);
        let (items, rv) = s.list(&Key::prefix("", "configmaps", Some("default")));
        assert_eq!((items.len(), rv), (2, 3));
        assert_eq!(items[0].labels.get("a").map(String::as_str), Some("b"));
        let c = s
            .write(
                Key::new("", "configmaps", "default", "c"),
                Change::Put(obj("c")),
                Precondition::Absent,
            )
            .await
            .unwrap();
        assert_eq!(c.rv, 4, "revisions keep increasing after a restart");
    }

    #[test]
    fn garbage_collection_metadata_is_parsed_at_write_time() {
        let v = json!({"metadata": {"name": "a", "uid": "u1",
            "deletionTimestamp": "2026-01-01T00:00:00Z",
            "finalizers": ["orphan", "example.com/x"],
            "ownerReferences": [{"uid": "u0"}]}});
        let s = Stored::with_meta(
            Key::new("", "configmaps", "default", "a"),
            1,
            Bytes::new(),
            &v,
        );
        assert!(s.deleting);
        assert_eq!(s.finalizers, ["orphan", "example.com/x"]);
        assert_eq!(s.owners, ["u0"]);
        let s = Stored::with_meta(
            Key::new("", "configmaps", "default", "b"),
            1,
            Bytes::new(),
            &obj("b"),
        );
        assert!(!s.deleting && s.finalizers.is_empty());
    }

    #[tokio::test]
    async fn watch_replays_after_a_revision_and_reports_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db.redb")).unwrap();
        let p = Key::prefix("", "configmaps", None);
        for n in ["a", "b", "c"] {
            s.write(
                Key::new("", "configmaps", "default", n),
                Change::Put(obj(n)),
                Precondition::Absent,
            )
            .await
            .unwrap();
        }
        let w = s.watch(&p, Some(1)).unwrap();
        let names: Vec<&str> = w.initial.iter().map(|e| e.object.key.name()).collect();
        assert_eq!(names, ["b", "c"]);
        let mut rx = w.rx;
        s.write(
            Key::new("", "configmaps", "default", "a"),
            Change::Delete,
            Precondition::Exists,
        )
        .await
        .unwrap();
        let e = rx.recv().await.unwrap();
        assert_eq!((e.kind, e.object.rv), (EventType::Deleted, 4));
        let all = s.watch(&p, None).unwrap();
        assert_eq!(all.initial.len(), 2);
    }
}
