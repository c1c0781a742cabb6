//! Persisted metadata of pods and containers (redb), written before an RPC
//! returns so that a restarted berthd finds every pod and container again.
//!
//! Records are stored as JSON values keyed by id: the CRI configs they carry
//! are protobuf messages, kept as their encoded bytes.

mod error;
mod records;

pub use error::StoreError;
pub use records::{ContainerRecord, ContainerState, PodRecord, PodState};

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// The pod and container database.
pub struct MetadataStore {
    db: Database,
}

impl std::fmt::Debug for MetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataStore").finish_non_exhaustive()
    }
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
        let db = Database::create(path).map_err(|e| StoreError::Db(e.to_string()))?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(PODS).map_err(db_err)?;
        tx.open_table(CONTAINERS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Encode(e.to_string()))?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(table).map_err(db_err)?;
            t.insert(id, bytes.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table).map_err(db_err)?;
        match t.get(id).map_err(db_err)? {
            Some(v) => Ok(Some(decode(id, v.value())?)),
            None => Ok(None),
        }
    }

    fn delete(&self, table: TableDefinition<&str, &[u8]>, id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(table).map_err(db_err)?;
            t.remove(id).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    fn list<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
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

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
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
}
