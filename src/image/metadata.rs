//! The image metadata database (redb): images, references, snapshots, blobs
//! and container rootfs holds. Every change is one transaction; the files a
//! transaction mentions are on disk before it commits, so a crash at any
//! point leaves at worst unreferenced files, which `open` removes.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{ImageError, ImageRecord};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const REFS: TableDefinition<&str, &str> = TableDefinition::new("refs");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const BLOBS: TableDefinition<&str, u64> = TableDefinition::new("blobs");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// An image with the content it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredImage {
    pub record: ImageRecord,
    /// Every blob of the image: index, manifest, config, layers.
    pub blobs: Vec<String>,
}

/// A committed snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub diff_id: String,
    pub layer_digest: String,
    pub unpacked_bytes: u64,
}

/// A container's hold on an image's snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerHold {
    pub image_id: String,
    pub chain_ids: Vec<String>,
}

fn db_err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Database(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(v).map_err(db_err)
}

fn from_json<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(b).map_err(db_err)
}

/// The database.
#[derive(Debug)]
pub struct Metadata {
    db: Database,
}

/// A reference is a digest reference when it names a digest.
pub fn is_digest_ref(r: &str) -> bool {
    r.contains('@')
}

impl Metadata {
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(IMAGES).map_err(db_err)?;
            txn.open_table(REFS).map_err(db_err)?;
            txn.open_table(SNAPSHOTS).map_err(db_err)?;
            txn.open_table(BLOBS).map_err(db_err)?;
            txn.open_table(CONTAINERS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    pub fn image(&self, id: &str) -> Result<Option<StoredImage>, ImageError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(IMAGES).map_err(db_err)?;
        match t.get(id).map_err(db_err)? {
            Some(v) => Ok(Some(from_json(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn images(&self) -> Result<Vec<StoredImage>, ImageError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(IMAGES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(from_json(v.value())?);
        }
        Ok(out)
    }

    pub fn resolve_ref(&self, reference: &str) -> Result<Option<String>, ImageError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(REFS).map_err(db_err)?;
        Ok(t.get(reference)
            .map_err(db_err)?
            .map(|v| v.value().to_owned()))
    }

    pub fn snapshots(&self) -> Result<Vec<(String, SnapshotInfo)>, ImageError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_owned(), from_json(v.value())?));
        }
        Ok(out)
    }

    pub fn blobs(&self) -> Result<Vec<(String, u64)>, ImageError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(BLOBS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    pub fn containers(&self) -> Result<Vec<(String, ContainerHold)>, ImageError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(CONTAINERS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_owned(), from_json(v.value())?));
        }
        Ok(out)
    }

    /// Records a pulled image with its refs, blobs and snapshots, in one
    /// transaction. A ref that named another image moves here; an image
    /// left without any reference is deleted.
    pub fn commit_pull(
        &self,
        image: StoredImage,
        blobs: &[(String, u64)],
        snapshots: &[(String, SnapshotInfo)],
    ) -> Result<ImageRecord, ImageError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let record;
        {
            let mut images = txn.open_table(IMAGES).map_err(db_err)?;
            let mut refs = txn.open_table(REFS).map_err(db_err)?;
            let mut bt = txn.open_table(BLOBS).map_err(db_err)?;
            let mut st = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            for (d, size) in blobs {
                bt.insert(d.as_str(), *size).map_err(db_err)?;
            }
            for (c, info) in snapshots {
                st.insert(c.as_str(), to_json(info)?.as_slice())
                    .map_err(db_err)?;
            }
            let id = image.record.id.clone();
            let mut stored: StoredImage = match images.get(id.as_str()).map_err(db_err)? {
                Some(v) => from_json(v.value())?,
                None => StoredImage {
                    record: ImageRecord {
                        repo_tags: Vec::new(),
                        repo_digests: Vec::new(),
                        ..image.record.clone()
                    },
                    blobs: Vec::new(),
                },
            };
            for b in image.blobs {
                if !stored.blobs.contains(&b) {
                    stored.blobs.push(b);
                }
            }
            let new_refs: Vec<String> = image
                .record
                .repo_tags
                .iter()
                .chain(&image.record.repo_digests)
                .cloned()
                .collect();
            for r in new_refs {
                let previous = refs
                    .insert(r.as_str(), id.as_str())
                    .map_err(db_err)?
                    .map(|v| v.value().to_owned());
                if let Some(prev) = previous
                    && prev != id
                {
                    // The ref moves: take it off the other image.
                    let other = images
                        .get(prev.as_str())
                        .map_err(db_err)?
                        .map(|v| v.value().to_vec());
                    if let Some(other) = other {
                        let mut other: StoredImage = from_json(&other)?;
                        other.record.repo_tags.retain(|t| *t != r);
                        other.record.repo_digests.retain(|t| *t != r);
                        if other.record.repo_tags.is_empty() && other.record.repo_digests.is_empty()
                        {
                            images.remove(prev.as_str()).map_err(db_err)?;
                        } else {
                            images
                                .insert(prev.as_str(), to_json(&other)?.as_slice())
                                .map_err(db_err)?;
                        }
                    }
                }
                let list = if is_digest_ref(&r) {
                    &mut stored.record.repo_digests
                } else {
                    &mut stored.record.repo_tags
                };
                if !list.contains(&r) {
                    list.push(r);
                }
            }
            images
                .insert(id.as_str(), to_json(&stored)?.as_slice())
                .map_err(db_err)?;
            record = stored.record;
        }
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Removes one tag; the image goes when no tag is left. Returns whether
    /// anything changed.
    pub fn untag(&self, tag: &str) -> Result<bool, ImageError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut images = txn.open_table(IMAGES).map_err(db_err)?;
            let mut refs = txn.open_table(REFS).map_err(db_err)?;
            let Some(id) = refs
                .remove(tag)
                .map_err(db_err)?
                .map(|v| v.value().to_owned())
            else {
                return Ok(false);
            };
            let stored = images
                .get(id.as_str())
                .map_err(db_err)?
                .map(|v| v.value().to_vec());
            if let Some(stored) = stored {
                let mut stored: StoredImage = from_json(&stored)?;
                stored.record.repo_tags.retain(|t| t != tag);
                if stored.record.repo_tags.is_empty() {
                    for d in &stored.record.repo_digests {
                        refs.remove(d.as_str()).map_err(db_err)?;
                    }
                    images.remove(id.as_str()).map_err(db_err)?;
                } else {
                    images
                        .insert(id.as_str(), to_json(&stored)?.as_slice())
                        .map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Deletes an image and all its references.
    pub fn delete_image(&self, id: &str) -> Result<bool, ImageError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut images = txn.open_table(IMAGES).map_err(db_err)?;
            let mut refs = txn.open_table(REFS).map_err(db_err)?;
            let Some(stored) = images
                .remove(id)
                .map_err(db_err)?
                .map(|v| v.value().to_vec())
            else {
                return Ok(false);
            };
            let stored: StoredImage = from_json(&stored)?;
            for r in stored
                .record
                .repo_tags
                .iter()
                .chain(&stored.record.repo_digests)
            {
                refs.remove(r.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Forgets blobs and snapshots (GC; the files go after this commits).
    pub fn forget(&self, blobs: &[String], snapshots: &[String]) -> Result<(), ImageError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut bt = txn.open_table(BLOBS).map_err(db_err)?;
            let mut st = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            for b in blobs {
                bt.remove(b.as_str()).map_err(db_err)?;
            }
            for s in snapshots {
                st.remove(s.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    pub fn hold(&self, container_id: &str, hold: &ContainerHold) -> Result<(), ImageError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(CONTAINERS).map_err(db_err)?;
            t.insert(container_id, to_json(hold)?.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub fn release(&self, container_id: &str) -> Result<(), ImageError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(CONTAINERS).map_err(db_err)?;
            t.remove(container_id).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }
}
