//! The shim's one lock-poisoning policy: a mutex a panicking RPC held is
//! taken back, never turned into a permanent failure.
//!
//! Every RPC runs under `catch_unwind` (`service.rs`), so a panic while a
//! lock is held poisons it; with `.lock().expect(..)` every later RPC and
//! the reaper (which dispatches exits under the `pids` lock) would panic on
//! it too, and the shim would stop reporting exits. What these mutexes
//! guard (maps of processes, a process's state, stdio handles) is
//! consistent between statements, so the guard is recovered instead
//! (the same as `parking_lot`'s mutexes, which do not poison).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// `lock()` that recovers a poisoned guard.
pub trait Lock<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Lock<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `Condvar::wait` that recovers a poisoned guard.
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_back() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
    }
}
