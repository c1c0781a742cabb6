//! The built-in mode's IPAM: one lease per address, a symlink named
//! `lease-<address>` whose target is the owning pod id, in the network state
//! directory (next to the pod state files).
//!
//! `symlink(2)` fails when the name exists, so an address is handed out at
//! most once, across threads, processes and crashes, and a lease always names
//! its owner (the target lives in the link's inode, made in one step). The
//! caller fsyncs the directory once per setup/teardown (see
//! [`super::state::StateDir`]), before the address is used or the pod's
//! teardown reports success.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

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
                u64::try_from(u128::from(a) - u128::from(n.addr)).ok()
            }
            _ => None,
        }
    }
    fn key(&self) -> String {
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

fn io(ctx: &str, p: &Path, e: std::io::Error) -> NetworkError {
    NetworkError::io(format!("ipam {ctx} {}", p.display()), e)
}

fn lease_name(ip: IpAddr) -> String {
    format!("lease-{}", ip.to_string().replace(':', "-"))
}

/// Every lease in `dir` (of every pool): address and owner.
pub fn leases(dir: &Path) -> Result<Vec<(IpAddr, String)>, NetworkError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io("read", dir, e))? {
        let entry = entry.map_err(|e| io("read", dir, e))?;
        let name = entry.file_name();
        let Some(ip) = name
            .to_str()
            .and_then(|n| n.strip_prefix("lease-"))
            .and_then(|n| n.replace('-', ":").parse::<IpAddr>().ok())
        else {
            continue;
        };
        match fs::read_link(entry.path()) {
            Ok(owner) => out.push((ip, owner.to_string_lossy().into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", &entry.path(), e)),
        }
    }
    Ok(out)
}

/// Releases every lease of `pod_id` in `dir` (every pool). Idempotent; the
/// caller fsyncs the directory.
pub fn release(dir: &Path, pod_id: &str) -> Result<Vec<IpAddr>, NetworkError> {
    let mut released = Vec::new();
    for (ip, owner) in leases(dir)? {
        if owner == pod_id {
            let p = dir.join(lease_name(ip));
            match fs::remove_file(&p) {
                Ok(()) => released.push(ip),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &p, e)),
            }
        }
    }
    Ok(released)
}

/// The leases of one pool.
#[derive(Debug)]
pub struct Ipam {
    pool: Pool,
    dir: PathBuf,
}

impl Ipam {
    /// The pool's leases in `dir` (which must exist).
    pub fn open(dir: &Path, pool: Pool) -> Self {
        Self {
            pool,
            dir: dir.to_path_buf(),
        }
    }

    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// The address of this pool leased to `pod_id`, if any.
    pub fn find(&self, pod_id: &str) -> Result<Option<IpAddr>, NetworkError> {
        Ok(leases(&self.dir)?
            .into_iter()
            .find(|(ip, o)| o == pod_id && self.pool.offset_of(*ip).is_some())
            .map(|(ip, _)| ip))
    }

    /// Leases an address to `pod_id` (the one it already has, if any). Not
    /// yet durable: the caller fsyncs the directory before using it.
    pub fn allocate(&self, pod_id: &str) -> Result<IpAddr, NetworkError> {
        if let Some(ip) = self.find(pod_id)? {
            return Ok(ip);
        }
        let (first, last) = self.pool.range();
        let last_path = self.dir.join(format!(".last-{}", self.pool.key()));
        let start = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .and_then(|ip| self.pool.offset_of(ip))
            .filter(|o| (first..=last).contains(o))
            .map(|o| if o >= last { first } else { o + 1 })
            .unwrap_or(first);
        let span = last - first + 1;
        for i in 0..span {
            let ip = self.pool.nth(first + (start - first + i) % span);
            let p = self.dir.join(lease_name(ip));
            match std::os::unix::fs::symlink(pod_id, &p) {
                Ok(()) => {
                    // Only a hint for where to continue; losing it is harmless.
                    let _ = fs::write(&last_path, ip.to_string());
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create", &p, e)),
            }
        }
        Err(NetworkError::IpamExhausted(self.pool.key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_twice_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let pool = Pool::V4("10.1.2.0/29".parse().unwrap());
        let a = Ipam::open(d.path(), pool);
        let ip1 = a.allocate("p1").unwrap();
        assert_eq!(a.allocate("p1").unwrap(), ip1, "same pod, same lease");
        drop(a);
        let b = Ipam::open(d.path(), pool);
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
        assert_eq!(release(d.path(), "p1").unwrap(), vec![ip1]);
        assert!(release(d.path(), "p1").unwrap().is_empty());
        assert_eq!(b.allocate("p6").unwrap(), ip1);
        let mut all: Vec<_> = leases(d.path())
            .unwrap()
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn pools_share_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let v4 = Ipam::open(d.path(), Pool::V4("10.1.2.0/24".parse().unwrap()));
        let v6 = Ipam::open(d.path(), Pool::V6("fd00:1::/64".parse().unwrap()));
        let a = v4.allocate("p").unwrap();
        let b = v6.allocate("p").unwrap();
        assert_eq!(b.to_string(), "fd00:1::2");
        assert_eq!(v4.find("p").unwrap(), Some(a));
        assert_eq!(v6.find("p").unwrap(), Some(b));
        let mut r = release(d.path(), "p").unwrap();
        r.sort();
        assert_eq!(r, vec![a, b]);
    }
}
