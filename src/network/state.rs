//! Per-pod network state, one JSON file per pod, written atomically and
//! durably *before* anything is created for the pod, so that a teardown
//! after a crash knows what to undo (and CNI's DEL gets the cached ADD result).

use std::fs::{self, File};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::NetworkError;
use super::types::PortMapping;

/// Which mode set the pod up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodMode {
    Builtin,
    Cni,
}

/// What CNI DEL/CHECK need later: the exact config list, the arguments and
/// the ADD result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CniPodState {
    pub conf_list: serde_json::Value,
    pub args: Vec<(String, String)>,
    pub capability_args: serde_json::Map<String, serde_json::Value>,
    pub result: Option<serde_json::Value>,
}

/// A pod's network state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodState {
    pub pod_id: String,
    pub mode: PodMode,
    pub netns_path: PathBuf,
    pub interface: String,
    pub ips: Vec<IpAddr>,
    pub port_mappings: Vec<PortMapping>,
    pub cni: Option<CniPodState>,
}

/// Pod ids become file and lease names: keep them to a safe alphabet.
pub fn check_pod_id(id: &str) -> Result<(), NetworkError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidRequest(format!(
            "pod id {id:?} must be 1 to 128 characters of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

/// The network state directory: pod state files `pod-<id>.json` (and the
/// IPAM's leases, see [`super::ipam`]). Writes are atomic (temp file,
/// fsync, rename); [`StateDir::sync`] makes names durable, once per operation.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: PathBuf) -> Result<Self, NetworkError> {
        fs::create_dir_all(&dir)
            .map_err(|e| NetworkError::io(format!("create {}", dir.display()), e))?;
        Ok(Self { dir })
    }

    fn path(&self, pod_id: &str) -> PathBuf {
        self.dir.join(format!("pod-{pod_id}.json"))
    }

    pub fn load(&self, pod_id: &str) -> Result<Option<PodState>, NetworkError> {
        let p = self.path(pod_id);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| NetworkError::io(format!("parse {}", p.display()), e.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NetworkError::io(format!("read {}", p.display()), e)),
        }
    }

    /// Writes the pod's state; durable once [`StateDir::sync`] returns.
    pub fn save(&self, st: &PodState) -> Result<(), NetworkError> {
        let p = self.path(&st.pod_id);
        let tmp = self.dir.join(format!(".{}.tmp", st.pod_id));
        let body =
            serde_json::to_vec(st).map_err(|e| NetworkError::io("encode pod state", e.into()))?;
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, &p)
        };
        write().map_err(|e| NetworkError::io(format!("write {}", p.display()), e))
    }

    /// Makes every create, rename and removal in the directory durable.
    pub fn sync(&self) -> Result<(), NetworkError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| NetworkError::io(format!("fsync {}", self.dir.display()), e))
    }

    /// Removes the pod's state; durable once [`StateDir::sync`] returns.
    pub fn remove(&self, pod_id: &str) -> Result<(), NetworkError> {
        let p = self.path(pod_id);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetworkError::io(format!("remove {}", p.display()), e)),
        }
    }

    /// Ids of every pod with state.
    pub fn pods(&self) -> Result<Vec<String>, NetworkError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| NetworkError::io(format!("read {}", self.dir.display()), e))?;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = n.strip_prefix("pod-").and_then(|n| n.strip_suffix(".json")) {
                out.push(id.to_string());
            }
        }
        Ok(out)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ids() {
        assert!(check_pod_id("abc-123_x.y").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_pod_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path().to_path_buf()).unwrap();
        let st = PodState {
            pod_id: "p1".into(),
            mode: PodMode::Builtin,
            netns_path: "/x".into(),
            interface: "eth0".into(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            port_mappings: vec![],
            cni: None,
        };
        s.save(&st).unwrap();
        assert_eq!(s.load("p1").unwrap(), Some(st));
        assert_eq!(s.pods().unwrap(), vec!["p1".to_string()]);
        s.remove("p1").unwrap();
        s.remove("p1").unwrap();
        assert_eq!(s.load("p1").unwrap(), None);
    }
}
