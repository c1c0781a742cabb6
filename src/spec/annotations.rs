//! The annotations containerd's CRI plugin puts on a container's spec, so
//! tools that read them (NRI plugins, monitoring) see the same keys.

use std::collections::HashMap;

use k8s_cri::v1::PodSandboxConfig;

/// `container` for containers (`sandbox` for pods).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The pod's id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The pod's name.
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// The pod's Kubernetes namespace.
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// The pod's uid.
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// The container's name.
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// The image the container runs.
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// The container's annotations: the CRI's, then the CRI plugin's own keys
/// (which the CRI annotations cannot override).
pub fn container_annotations(
    cri: &HashMap<String, String>,
    sandbox_id: &str,
    sandbox: &PodSandboxConfig,
    container_name: &str,
    image_name: &str,
) -> HashMap<String, String> {
    let mut out = cri.clone();
    let meta = sandbox.metadata.clone().unwrap_or_default();
    for (k, v) in [
        (CONTAINER_TYPE, "container"),
        (SANDBOX_ID, sandbox_id),
        (SANDBOX_NAME, meta.name.as_str()),
        (SANDBOX_NAMESPACE, meta.namespace.as_str()),
        (SANDBOX_UID, meta.uid.as_str()),
        (CONTAINER_NAME, container_name),
        (IMAGE_NAME, image_name),
    ] {
        out.insert(k.to_string(), v.to_string());
    }
    out
}
