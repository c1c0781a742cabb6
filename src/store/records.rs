//! The records kept per pod and per container.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A pod's lifecycle state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    #[default]
    Ready,
    NotReady,
}

/// Everything berthd remembers about a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodRecord {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub state: PodState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// The CRI `PodSandboxConfig`, protobuf-encoded.
    pub config: Vec<u8>,
    /// The pod's directory under the state dir (pins, files, shm).
    pub dir: PathBuf,
    /// Pinned namespaces; `None` where the pod uses the host's.
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    pub pidns: Option<PathBuf>,
    /// The pod's user namespace (CRI userns_options mode POD); its net, ipc
    /// and uts namespaces are then owned by it.
    pub userns: Option<PathBuf>,
    /// Host pid of the pod's init (pid 1 of its shared pid namespace).
    pub init_pid: Option<i32>,
    /// The pod cgroup (relative to the cgroup roots), if any.
    pub cgroup: Option<String>,
    /// Whether the pod network was set up (and must be torn down).
    pub network: bool,
    pub ips: Vec<String>,
    /// The ttrpc address of the pod's shim, once one was started.
    pub shim_address: Option<String>,
    /// RunPodSandbox has not finished: a pod still marked so when berthd
    /// starts was cut off by a crash and is removed.
    pub setting_up: bool,
    /// The CRI runtime handler the pod was run with, as kubelet named it
    /// ("" for the default handler).
    pub runtime_handler: String,
}

/// A container's lifecycle state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    #[default]
    Created,
    Running,
    Exited,
    Unknown,
}

/// Everything berthd remembers about a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: ContainerState,
    /// The image as the CRI request named it.
    pub image: String,
    /// The image id (config digest).
    pub image_id: String,
    /// A repo digest of the image, if it has one, else its id.
    pub image_ref: String,
    /// Nanoseconds since the epoch; 0 when not reached.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: u32,
    pub log_path: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// The CRI `ContainerConfig`, protobuf-encoded.
    pub config: Vec<u8>,
    /// The OCI bundle directory (config.json, rootfs).
    pub bundle: PathBuf,
    /// The container's cgroup (relative to the cgroup roots), if any.
    pub cgroup: Option<String>,
    /// The writable layer (overlay upper dir).
    pub upper_dir: Option<PathBuf>,
    /// The image's `StopSignal` (empty: SIGTERM).
    pub stop_signal: String,
    /// The pod's image volumes this container mounts (their directory
    /// names under the pod's `image-volumes/`).
    pub image_volumes: Vec<String>,
}
