//! Whether a Ready pod still is: its pinned namespaces must still be
//! namespaces (after a node reboot the state dir's pins are gone; an
//! unmounted pin is a plain file), and the init of its shared pid namespace
//! must still run. containerd answers NOTREADY when the sandbox's task is
//! gone; berth has no sandbox task, so it checks what the pod is made of.
//! A dead shim is noticed where its connection closes (`dead_shim.rs`).

use std::path::Path;

use crate::store::{PodRecord, PodState};

/// Whether `path` is a pinned namespace (an nsfs bind mount).
fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// What is gone of a Ready pod (None: nothing, or the pod is not Ready).
pub(crate) fn lost_part(pod: &PodRecord) -> Option<String> {
    if pod.state != PodState::Ready || pod.setting_up {
        return None;
    }
    for (kind, pin) in [
        ("network", &pod.netns),
        ("ipc", &pod.ipcns),
        ("uts", &pod.utsns),
        ("pid", &pod.pidns),
        ("user", &pod.userns),
    ] {
        if let Some(p) = pin
            && !is_namespace(p)
        {
            return Some(format!("its {kind} namespace pin {} is gone", p.display()));
        }
    }
    if let Some(pid) = pod.init_pid
        && !super::pod_init::is_alive(pid, &pod.id)
    {
        return Some(format!("the init of its pid namespace (pid {pid}) is gone"));
    }
    None
}

/// The state to report for `pod`: NotReady when part of it is gone.
pub(crate) fn checked_state(pod: &PodRecord) -> PodState {
    match lost_part(pod) {
        Some(what) => {
            tracing::warn!(pod = %pod.id, %what, "pod reported NOTREADY: it no longer exists as recorded");
            PodState::NotReady
        }
        None => pod.state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_whose_pins_are_gone_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        // A real namespace file (this process's own) stands for a pin.
        let real = std::path::PathBuf::from("/proc/self/ns/net");
        let mut pod = PodRecord {
            id: "p".into(),
            state: PodState::Ready,
            netns: Some(real.clone()),
            ipcns: Some(PathBuf::from("/proc/self/ns/ipc")),
            ..Default::default()
        };
        assert_eq!(lost_part(&pod), None);
        assert_eq!(checked_state(&pod), PodState::Ready);
        // After a reboot: the pin path does not exist.
        pod.utsns = Some(dir.path().join("utsns"));
        assert!(lost_part(&pod).unwrap().contains("uts"));
        assert_eq!(checked_state(&pod), PodState::NotReady);
        // An unmounted pin: a plain file left behind.
        std::fs::write(dir.path().join("utsns"), "").unwrap();
        assert_eq!(checked_state(&pod), PodState::NotReady);
        // A stopped pod stays what it is; a pod being set up is not judged.
        pod.state = PodState::NotReady;
        assert_eq!(lost_part(&pod), None);
        pod.state = PodState::Ready;
        pod.setting_up = true;
        assert_eq!(lost_part(&pod), None);
    }

    #[test]
    fn a_dead_pid_namespace_init_is_not_ready() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let pod = PodRecord {
            id: "p".into(),
            state: PodState::Ready,
            init_pid: Some(pid),
            ..Default::default()
        };
        assert!(lost_part(&pod).unwrap().contains("init"));
        // A live process that is not the pod's init (a reused pid) is not it.
        let reused = PodRecord {
            init_pid: Some(std::process::id() as i32),
            ..pod
        };
        assert!(lost_part(&reused).is_some());
    }

    use std::path::PathBuf;
}
