//! Container Device Interface (CDI): device specs that vendors (GPU
//! drivers, DRA drivers) drop into `/etc/cdi` and `/var/run/cdi`, and the
//! container edits the devices a container names (`ContainerConfig.CDI_devices`,
//! or the `cdi.k8s.io/*` annotations) add to its OCI spec.
//!
//! The format is the CNCF spec (`SPEC.md` of container-device-interface):
//! one document per file (JSON, or YAML), `kind` `vendor.com/class`, a list of
//! named devices, each with `containerEdits` (env, deviceNodes, mounts,
//! hooks), plus spec-wide `containerEdits` applied with any of its devices.
//! A device is named `vendor.com/class=name`. Directories are read in order;
//! a device defined again in a later directory wins (as the Go library's
//! priority); twice in one directory is a conflict and the device is
//! unusable. This reads the files; [`crate::spec::apply_cdi_edits`] applies
//! the result, purely.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::spec::{CdiDeviceNode, CdiEdits, CdiMount};

/// What can go wrong with CDI devices.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// The name is not `vendor.com/class=device`.
    #[error("CDI device name {0:?} is not qualified (vendor.com/class=name)")]
    BadName(String),
    /// No spec in the spec directories defines the device.
    #[error("unresolvable CDI device {name}: no spec in {dirs} defines it")]
    Unknown { name: String, dirs: String },
    /// Two specs of the same directory define the device.
    #[error("CDI device {name} is defined by both {first} and {second}")]
    Conflict {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    /// A spec the device comes from does not parse or is invalid.
    #[error("CDI spec {path}: {reason}")]
    Spec { path: PathBuf, reason: String },
    /// A device node's host path cannot be read.
    #[error("CDI device {name}: device node {path}: {reason}")]
    DeviceNode {
        name: String,
        path: String,
        reason: String,
    },
    /// The device needs what berth's runtime does not do.
    #[error("CDI device {name}: {reason}")]
    Unsupported { name: String, reason: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<DeviceFile>,
    #[serde(default)]
    container_edits: EditsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceFile {
    name: String,
    #[serde(default)]
    container_edits: EditsFile,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EditsFile {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<NodeFile>,
    #[serde(default)]
    mounts: Vec<MountFile>,
    #[serde(default)]
    hooks: Vec<serde_json::Value>,
    #[serde(default)]
    additional_gids: Vec<u32>,
    #[serde(default)]
    intel_rdt: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeFile {
    path: String,
    #[serde(default)]
    host_path: String,
    #[serde(default, rename = "type")]
    typ: String,
    major: Option<i64>,
    minor: Option<i64>,
    file_mode: Option<u32>,
    #[serde(default)]
    permissions: String,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MountFile {
    host_path: String,
    container_path: String,
    #[serde(default, rename = "type")]
    typ: String,
    #[serde(default)]
    options: Vec<String>,
}

/// One device as its spec defines it.
#[derive(Debug, Clone)]
struct Defined {
    path: PathBuf,
    /// The spec-wide edits, then the device's own.
    edits: [EditsFile; 2],
}

/// The devices of the spec directories, read at one moment.
#[derive(Debug, Default)]
pub struct CdiRegistry {
    dirs: Vec<PathBuf>,
    devices: BTreeMap<String, Defined>,
    /// Devices that two specs of one directory define.
    conflicts: BTreeMap<String, (PathBuf, PathBuf)>,
    /// Spec files that could not be used, with why (named when a device of
    /// theirs might have been the one asked for).
    broken: Vec<(PathBuf, String)>,
}

/// Splits `vendor.com/class=name`.
fn parse_name(name: &str) -> Option<(&str, &str)> {
    let (kind, dev) = name.split_once('=')?;
    let (vendor, class) = kind.split_once('/')?;
    let ok = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    (ok(vendor, &['.', '-', '_']) && ok(class, &['.', '-', '_']) && ok(dev, &['.', '-', '_', ':']))
        .then_some((kind, dev))
}

impl CdiRegistry {
    /// Reads every `*.json`, `*.yaml` and `*.yml` of `dirs` (missing
    /// directories are empty).
    pub fn load(dirs: &[PathBuf]) -> Self {
        let mut reg = CdiRegistry {
            dirs: dirs.to_vec(),
            ..Default::default()
        };
        for dir in dirs {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("json" | "yaml" | "yml")
                        )
                    })
                    .collect(),
                Err(_) => continue,
            };
            files.sort();
            let mut this_dir: BTreeMap<String, Defined> = BTreeMap::new();
            let mut dir_conflicts: BTreeMap<String, (PathBuf, PathBuf)> = BTreeMap::new();
            for path in files {
                let spec = match read_spec(&path) {
                    Ok(s) => s,
                    Err(reason) => {
                        tracing::warn!(path = %path.display(), %reason, "CDI spec ignored");
                        reg.broken.push((path, reason));
                        continue;
                    }
                };
                for d in spec.devices {
                    let name = format!("{}={}", spec.kind, d.name);
                    let def = Defined {
                        path: path.clone(),
                        edits: [spec.container_edits.clone(), d.container_edits],
                    };
                    if let Some(prev) = this_dir.get(&name) {
                        dir_conflicts.insert(name.clone(), (prev.path.clone(), path.clone()));
                        continue;
                    }
                    this_dir.insert(name, def);
                }
            }
            for (name, def) in this_dir {
                // A later directory overrides an earlier one's device (and
                // its conflict); a conflict here makes the device unusable.
                match dir_conflicts.remove(&name) {
                    Some(c) => {
                        reg.devices.remove(&name);
                        reg.conflicts.insert(name, c);
                    }
                    None => {
                        reg.conflicts.remove(&name);
                        reg.devices.insert(name, def);
                    }
                }
            }
        }
        reg
    }

    /// The qualified names of every usable device.
    pub fn device_names(&self) -> Vec<String> {
        self.devices
            .keys()
            .filter(|n| !self.conflicts.contains_key(*n))
            .cloned()
            .collect()
    }

    /// The edits of the devices `names`, in order, with device nodes
    /// completed from the host (type, major, minor, mode of `hostPath`).
    /// An unknown, conflicting or unusable device is an error.
    pub fn resolve(&self, names: &[String]) -> Result<CdiEdits, CdiError> {
        let mut out = CdiEdits::default();
        // Spec-wide edits once per spec, however many of its devices.
        let mut seen_specs: Vec<PathBuf> = Vec::new();
        for name in names {
            if parse_name(name).is_none() {
                return Err(CdiError::BadName(name.clone()));
            }
            if let Some((first, second)) = self.conflicts.get(name) {
                return Err(CdiError::Conflict {
                    name: name.clone(),
                    first: first.clone(),
                    second: second.clone(),
                });
            }
            let Some(def) = self.devices.get(name) else {
                let mut dirs = self
                    .dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                if let Some((path, reason)) = self.broken.first() {
                    dirs.push_str(&format!(" (unusable spec {}: {reason})", path.display()));
                }
                return Err(CdiError::Unknown {
                    name: name.clone(),
                    dirs,
                });
            };
            let spec_wide = !seen_specs.contains(&def.path);
            if spec_wide {
                seen_specs.push(def.path.clone());
            }
            for (i, e) in def.edits.iter().enumerate() {
                if i == 0 && !spec_wide {
                    continue;
                }
                add_edits(&mut out, name, e)?;
            }
        }
        Ok(out)
    }
}

fn read_spec(path: &Path) -> Result<SpecFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    // JSON is YAML: one parser for both.
    let spec: SpecFile = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    if spec.cdi_version.is_empty() {
        return Err("cdiVersion is missing".to_string());
    }
    match spec.kind.split_once('/') {
        Some((v, c)) if !v.is_empty() && !c.is_empty() && !c.contains('/') => {}
        _ => return Err(format!("kind {:?} is not vendor.com/class", spec.kind)),
    }
    for d in &spec.devices {
        if parse_name(&format!("{}={}", spec.kind, d.name)).is_none() {
            return Err(format!("device name {:?} is invalid", d.name));
        }
    }
    Ok(spec)
}

fn add_edits(out: &mut CdiEdits, name: &str, e: &EditsFile) -> Result<(), CdiError> {
    let unsupported = |reason: &str| CdiError::Unsupported {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if !e.hooks.is_empty() {
        return Err(unsupported(
            "its spec has OCI hooks, which berth's runtime does not run; refusing a device that would be half set up",
        ));
    }
    if e.intel_rdt.is_some() {
        return Err(unsupported(
            "its spec sets intelRdt, which berth does not apply",
        ));
    }
    out.env.extend(e.env.iter().cloned());
    out.additional_gids
        .extend(e.additional_gids.iter().copied());
    for n in &e.device_nodes {
        out.device_nodes.push(device_node(name, n)?);
    }
    for m in &e.mounts {
        if !m.container_path.starts_with('/') || !m.host_path.starts_with('/') {
            return Err(CdiError::Spec {
                path: PathBuf::from(name),
                reason: format!(
                    "mount {:?} -> {:?}: both paths must be absolute",
                    m.host_path, m.container_path
                ),
            });
        }
        out.mounts.push(CdiMount {
            host_path: m.host_path.clone(),
            container_path: m.container_path.clone(),
            typ: if m.typ.is_empty() {
                "bind".to_string()
            } else {
                m.typ.clone()
            },
            options: m.options.clone(),
        });
    }
    Ok(())
}

/// A device node with what the spec left out filled from the host node
/// (`hostPath`, else `path`), as the Go library's `fillMissingInfo`.
fn device_node(name: &str, n: &NodeFile) -> Result<CdiDeviceNode, CdiError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let err = |path: &str, reason: String| CdiError::DeviceNode {
        name: name.to_string(),
        path: path.to_string(),
        reason,
    };
    if !n.path.starts_with('/') {
        return Err(err(&n.path, "the path must be absolute".to_string()));
    }
    let host = if n.host_path.is_empty() {
        n.path.clone()
    } else {
        n.host_path.clone()
    };
    let mut typ = n.typ.clone();
    let (mut major, mut minor, mut mode) = (n.major, n.minor, n.file_mode);
    // As the Go library: a node with its type and major needs no host node.
    if typ.is_empty() || (typ != "p" && major.is_none()) {
        let m = std::fs::metadata(&host).map_err(|e| err(&host, e.to_string()))?;
        let ft = m.file_type();
        let host_typ = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else if ft.is_fifo() {
            "p"
        } else {
            return Err(err(&host, "not a device node".to_string()));
        };
        if typ.is_empty() {
            typ = host_typ.to_string();
        } else if typ != host_typ && !(typ == "u" && host_typ == "c") {
            return Err(err(
                &host,
                format!("the spec says type {typ:?} but the host node is {host_typ:?}"),
            ));
        }
        let rdev = m.rdev();
        if major.is_none() {
            major = Some(nix::sys::stat::major(rdev) as i64);
            minor = Some(nix::sys::stat::minor(rdev) as i64);
        }
        mode = mode.or(Some(m.mode() & 0o7777));
    }
    if !matches!(typ.as_str(), "c" | "b" | "u" | "p") {
        return Err(err(&n.path, format!("unknown device type {typ:?}")));
    }
    let permissions = if n.permissions.is_empty() {
        "rwm".to_string()
    } else if n.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        n.permissions.clone()
    } else {
        return Err(err(
            &n.path,
            format!("permissions {:?} are not a subset of rwm", n.permissions),
        ));
    };
    Ok(CdiDeviceNode {
        path: n.path.clone(),
        typ,
        major: major.unwrap_or_default(),
        minor: minor.unwrap_or_default(),
        file_mode: mode,
        permissions,
        uid: n.uid,
        gid: n.gid,
    })
}

/// The CDI devices a container asks for: `CDI_devices`, then the names in
/// the `cdi.k8s.io/<key>` annotations (comma-separated), as containerd
/// reads them; duplicates dropped.
pub fn requested_devices(
    cdi_devices: &[String],
    annotations: &std::collections::HashMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<String> = cdi_devices.to_vec();
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with("cdi.k8s.io/"))
        .collect();
    keys.sort();
    for k in keys {
        out.extend(
            annotations[k]
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|n| seen.insert(n.clone()));
    out
}

#[cfg(test)]
mod tests;
