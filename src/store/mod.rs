//! Persisted metadata of pods and containers (redb), written before an RPC
//! returns so that a restarted berthd finds every pod and container again.
//!
//! Records are stored as JSON values keyed by id: the CRI configs they carry
//! are protobuf messages, kept as their encoded bytes.
//!
//! Every record is also kept decoded in memory (as containerd's CRI keeps
//! its sandbox and container stores): reads (status, List*, the scans of a
//! pod's containers) never touch the database nor decode JSON; the
//! database is read once, at open. Writes go to the database first and to
//! the memory copy once committed, in commit order.
//!
//! Writes are group-committed: a change waits for the transaction being
//! committed (one fsync) to finish and then goes, with every change that
//! arrived meanwhile, into the next one. Each caller still returns only once
//! its own change is durable, but concurrent RPCs share the fsyncs instead
//! of queueing for one each (measured: the fsync per write was what capped
//! berthd's pod start rate at concurrency, `benches/cri_concurrency.rs`).
//! The wait moves the caller's tokio worker aside (`block_in_place`), so
//! other tasks run meanwhile.

mod error;
mod records;

pub use error::StoreError;
pub use records::{ContainerRecord, ContainerState, PodRecord, PodState};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// The pod and container database.
///
/// After an I/O error (a full disk, most often) redb refuses every further
/// transaction until the database is closed and opened again; the store
/// does that on the next call, and retries that call once, so berthd
/// carries on as soon as the disk has room again. A delete that could not
/// be written is kept in memory: the record is hidden from every read at
/// once and removed by the next write that succeeds (a failed
/// RunPodSandbox leaves no listed pod behind even when its rollback cannot
/// write either).
pub struct MetadataStore {
    path: PathBuf,
    /// None while the database is closed (after an I/O error, until a
    /// reopen succeeds).
    db: RwLock<Option<Database>>,
    /// (table, id) of deletes still to be written.
    unwritten_deletes: Mutex<HashSet<(String, String)>>,
    /// The records as committed (and without the deletes still to be
    /// written), by id.
    cache: RwLock<Cache>,
    /// The changes waiting for the next transaction (group commit).
    group: Mutex<Group>,
    /// Signalled when a transaction of the group commit is done.
    group_done: Condvar,
}

/// Table definitions as the changes carry them.
type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// One record change: a put (its JSON) or a delete, and the record the
/// memory copy gets once it is written.
struct Change {
    table: Table,
    id: String,
    /// The record's JSON; None: delete it.
    bytes: Option<Vec<u8>>,
    record: Cached,
}

enum Cached {
    Pod(Arc<PodRecord>),
    Container(Arc<ContainerRecord>),
    Gone,
}

/// The group commit's state: changes by ticket, whether a caller is
/// committing a transaction now, and the results of the changes written.
#[derive(Default)]
struct Group {
    next_ticket: u64,
    queue: Vec<(u64, Change)>,
    committing: bool,
    results: HashMap<u64, Result<(), StoreError>>,
}

/// The decoded records.
#[derive(Default)]
struct Cache {
    pods: BTreeMap<String, Arc<PodRecord>>,
    containers: BTreeMap<String, Arc<ContainerRecord>>,
}

impl std::fmt::Debug for MetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::create(path).map_err(db_err)?;
    let tx = db.begin_write().map_err(db_err)?;
    tx.open_table(PODS).map_err(db_err)?;
    tx.open_table(CONTAINERS).map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(db)
}

impl MetadataStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                context: format!("create {}", dir.display()),
                source: e,
            })?;
        }
        let db = open_db(path)?;
        let cache = Cache {
            pods: read_all(&db, PODS)?,
            containers: read_all(&db, CONTAINERS)?,
        };
        Ok(Self {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
            unwritten_deletes: Mutex::new(HashSet::new()),
            cache: RwLock::new(cache),
            group: Mutex::new(Group::default()),
            group_done: Condvar::new(),
        })
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `change` in the next transaction of the group commit; returns
    /// once that transaction is committed (or the change failed).
    fn submit(&self, change: Change) -> Result<(), StoreError> {
        blocking(|| {
            let mut g = self.group.lock().unwrap_or_else(|p| p.into_inner());
            let ticket = g.next_ticket;
            g.next_ticket += 1;
            g.queue.push((ticket, change));
            loop {
                if let Some(res) = g.results.remove(&ticket) {
                    return res;
                }
                if g.committing {
                    g = self.group_done.wait(g).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                // Nobody is committing: this caller commits what is queued
                // (its own change with the others that arrived meanwhile).
                g.committing = true;
                let batch = std::mem::take(&mut g.queue);
                drop(g);
                let mut done = BatchDone {
                    store: self,
                    tickets: batch.iter().map(|(t, _)| *t).collect(),
                    results: Vec::new(),
                };
                done.results = self.commit_batch(batch);
                drop(done);
                g = self.group.lock().unwrap_or_else(|p| p.into_inner());
            }
        })
    }

    /// One transaction with every change of `batch`; when it fails, each
    /// change is tried alone (so each gets its own error, and a delete that
    /// cannot be written is hidden as [`MetadataStore::delete`] says).
    fn commit_batch(&self, batch: Vec<(u64, Change)>) -> Vec<(u64, Result<(), StoreError>)> {
        if batch.len() > 1 {
            let res = self.write(|tx| {
                for (_, c) in &batch {
                    let mut t = tx.open_table(c.table).map_err(db_err)?;
                    match &c.bytes {
                        Some(b) => {
                            t.insert(c.id.as_str(), b.as_slice()).map_err(db_err)?;
                        }
                        None => {
                            t.remove(c.id.as_str()).map_err(db_err)?;
                        }
                    }
                }
                Ok(())
            });
            if res.is_ok() {
                return batch
                    .into_iter()
                    .map(|(ticket, c)| {
                        self.written(c);
                        (ticket, Ok(()))
                    })
                    .collect();
            }
        }
        batch
            .into_iter()
            .map(|(ticket, c)| (ticket, self.apply_one(c)))
            .collect()
    }

    /// Writes one change in its own transaction.
    fn apply_one(&self, c: Change) -> Result<(), StoreError> {
        let res = match &c.bytes {
            Some(b) => self.put(c.table, &c.id, b),
            None => self.delete(c.table, &c.id),
        };
        match &res {
            Ok(()) => self.written(c),
            // A delete that is hidden until it can be written.
            Err(_) if c.bytes.is_none() && self.delete_pending(c.table, &c.id) => self.written(c),
            Err(_) => {}
        }
        res
    }

    /// The memory copy after `c` was written.
    fn written(&self, c: Change) {
        if c.bytes.is_some() {
            self.unwritten_deletes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(c.table.name().to_owned(), c.id.clone()));
        }
        let mut cache = self.cache_mut();
        match c.record {
            Cached::Pod(p) => {
                cache.pods.insert(c.id, p);
            }
            Cached::Container(r) => {
                cache.containers.insert(c.id, r);
            }
            Cached::Gone if c.table.name() == PODS.name() => {
                cache.pods.remove(&c.id);
            }
            Cached::Gone => {
                cache.containers.remove(&c.id);
            }
        }
    }

    fn change<T: Serialize>(
        table: Table,
        id: &str,
        value: &T,
        record: Cached,
    ) -> Result<Change, StoreError> {
        Ok(Change {
            table,
            id: id.to_owned(),
            bytes: Some(serde_json::to_vec(value).map_err(|e| StoreError::Encode(e.to_string()))?),
            record,
        })
    }

    /// Runs `op` on the database; after an I/O error closes and reopens it
    /// and runs `op` once more.
    fn with_db<R>(&self, op: impl Fn(&Database) -> Result<R, StoreError>) -> Result<R, StoreError> {
        {
            let db = self.db.read().unwrap_or_else(|p| p.into_inner());
            if let Some(db) = db.as_ref() {
                match op(db) {
                    Err(e) if e.needs_reopen() => {
                        tracing::warn!(db = %self.path.display(), error = %e, "metadata database I/O error: reopening it");
                    }
                    other => return other,
                }
            }
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        // Closed first: redb locks the file, a second handle cannot open it.
        drop(slot.take());
        let db = open_db(&self.path)?;
        tracing::info!(db = %self.path.display(), "metadata database reopened");
        let out = op(&db);
        *slot = Some(db);
        out
    }

    /// One write transaction: the deletes still unwritten, then `change`.
    fn write(
        &self,
        change: impl Fn(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let pending: Vec<(String, String)> = self
            .unwritten_deletes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        self.with_db(|db| {
            let tx = db.begin_write().map_err(db_err)?;
            for (table, id) in &pending {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
                let mut t = tx.open_table(def).map_err(db_err)?;
                t.remove(id.as_str()).map_err(db_err)?;
            }
            change(&tx)?;
            tx.commit().map_err(db_err)
        })?;
        if !pending.is_empty() {
            let mut left = self
                .unwritten_deletes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for p in &pending {
                left.remove(p);
            }
            tracing::info!(
                records = pending.len(),
                "deletes that had failed are written"
            );
        }
        Ok(())
    }

    fn put(&self, table: Table, id: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(table).map_err(db_err)?;
            t.insert(id, bytes).map_err(db_err)?;
            Ok(())
        })
    }

    /// Removes a record. When that cannot be written (the disk is full),
    /// the record is gone for every read at once, the error is returned,
    /// and the delete is written with the next write that succeeds.
    fn delete(&self, table: TableDefinition<&str, &[u8]>, id: &str) -> Result<(), StoreError> {
        let res = self.write(|tx| {
            let mut t = tx.open_table(table).map_err(db_err)?;
            t.remove(id).map_err(db_err)?;
            Ok(())
        });
        if let Err(e) = &res
            && e.needs_reopen()
        {
            tracing::warn!(table = table.name(), id, error = %e, "delete not written yet: the record is hidden until it is");
            self.unwritten_deletes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((table.name().to_owned(), id.to_owned()));
        }
        res
    }

    /// Stores (or replaces) a pod record.
    pub fn put_pod(&self, pod: &PodRecord) -> Result<(), StoreError> {
        let record = Cached::Pod(Arc::new(pod.clone()));
        self.submit(Self::change(PODS, &pod.id, pod, record)?)
    }
    /// The pod with exactly this id.
    pub fn pod(&self, id: &str) -> Result<Option<PodRecord>, StoreError> {
        Ok(self.cache().pods.get(id).map(|p| (**p).clone()))
    }
    /// Forgets a pod (no error when it is not there).
    pub fn delete_pod(&self, id: &str) -> Result<(), StoreError> {
        self.submit(Change {
            table: PODS,
            id: id.to_owned(),
            bytes: None,
            record: Cached::Gone,
        })
    }
    /// Every pod, by id.
    pub fn pods(&self) -> Result<Vec<PodRecord>, StoreError> {
        Ok(self.cache().pods.values().map(|p| (**p).clone()).collect())
    }
    /// Every pod, by id, shared with the store (no copy of the records).
    pub fn pods_shared(&self) -> Vec<Arc<PodRecord>> {
        self.cache().pods.values().cloned().collect()
    }
    /// Stores (or replaces) a container record.
    pub fn put_container(&self, c: &ContainerRecord) -> Result<(), StoreError> {
        let record = Cached::Container(Arc::new(c.clone()));
        self.submit(Self::change(CONTAINERS, &c.id, c, record)?)
    }
    /// The container with exactly this id.
    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>, StoreError> {
        Ok(self.cache().containers.get(id).map(|c| (**c).clone()))
    }
    /// Forgets a container (no error when it is not there).
    pub fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        self.submit(Change {
            table: CONTAINERS,
            id: id.to_owned(),
            bytes: None,
            record: Cached::Gone,
        })
    }
    /// Every container, by id.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        Ok(self
            .cache()
            .containers
            .values()
            .map(|c| (**c).clone())
            .collect())
    }
    /// Every container, by id, shared with the store (no copy of the records).
    pub fn containers_shared(&self) -> Vec<Arc<ContainerRecord>> {
        self.cache().containers.values().cloned().collect()
    }
    /// The containers of pod `pod_id`, by id.
    pub fn containers_of(&self, pod_id: &str) -> Result<Vec<ContainerRecord>, StoreError> {
        Ok(self
            .cache()
            .containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .map(|c| (**c).clone())
            .collect())
    }

    /// Whether a delete of `id` failed to be written and waits for the next
    /// write (the record is hidden meanwhile).
    fn delete_pending(&self, table: TableDefinition<&str, &[u8]>, id: &str) -> bool {
        self.unwritten_deletes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(table.name().to_owned(), id.to_owned()))
    }
}

/// Hands the results of a committed batch to its callers and lets the next
/// committer go, also when the commit panicked (its changes then fail).
struct BatchDone<'a> {
    store: &'a MetadataStore,
    tickets: Vec<u64>,
    results: Vec<(u64, Result<(), StoreError>)>,
}

impl Drop for BatchDone<'_> {
    fn drop(&mut self) {
        let mut g = self.store.group.lock().unwrap_or_else(|p| p.into_inner());
        g.committing = false;
        let results = std::mem::take(&mut self.results);
        if results.len() == self.tickets.len() {
            g.results.extend(results);
        } else {
            for t in &self.tickets {
                g.results
                    .insert(*t, Err(StoreError::Db("the commit panicked".into())));
            }
        }
        self.store.group_done.notify_all();
    }
}

/// Runs `f`, which may wait for a commit, without holding up the other
/// tasks of a multi-threaded tokio runtime (their worker moves to another
/// thread meanwhile).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Every record of `table`, decoded.
fn read_all<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
) -> Result<BTreeMap<String, Arc<T>>, StoreError> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(table).map_err(db_err)?;
    let mut out = BTreeMap::new();
    for row in t.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        out.insert(
            k.value().to_owned(),
            Arc::new(decode(k.value(), v.value())?),
        );
    }
    Ok(out)
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(source) => StoreError::DbIo(source),
        redb::Error::PreviousIo => StoreError::PreviousIo,
        other => StoreError::Db(other.to_string()),
    }
}

fn decode<T: DeserializeOwned>(id: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        id: id.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let store = MetadataStore::open(&path).unwrap();
        let pod = PodRecord {
            id: "p1".into(),
            name: "web".into(),
            ..Default::default()
        };
        store.put_pod(&pod).unwrap();
        drop(store);
        let store = MetadataStore::open(&path).unwrap();
        assert_eq!(store.pod("p1").unwrap().unwrap().name, "web");
        assert_eq!(store.pods().unwrap().len(), 1);
        store.delete_pod("p1").unwrap();
        store.delete_pod("p1").unwrap();
        assert!(store.pod("p1").unwrap().is_none());
    }

    /// Needs root (mounts a tmpfs); skipped otherwise. A full disk fails
    /// the write, hides a delete that cannot be written, and once there is
    /// room the same store works again and writes the delete.
    #[test]
    fn a_full_disk_is_survived_without_reopening_by_hand() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount a tmpfs");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("fs");
        std::fs::create_dir(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=4m"),
        )
        .unwrap();
        let path = mnt.join("meta.redb");
        let store = MetadataStore::open(&path).unwrap();
        let pod = |id: &str, n: usize| PodRecord {
            id: id.into(),
            name: "x".repeat(n),
            ..Default::default()
        };
        store.put_pod(&pod("keep", 10)).unwrap();
        store.put_pod(&pod("gone", 10)).unwrap();
        let fill = mnt.join("fill");
        let mut f = std::fs::File::create(&fill).unwrap();
        let chunk = vec![1u8; 4096];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        drop(f);
        let mut failed = None;
        for i in 0..20 {
            if let Err(e) = store.put_pod(&pod(&format!("big{i}"), 256 << 10)) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("no write failed on a full disk");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        let _ = store.delete_pod("gone");
        assert!(store.pod("gone").unwrap().is_none());
        assert!(store.pods().unwrap().iter().all(|p| p.id != "gone"));
        std::fs::remove_file(&fill).unwrap();
        store.put_pod(&pod("after", 10)).unwrap();
        drop(store);
        let store = MetadataStore::open(&path).unwrap();
        assert!(
            store.pod("gone").unwrap().is_none(),
            "the delete was never written"
        );
        assert!(store.pod("keep").unwrap().is_some());
        assert!(store.pod("after").unwrap().is_some());
        drop(store);
        nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
}
