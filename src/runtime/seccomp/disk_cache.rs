//! A cache of compiled filters on disk, shared by every process of a node
//! (each pod's shim): the first container with a profile pays the
//! libseccomp compile (milliseconds for RuntimeDefault over three
//! architectures), the others read a file.
//!
//! One file per profile, named by a hash of the key (the profile's JSON,
//! the machine architecture and the libseccomp version); the file holds the
//! full key, so a hash collision or a stale or corrupt file is detected on
//! read and recompiled. Files are written to a temporary name and renamed,
//! so readers never see half a file.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{MAX_INSTRUCTIONS, SeccompProgram};

/// The environment variable naming the cache directory (berthd sets it for
/// the shims it starts; without it there is no on-disk cache).
pub const CACHE_DIR_ENV: &str = "BERTH_SECCOMP_CACHE_DIR";

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    program: SeccompProgram,
}

/// The full cache key of a profile's JSON.
pub fn key(profile_json: &str) -> String {
    let v = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    format!("{}|libseccomp {v}|{profile_json}", std::env::consts::ARCH)
}

fn file_name(key: &str) -> String {
    // FNV-1a and SipHash side by side: 128 bits, stable within a build; the
    // stored key decides anyway.
    let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        fnv = (fnv ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut sip = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut sip);
    format!("{fnv:016x}{:016x}.json", sip.finish())
}

/// The program stored for `key` in `dir`, if a valid one is there.
pub fn load(dir: &Path, key: &str) -> Option<SeccompProgram> {
    let bytes = std::fs::read(dir.join(file_name(key))).ok()?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    let p = entry.program;
    (entry.key == key && !p.filter.is_empty() && p.filter.len() <= MAX_INSTRUCTIONS).then_some(p)
}

/// Stores `program` for `key` in `dir` (created), atomically.
pub fn store(dir: &Path, key: &str, program: &SeccompProgram) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let entry = Entry {
        key: key.to_owned(),
        program: program.clone(),
    };
    let data = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
    let target = dir.join(file_name(key));
    let tmp: PathBuf = dir.join(format!(".{}.{}.tmp", file_name(key), std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    let res = f.write_all(&data).and_then(|()| f.sync_data());
    drop(f);
    match res.and_then(|()| std::fs::rename(&tmp, &target)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The cache directory from the environment, if set.
pub fn dir_from_env() -> Option<PathBuf> {
    std::env::var_os(CACHE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(n: usize) -> SeccompProgram {
        SeccompProgram {
            filter: vec![
                libc::sock_filter {
                    code: 6,
                    jt: 0,
                    jf: 0,
                    k: 0x7fff_0000,
                };
                n
            ],
            flags: 0,
            skipped: vec![],
        }
    }

    #[test]
    fn stored_programs_come_back_and_bad_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("{\"defaultAction\":\"SCMP_ACT_ALLOW\"}");
        assert!(load(dir.path(), &k).is_none());
        store(dir.path(), &k, &program(3)).unwrap();
        assert_eq!(load(dir.path(), &k).unwrap().instructions(), 3);
        // Another key never gets this program.
        assert!(load(dir.path(), &key("{}")).is_none());
        // A corrupt file is a miss, not an error.
        std::fs::write(dir.path().join(file_name(&k)), b"{not json").unwrap();
        assert!(load(dir.path(), &k).is_none());
        // A file whose key differs (a collision) is a miss.
        let other = Entry {
            key: "other".into(),
            program: program(1),
        };
        std::fs::write(
            dir.path().join(file_name(&k)),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        assert!(load(dir.path(), &k).is_none());
        // No temporary file is left.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
