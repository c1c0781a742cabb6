//! The built-in mode's IPAM: one file per lease, named by the address and
//! holding the pod id, in a directory per subnet under the state dir.
//!
//! A lease is taken by writing a temp file and `link(2)`-ing it to the
//! address's name, which fails when the name exists: an address is handed out
//! at most once, across processes and crashes, and a lease file always holds
//! its owner. File and directory are fsync'ed before the address is used.

use std::fs::{self, File};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::addr::{Ipv4Net, Ipv6Net};
use super::error::NetworkError;

/// A pool of addresses: one subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

impl Pool {
    fn nth(&self, off: u64) -> IpAddr {
        match self {
            Pool::V4(n) => IpAddr::V4(n.nth(off)),
            Pool::V6(n) => IpAddr::V6(n.nth(off)),
        }
    }
    fn range(&self) -> (u64, u64) {
        match self {
            Pool::V4(n) => n.pod_offsets(),
            Pool::V6(n) => n.pod_offsets(),
        }
    }
    fn offset_of(&self, ip: IpAddr) -> Option<u64> {
        match (self, ip) {
            (Pool::V4(n), IpAddr::V4(a)) if n.contains(a) => {
                Some((u32::from(a) - u32::from(n.addr)) as u64)
            }
            (Pool::V6(n), IpAddr::V6(a)) if n.contains(a) => {
                let off = u128::from(a) - u128::from(n.addr);
                u64::try_from(off).ok()
            }
            _ => None,
        }
    }
    fn dir_name(&self) -> String {
        match self {
            Pool::V4(n) => format!("{}_{}", n.addr, n.prefix),
            Pool::V6(n) => format!("{}_{}", n.addr, n.prefix).replace(':', "-"),
        }
    }
    /// The pool's prefix length (for the pod's address).
    pub fn prefix(&self) -> u8 {
        match self {
            Pool::V4(n) => n.prefix,
            Pool::V6(n) => n.prefix,
        }
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The leases of one pool.
#[derive(Debug)]
pub struct Ipam {
    pool: Pool,
    dir: PathBuf,
    lock: Mutex<()>,
}

fn io(ctx: &str, p: &Path, e: std::io::Error) -> NetworkError {
    NetworkError::io(format!("ipam {ctx} {}", p.display()), e)
}

fn sync_dir(dir: &Path) -> Result<(), NetworkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync", dir, e))
}

impl Ipam {
    /// Opens (creating) the lease directory of `pool` under `root`.
    pub fn open(root: &Path, pool: Pool) -> Result<Self, NetworkError> {
        let dir = root.join(pool.dir_name());
        fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        Ok(Self {
            pool,
            dir,
            lock: Mutex::new(()),
        })
    }

    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// Every lease: address and owner. Unparseable names (temp files) are skipped.
    pub fn leases(&self) -> Result<Vec<(IpAddr, String)>, NetworkError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io("read", &self.dir, e))? {
            let entry = entry.map_err(|e| io("read", &self.dir, e))?;
            let name = entry.file_name();
            let Some(ip) = name
                .to_str()
                .and_then(|n| n.replace('-', ":").parse::<IpAddr>().ok())
            else {
                continue;
            };
            match fs::read_to_string(entry.path()) {
                Ok(owner) => out.push((ip, owner.trim().to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("read", &entry.path(), e)),
            }
        }
        Ok(out)
    }

    fn file_of(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string().replace(':', "-"))
    }

    /// The address leased to `pod_id`, if any.
    pub fn find(&self, pod_id: &str) -> Result<Option<IpAddr>, NetworkError> {
        Ok(self
            .leases()?
            .into_iter()
            .find(|(_, o)| o == pod_id)
            .map(|(ip, _)| ip))
    }

    /// Leases an address to `pod_id` (the one it already has, if any).
    pub fn allocate(&self, pod_id: &str) -> Result<IpAddr, NetworkError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = self.find(pod_id)? {
            return Ok(ip);
        }
        let (first, last) = self.pool.range();
        let last_path = self.dir.join(".last");
        let start = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .and_then(|ip| self.pool.offset_of(ip))
            .filter(|o| (first..=last).contains(o))
            .map(|o| if o >= last { first } else { o + 1 })
            .unwrap_or(first);

        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        {
            let mut f = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
            f.write_all(format!("{pod_id}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| io("write", &tmp, e))?;
        }
        let span = last - first + 1;
        let mut result = Err(NetworkError::IpamExhausted(format!("{:?}", self.pool)));
        for i in 0..span {
            let off = first + (start - first + i) % span;
            let ip = self.pool.nth(off);
            match fs::hard_link(&tmp, self.file_of(ip)) {
                Ok(()) => {
                    result = Ok(ip);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    result = Err(io("link", &self.file_of(ip), e));
                    break;
                }
            }
        }
        let _ = fs::remove_file(&tmp);
        let ip = result?;
        sync_dir(&self.dir)?;
        // Only a hint for where to continue; losing it is harmless.
        let _ = fs::write(&last_path, ip.to_string());
        Ok(ip)
    }

    /// Releases every lease of `pod_id`. Idempotent.
    pub fn release(&self, pod_id: &str) -> Result<Vec<IpAddr>, NetworkError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut released = Vec::new();
        for (ip, owner) in self.leases()? {
            if owner == pod_id {
                match fs::remove_file(self.file_of(ip)) {
                    Ok(()) => released.push(ip),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("remove", &self.file_of(ip), e)),
                }
            }
        }
        if !released.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_twice_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let pool = Pool::V4("10.1.2.0/29".parse().unwrap());
        let a = Ipam::open(d.path(), pool).unwrap();
        let ip1 = a.allocate("p1").unwrap();
        assert_eq!(a.allocate("p1").unwrap(), ip1, "same pod, same lease");
        drop(a);
        let b = Ipam::open(d.path(), pool).unwrap();
        let ip2 = b.allocate("p2").unwrap();
        assert_ne!(ip1, ip2);
        // /29: offsets 2..=6 → 5 pod addresses.
        for i in 3..=5 {
            b.allocate(&format!("p{i}")).unwrap();
        }
        assert!(matches!(
            b.allocate("p6"),
            Err(NetworkError::IpamExhausted(_))
        ));
        assert_eq!(b.release("p1").unwrap(), vec![ip1]);
        assert!(b.release("p1").unwrap().is_empty());
        assert_eq!(b.allocate("p6").unwrap(), ip1);
        let mut all: Vec<_> = b.leases().unwrap().into_iter().map(|(ip, _)| ip).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn v6_names() {
        let d = tempfile::tempdir().unwrap();
        let a = Ipam::open(d.path(), Pool::V6("fd00:1::/64".parse().unwrap())).unwrap();
        let ip = a.allocate("p").unwrap();
        assert_eq!(ip.to_string(), "fd00:1::2");
        assert_eq!(a.find("p").unwrap(), Some(ip));
        assert_eq!(a.release("p").unwrap(), vec![ip]);
    }
}
