//! The server's own controllers: ownerReference garbage collection (background, foreground,
//! orphan) and namespace deletion. Level-based: each pass looks at the whole store.

use crate::objects::{ApiServer, Query};
use crate::store::Stored;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Gives memory freed by bursts of requests back to the system. glibc keeps freed heap pages
/// in its arenas; without this, the server's RSS stays at its peak (every admission decodes a
/// whole object) long after the burst.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn spawn(api: Arc<ApiServer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rx = api
            .store
            .watch("", Some(api.store.revision()))
            .map(|w| w.rx)
            .ok();
        let mut last_trim = std::time::Instant::now();
        loop {
            if last_trim.elapsed() > Duration::from_secs(10) {
                // Off the async workers: it walks every arena of a heap that may be 100+ MiB.
                tokio::task::spawn_blocking(release_free_memory);
                last_trim = std::time::Instant::now();
            }
            let t = std::time::Instant::now();
            if let Err(e) = pass(&api).await {
                tracing::warn!(error = %e, "garbage collection pass failed");
            }
            tracing::debug!(us = t.elapsed().as_micros() as u64, "gc pass");
            // Wake on the next change (or every few seconds for retries), then let a burst settle.
            match rx.as_mut() {
                Some(r) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), r.recv()).await;
                    while r.try_recv().is_ok() {}
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn def_of(api: &ApiServer, o: &Stored) -> Option<Arc<crate::registry::ResourceDef>> {
    let mut parts = o.key.as_str().splitn(3, '/');
    let group = parts.next()?;
    let plural = parts.next()?;
    api.registry()
        .resources
        .iter()
        .find(|r| r.group == group && r.plural == plural)
        .cloned()
}

async fn delete(api: &ApiServer, o: &Stored, policy: &str) -> Result<(), String> {
    let Some(def) = def_of(api, o) else {
        return Ok(());
    };
    match api
        .delete(
            &def,
            o.key.namespace(),
            o.key.name(),
            &json!({"propagationPolicy": policy}),
            &Query::default(),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

async fn patch_metadata(api: &ApiServer, o: &Stored, f: impl Fn(&mut Value)) -> Result<(), String> {
    let Some(def) = def_of(api, o) else {
        return Ok(());
    };
    let mut v = o.value();
    f(&mut v);
    match api
        .update(
            &def,
            o.key.namespace(),
            o.key.name(),
            v,
            &Query::default(),
            None,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn remove_finalizer(v: &mut Value, name: &str) {
    if let Some(a) = v["metadata"]["finalizers"].as_array_mut() {
        a.retain(|f| f != name);
    }
}

/// One pass over the store. It reads only the metadata the store parsed at write time
/// (owners, deletionTimestamp, finalizers), never an object's JSON, unless it acts on the
/// object: with 10,000 VMIs, parsing every object's JSON took 300-600 ms of CPU on the async
/// runtime after every burst of changes, and stalled the requests queued behind it.
async fn pass(api: &ApiServer) -> Result<(), String> {
    let all = api.store.all();
    if all.iter().all(|o| o.owners.is_empty() && !o.deleting) {
        return Ok(());
    }
    let uids: HashSet<&str> = all.iter().map(|o| o.uid.as_str()).collect();
    let mut dependents: HashMap<&str, Vec<&Arc<Stored>>> = HashMap::new();
    for o in &all {
        for owner in &o.owners {
            dependents.entry(owner.as_str()).or_default().push(o);
        }
    }
    for o in &all {
        // Background: a dependent whose owners are all gone goes too.
        if !o.owners.is_empty() && o.owners.iter().all(|u| !uids.contains(u.as_str())) {
            delete(api, o, "Background").await?;
            continue;
        }
        if !o.deleting {
            continue;
        }
        let has = |f: &str| o.finalizers.iter().any(|x| x == f);
        let deps = dependents.get(o.uid.as_str()).cloned().unwrap_or_default();
        if has("orphan") {
            for d in &deps {
                let owner = o.uid.clone();
                patch_metadata(api, d, |v| {
                    if let Some(refs) = v["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(owner.as_str()));
                    }
                })
                .await?;
            }
            patch_metadata(api, o, |v| remove_finalizer(v, "orphan")).await?;
        } else if has("foregroundDeletion") {
            if deps.is_empty() {
                patch_metadata(api, o, |v| remove_finalizer(v, "foregroundDeletion")).await?;
            } else {
                for d in &deps {
                    delete(api, d, "Foreground").await?;
                }
            }
        }
        if o.key.as_str().starts_with("/namespaces/") {
            terminate_namespace(api, o, &all).await?;
        }
    }
    Ok(())
}

/// A terminating namespace empties itself, then goes.
async fn terminate_namespace(
    api: &ApiServer,
    ns: &Stored,
    all: &[Arc<Stored>],
) -> Result<(), String> {
    let name = ns.key.name().to_string();
    let contents: Vec<&Arc<Stored>> = all
        .iter()
        .filter(|o| o.key.namespace() == name && !o.key.as_str().starts_with("/namespaces/"))
        .collect();
    if contents.is_empty() {
        let reg = api.registry();
        let Some(def) = reg.find("", "v1", "namespaces") else {
            return Ok(());
        };
        return match api
            .store
            .write(
                ns.key.clone(),
                crate::store::Change::Delete,
                crate::store::Precondition::Revision(ns.rv),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(namespace = %name, error = %e, resource = %def.plural, "namespace removal raced");
                Ok(())
            }
        };
    }
    for o in contents {
        if o.deleting {
            continue;
        }
        delete(api, o, "Background").await?;
    }
    Ok(())
}
