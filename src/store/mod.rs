//! Persisted metadata of pods and containers (redb), written before an RPC
//! returns so that a restarted berthd finds every pod and container again.
//!
//! Records are stored as JSON values keyed by id: the CRI configs they carry
//! are protobuf messages, kept as their encoded bytes.

mod error;
mod records;

pub use error::StoreError;
pub use records::{ContainerRecord, ContainerState, PodRecord, PodState};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

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
        Ok(Self {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
            unwritten_deletes: Mutex::new(HashSet::new()),
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

    fn is_deleted(&self, table: TableDefinition<&str, &[u8]>, id: &str) -> bool {
        let pending = self
            .unwritten_deletes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        !pending.is_empty() && pending.contains(&(table.name().to_owned(), id.to_owned()))
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

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.write(|tx| {
            let mut t = tx.open_table(table).map_err(db_err)?;
            t.insert(id, bytes.as_slice()).map_err(db_err)?;
            Ok(())
        })?;
        self.unwritten_deletes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(table.name().to_owned(), id.to_owned()));
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        if self.is_deleted(table, id) {
            return Ok(None);
        }
        self.with_db(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(table).map_err(db_err)?;
            match t.get(id).map_err(db_err)? {
                Some(v) => Ok(Some(decode(id, v.value())?)),
                None => Ok(None),
            }
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

    fn list<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(table).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                if self.is_deleted(table, k.value()) {
                    continue;
                }
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// Stores (or replaces) a pod record.
    pub fn put_pod(&self, pod: &PodRecord) -> Result<(), StoreError> {
        self.put(PODS, &pod.id, pod)
    }
    /// The pod with exactly this id.
    pub fn pod(&self, id: &str) -> Result<Option<PodRecord>, StoreError> {
        self.get(PODS, id)
    }
    /// Forgets a pod (no error when it is not there).
    pub fn delete_pod(&self, id: &str) -> Result<(), StoreError> {
        self.delete(PODS, id)
    }
    /// Every pod.
    pub fn pods(&self) -> Result<Vec<PodRecord>, StoreError> {
        self.list(PODS)
    }
    /// Stores (or replaces) a container record.
    pub fn put_container(&self, c: &ContainerRecord) -> Result<(), StoreError> {
        self.put(CONTAINERS, &c.id, c)
    }
    /// The container with exactly this id.
    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>, StoreError> {
        self.get(CONTAINERS, id)
    }
    /// Forgets a container (no error when it is not there).
    pub fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        self.delete(CONTAINERS, id)
    }
    /// Every container.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        self.list(CONTAINERS)
    }
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
