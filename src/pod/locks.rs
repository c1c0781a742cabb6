//! Per-object locking and name reservation, as containerd's CRI does it
//! (`internal/cri/store`: one store per kind, each object with its own
//! status lock, and `pkg/registrar` reserving names): only operations on the
//! same pod or the same container wait for each other.
//!
//! - [`ObjectLocks`]: one async read/write lock per pod or container id.
//!   Lock order: a pod before its containers. An operation on a container
//!   holds its pod's lock shared (so the pod cannot be stopped or removed
//!   under it) and the container's exclusively; StopPodSandbox and
//!   RemovePodSandbox hold the pod's exclusively.
//! - [`NameIndex`]: a name is reserved for an id before anything is made
//!   (two RunPodSandbox of one name at once: one wins, the other gets
//!   AlreadyExists), and released when the object is removed or its
//!   creation failed.
//!
//! No lock is ever held while waiting out a stop grace period, and reads
//! (status, list) take none: they read the metadata store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// The lock of one object, shared while it is held or awaited.
type ObjectLock = Arc<RwLock<()>>;

/// Async locks by object id. An entry lives as long as somebody holds or
/// waits for its lock; it is dropped from the map on the next lookup after
/// that (no growth with the number of objects ever made).
#[derive(Debug, Default)]
pub struct ObjectLocks {
    locks: Mutex<HashMap<String, Weak<RwLock<()>>>>,
}

/// Held exclusively: nothing else runs on the object.
pub type Exclusive = OwnedRwLockWriteGuard<()>;
/// Held shared: the object cannot be stopped or removed meanwhile.
pub type Shared = OwnedRwLockReadGuard<()>;

impl ObjectLocks {
    fn entry(&self, id: &str) -> ObjectLock {
        let mut map = lock(&self.locks);
        if let Some(l) = map.get(id).and_then(Weak::upgrade) {
            return l;
        }
        // Forget the locks nobody holds any more (amortised: only when the
        // map grows past twice what was live at the last sweep).
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let l: ObjectLock = Arc::new(RwLock::new(()));
        map.insert(id.to_owned(), Arc::downgrade(&l));
        l
    }

    /// Waits for the object's lock, exclusively.
    pub async fn exclusive(&self, id: &str) -> Exclusive {
        self.entry(id).write_owned().await
    }

    /// Waits for the object's lock, shared.
    pub async fn shared(&self, id: &str) -> Shared {
        self.entry(id).read_owned().await
    }

    /// How many locks are in the map (for the tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.locks).len()
    }
}

/// Reserved names: name → id (containerd's `registrar.Registrar`).
#[derive(Debug, Default)]
pub struct NameIndex {
    names: Mutex<HashMap<String, String>>,
}

impl NameIndex {
    /// Reserves `name` for `id`; Err(the holder's id) when another id has it.
    /// Reserving a name again for the same id is not an error.
    pub fn reserve(&self, name: &str, id: &str) -> std::result::Result<(), String> {
        let mut names = lock(&self.names);
        match names.get(name) {
            Some(holder) if holder != id => Err(holder.clone()),
            Some(_) => Ok(()),
            None => {
                names.insert(name.to_owned(), id.to_owned());
                Ok(())
            }
        }
    }

    /// Reserves `name` for `id` until the returned reservation is dropped,
    /// unless it is kept ([`Reservation::keep`]: the object was made).
    pub fn reserve_until_made<'a>(
        &'a self,
        name: &str,
        id: &str,
    ) -> std::result::Result<Reservation<'a>, String> {
        self.reserve(name, id)?;
        Ok(Reservation {
            index: self,
            name: name.to_owned(),
            id: id.to_owned(),
            kept: false,
        })
    }

    /// Releases `name` if `id` holds it.
    pub fn release(&self, name: &str, id: &str) {
        let mut names = lock(&self.names);
        if names.get(name).is_some_and(|h| h == id) {
            names.remove(name);
        }
    }

    /// How many names are reserved (for the tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.names).len()
    }
}

/// A name reserved while its object is being made: released on drop (the
/// creation failed, also by an early return) unless kept.
#[derive(Debug)]
pub struct Reservation<'a> {
    index: &'a NameIndex,
    name: String,
    id: String,
    kept: bool,
}

impl Reservation<'_> {
    /// The object was made: its name stays reserved until it is removed.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.index.release(&self.name, &self.id);
        }
    }
}

/// The key a pod's name is reserved under (kubelet's sandbox name:
/// name, namespace, uid, attempt).
pub fn pod_name(name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    format!("{name}_{namespace}_{uid}_{attempt}")
}

/// The key a container's name is reserved under: unique in its pod.
pub fn container_name(pod_id: &str, name: &str, attempt: u32) -> String {
    format!("{pod_id}/{name}_{attempt}")
}

/// A std mutex whose poisoning (a panic while it was held) is not a
/// permanent failure: the maps it guards stay consistent at every step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn only_the_same_object_waits() {
        let locks = Arc::new(ObjectLocks::default());
        let held = locks.exclusive("a").await;
        // Another object is free at once.
        let other = tokio::time::timeout(Duration::from_millis(100), locks.exclusive("b")).await;
        assert!(other.is_ok(), "b must not wait for a");
        // The same object waits until the holder is done.
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move { l2.shared("a").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second lock of a waits");
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("a is free once released")
            .unwrap();
    }

    #[tokio::test]
    async fn shared_holders_run_together() {
        let locks = ObjectLocks::default();
        let _a = locks.shared("p").await;
        let b = tokio::time::timeout(Duration::from_millis(100), locks.shared("p")).await;
        assert!(b.is_ok());
        let w = tokio::time::timeout(Duration::from_millis(50), locks.exclusive("p")).await;
        assert!(w.is_err(), "exclusive waits for the shared holders");
    }

    #[tokio::test]
    async fn unused_locks_are_forgotten() {
        let locks = ObjectLocks::default();
        for i in 0..10_000 {
            drop(locks.exclusive(&format!("c{i}")).await);
        }
        assert!(locks.len() <= 128, "{} locks kept", locks.len());
    }

    #[test]
    fn a_name_has_one_holder_until_released() {
        let names = NameIndex::default();
        names.reserve("web_default_u_0", "id1").unwrap();
        names.reserve("web_default_u_0", "id1").unwrap();
        assert_eq!(names.reserve("web_default_u_0", "id2"), Err("id1".into()));
        names.release("web_default_u_0", "id2");
        assert_eq!(names.reserve("web_default_u_0", "id2"), Err("id1".into()));
        names.release("web_default_u_0", "id1");
        names.reserve("web_default_u_0", "id2").unwrap();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_reservation_is_released_unless_kept() {
        let names = NameIndex::default();
        drop(names.reserve_until_made("a", "1").unwrap());
        assert_eq!(names.len(), 0, "a failed creation frees its name");
        names.reserve_until_made("a", "2").unwrap().keep();
        assert_eq!(names.reserve("a", "3"), Err("2".into()));
    }
}
