//! The server's own controllers: ownerReference garbage collection (background, foreground,
//! orphan), namespace deletion and the cleanup of a deleted CRD's objects. Level-based: each pass looks at the whole store.

use crate::objects::{ApiServer, Query};
use crate::registry::Admission;
use crate::store::{Change, Key, Precondition, Stored};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Gives memory freed by bursts of requests back to the system when the process allocates
/// with glibc's malloc, which keeps freed heap pages in its arenas (the server binaries use
/// mimalloc, which returns them itself: `kubevirt_runtime::alloc`; this is then a walk of an
/// almost empty heap).
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
    let crd_prefix = Key::prefix(crate::crd::GROUP, crate::crd::PLURAL, None);
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
        if has(crate::crd::CLEANUP_FINALIZER) && o.key.as_str().starts_with(&crd_prefix) {
            finalize_crd(api, o, &all).await?;
        }
    }
    Ok(())
}

/// apiextensions' CRD finalizer: a deleted CRD deletes its objects (each one honouring its
/// own finalizers, so one with a finalizer keeps the CRD Terminating until a client removes
/// it), and loses its cleanup finalizer once none is left; only then does it go, and with
/// it its REST paths, discovery and OpenAPI.
async fn finalize_crd(api: &ApiServer, crd: &Stored, all: &[Arc<Stored>]) -> Result<(), String> {
    use crate::crd::Termination;
    let mut v = crd.value();
    let group = v["spec"]["group"].as_str().unwrap_or("").to_string();
    let plural = v["spec"]["names"]["plural"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let reg = api.registry();
    let def = reg.find_any_version(&group, &plural);
    let outcome = if def.is_some_and(|d| matches!(d.admission, Admission::Builtin(_))) {
        Termination::OverlappingBuiltIn
    } else if !crate::crd::established(&v) {
        Termination::NeverEstablished
    } else {
        let prefix = Key::prefix(&group, &plural, None);
        let objects: Vec<&Arc<Stored>> = all
            .iter()
            .filter(|o| o.key.as_str().starts_with(&prefix))
            .collect();
        if objects.is_empty() {
            Termination::Completed
        } else {
            if crate::crd::set_terminating(&mut v, Termination::InProgress) {
                write_crd(api, crd, v).await;
            }
            for o in objects {
                if o.deleting {
                    continue;
                }
                if def.is_some() {
                    delete(api, o, "Background").await?;
                } else {
                    // Not served (its schema no longer compiles): nobody can remove its
                    // finalizers through the API, so the object goes as it is.
                    if let Err(e) = api
                        .store
                        .write(o.key.clone(), Change::Delete, Precondition::Revision(o.rv))
                        .await
                    {
                        tracing::debug!(key = ?o.key, error = %e, "deleting an object of an unserved CRD raced");
                    }
                }
            }
            return Ok(());
        }
    };
    crate::crd::set_terminating(&mut v, outcome);
    remove_finalizer(&mut v, crate::crd::CLEANUP_FINALIZER);
    tracing::info!(crd = %crd.key.name(), reason = outcome.condition().1, "CRD cleanup finished");
    write_crd(api, crd, v).await;
    Ok(())
}

/// Writes a CRD's status or finalizers as its controller (not through admission: a stored CRD
/// that a newer server would refuse must still be deletable). The last finalizer gone
/// completes a deletion, as for every object; then the served resources follow the store.
/// A write that lost a race is left to the next pass.
async fn write_crd(api: &ApiServer, crd: &Stored, v: Value) {
    let done = v["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty);
    let put = api
        .store
        .write(
            crd.key.clone(),
            Change::Put(v),
            Precondition::Revision(crd.rv),
        )
        .await;
    match put {
        Ok(stored) if done => {
            if let Err(e) = api
                .store
                .write(
                    crd.key.clone(),
                    Change::Delete,
                    Precondition::Revision(stored.rv),
                )
                .await
            {
                tracing::debug!(crd = %crd.key.name(), error = %e, "CRD removal raced");
            }
            api.refresh_crds().await;
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(crd = %crd.key.name(), error = %e, "CRD status write raced"),
    }
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
                Change::Delete,
                Precondition::Revision(ns.rv),
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
