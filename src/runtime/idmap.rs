//! User namespaces and idmapped mounts: a user namespace made from uid/gid
//! mappings, idmapped (detached) copies of a directory tree, an overlay
//! whose lower layers are idmapped (so image layers are shared unchanged
//! between user-namespaced pods, never chowned), recursive read-only
//! mounts, and the kernel probes for both features.
//!
//! Idmapped mounts must be made by a process in the host's user namespace
//! (the filesystems belong to it): the shim makes the rootfs overlay, the
//! init helper makes the idmapped bind mounts before it joins the
//! container's user namespace, and the container init attaches them.

use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

use super::mount_api::{self, FsContext, MountAttr};
use super::sys;

/// A failure with its context ("idmap /var/lib/x: EINVAL").
pub type IdmapResult<T> = Result<T, String>;

/// uid and gid mappings as `/proc/<pid>/uid_map` wants them.
pub fn map_text(maps: &[LinuxIdMapping]) -> String {
    let mut s = String::new();
    for m in maps {
        let _ = writeln!(s, "{} {} {}", m.container_id(), m.host_id(), m.size());
    }
    s
}

pub use super::sys::UsernsChild;

/// Forks a child in a new user namespace that, once its maps are written
/// and [`UsernsChild::proceed`] is called, unshares `then_flags` (namespaces
/// owned by the new user namespace) and sets `hostname` (if not empty).
/// Safe to call from a multi-threaded process.
pub fn userns_child(then_flags: libc::c_int, hostname: &str) -> IdmapResult<UsernsChild> {
    sys::spawn_userns_child(then_flags, hostname.as_bytes())
        .map_err(|e| format!("create a user namespace: {e}"))
}

/// A user namespace with the given mappings, held by a child process until
/// its fd is opened. The fd keeps the namespace alive.
pub fn userns_from_mappings(
    uid: &[LinuxIdMapping],
    gid: &[LinuxIdMapping],
) -> IdmapResult<OwnedFd> {
    if uid.is_empty() || gid.is_empty() {
        return Err("a user namespace needs uid and gid mappings".into());
    }
    let child =
        sys::spawn_userns_child(0, &[]).map_err(|e| format!("create a user namespace: {e}"))?;
    write_maps(child.pid, &map_text(uid), &map_text(gid))?;
    let fd = open_ns(&format!("/proc/{}/ns/user", child.pid))?;
    drop(child);
    Ok(fd)
}

/// Writes the uid and gid maps of process `pid` (in a new user namespace).
pub fn write_maps(pid: i32, uid: &str, gid: &str) -> IdmapResult<()> {
    for (file, data) in [("uid_map", uid), ("gid_map", gid)] {
        std::fs::write(format!("/proc/{pid}/{file}"), data)
            .map_err(|e| format!("write {file} {:?}: {e}", data.trim()))?;
    }
    Ok(())
}

fn open_ns(path: &str) -> IdmapResult<OwnedFd> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("open {path}: {e}"))
}

/// The user namespace the container of `spec` runs in, as an fd for
/// idmapping: the one it joins by path, or a new one made from its
/// mappings. None when the container has no user namespace.
pub fn spec_userns(spec: &Spec) -> IdmapResult<Option<OwnedFd>> {
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(None);
    };
    let Some(ns) = linux
        .namespaces()
        .iter()
        .flatten()
        .find(|n| n.typ() == LinuxNamespaceType::User)
    else {
        return Ok(None);
    };
    match ns.path() {
        Some(p) if !p.as_os_str().is_empty() => open_ns(&p.to_string_lossy()).map(Some),
        _ => userns_from_mappings(
            linux.uid_mappings().as_deref().unwrap_or(&[]),
            linux.gid_mappings().as_deref().unwrap_or(&[]),
        )
        .map(Some),
    }
}

/// A detached, idmapped copy of the tree at `src` (recursive with `recursive`).
pub fn idmapped_tree(src: &Path, recursive: bool, userns: BorrowedFd<'_>) -> IdmapResult<OwnedFd> {
    let tree = mount_api::clone_tree(src, recursive)
        .map_err(|e| format!("open_tree {}: {e}", src.display()))?;
    mount_api::setattr_fd(
        tree.as_fd(),
        recursive,
        MountAttr {
            set: libc::MOUNT_ATTR_IDMAP,
            userns: Some(userns.as_raw_fd()),
            ..Default::default()
        },
    )
    .map_err(|e| format!("idmap {}: {e}", src.display()))?;
    Ok(tree)
}

/// The parts of an overlay mount.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OverlayLayers {
    /// Lower dirs, top-most first.
    pub lower: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// Every other option (`index=off`, `volatile`, ...).
    pub other: Vec<String>,
}

/// Splits overlay mount data (`lowerdir=a:b,upperdir=u,workdir=w,...`).
pub fn parse_overlay(data: &str) -> OverlayLayers {
    let mut out = OverlayLayers::default();
    for opt in data.split(',').filter(|o| !o.is_empty()) {
        if let Some(l) = opt.strip_prefix("lowerdir=") {
            out.lower
                .extend(l.split(':').filter(|p| !p.is_empty()).map(PathBuf::from));
        } else if let Some(u) = opt.strip_prefix("upperdir=") {
            out.upper = Some(PathBuf::from(u));
        } else if let Some(w) = opt.strip_prefix("workdir=") {
            out.work = Some(PathBuf::from(w));
        } else {
            out.other.push(opt.to_owned());
        }
    }
    out
}

/// Mounts an overlay at `target` whose lower layers are idmapped copies of
/// `layers.lower`, so that files owned by uid 0 in the shared layers appear
/// owned by the user namespace's root, and the upper dir gets files owned
/// by the mapped ids. The layers themselves are not changed.
///
/// - Kernels with `lowerdir+` (6.8 and later): the idmapped layers are
///   handed to overlayfs as file descriptors, never attached anywhere.
/// - Older ones (overlayfs takes idmapped layers since 5.19; Debian 12 has
///   6.1): each idmapped layer is attached at a directory of its own next to
///   `target`, the overlay is mounted with the classic `lowerdir=` option
///   string naming them (`overlay::mount_classic`, which also copes with
///   more layers than a page holds), and the layer mounts are detached again
///   (overlayfs holds its own clones), as containerd's
///   `doPrepareIDMappedOverlay` does.
pub fn mount_idmapped_overlay(
    layers: &OverlayLayers,
    userns: BorrowedFd<'_>,
    target: &Path,
) -> IdmapResult<()> {
    if layers.lower.is_empty() {
        return Err("an overlay needs at least one lower dir".into());
    }
    match mount_idmapped_lowerdir_plus(layers, userns, target) {
        Ok(()) => Ok(()),
        Err(Fallback::Classic(e)) => {
            tracing::debug!(error = %e, "idmapped overlay: no lowerdir+, using attached layers");
            mount_idmapped_classic(layers, userns, target)
        }
        Err(Fallback::Failed(e)) => Err(e),
    }
}

enum Fallback {
    /// The kernel has no `lowerdir+` (or no new mount API).
    Classic(nix::errno::Errno),
    Failed(String),
}

/// Whether `e` from fsopen / the first `lowerdir+` / create means "no
/// `lowerdir+` here": ENOSYS (no new mount API), EINVAL (the legacy parser
/// before 6.5 takes no fd values, and refuses unknown keys only at create;
/// 6.5-6.7 refuse the key), EOPNOTSUPP.
fn no_lowerdir_plus(e: nix::errno::Errno) -> bool {
    use nix::errno::Errno;
    matches!(e, Errno::ENOSYS | Errno::EINVAL | Errno::EOPNOTSUPP)
}

fn mount_idmapped_lowerdir_plus(
    layers: &OverlayLayers,
    userns: BorrowedFd<'_>,
    target: &Path,
) -> Result<(), Fallback> {
    let ctx = FsContext::open("overlay").map_err(Fallback::Classic)?;
    // The detached layers must stay open until the overlay is created:
    // closing one unmounts it, and overlayfs clones them only then.
    let mut trees = Vec::with_capacity(layers.lower.len());
    for (i, l) in layers.lower.iter().enumerate() {
        let tree = idmapped_tree(l, false, userns).map_err(Fallback::Failed)?;
        match ctx.set_fd("lowerdir+", tree.as_fd()) {
            Ok(()) => {}
            Err(e) if i == 0 && no_lowerdir_plus(e) => return Err(Fallback::Classic(e)),
            Err(e) => {
                return Err(Fallback::Failed(format!(
                    "overlay lowerdir+ {}: {e}",
                    l.display()
                )));
            }
        }
        trees.push(tree);
    }
    for (key, dir) in [("upperdir", &layers.upper), ("workdir", &layers.work)] {
        if let Some(d) = dir {
            ctx.set_string(key, &d.to_string_lossy())
                .map_err(|e| Fallback::Failed(format!("overlay {key}={}: {e}", d.display())))?;
        }
    }
    for o in &layers.other {
        let r = match o.split_once('=') {
            Some((k, v)) => ctx.set_string(k, v),
            None => ctx.set_flag(o),
        };
        r.map_err(|e| Fallback::Failed(format!("overlay option {o}: {e}")))?;
    }
    let mnt = match ctx.mount(0) {
        Ok(m) => m,
        Err(e) if no_lowerdir_plus(e) => return Err(Fallback::Classic(e)),
        Err(e) => return Err(Fallback::Failed(format!("create overlay: {e}"))),
    };
    drop(trees);
    mount_api::attach(mnt.as_fd(), target)
        .map_err(|e| Fallback::Failed(format!("attach overlay at {}: {e}", target.display())))
}

fn mount_idmapped_classic(
    layers: &OverlayLayers,
    userns: BorrowedFd<'_>,
    target: &Path,
) -> IdmapResult<()> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(format!(
            "overlay target {} has no parent directory",
            target.display()
        ));
    };
    let dir = parent.join(format!(".{}.idmapped", name.to_string_lossy()));
    remove_layer_dirs(&dir);
    std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut attached: Vec<PathBuf> = Vec::with_capacity(layers.lower.len());
    let result = (|| {
        let mut mapped = layers.clone();
        mapped.lower.clear();
        for (i, l) in layers.lower.iter().enumerate() {
            let at = dir.join(i.to_string());
            std::fs::create_dir(&at).map_err(|e| format!("create {}: {e}", at.display()))?;
            let tree = idmapped_tree(l, false, userns)?;
            mount_api::attach(tree.as_fd(), &at).map_err(|e| {
                format!(
                    "attach the idmapped {} at {}: {e}",
                    l.display(),
                    at.display()
                )
            })?;
            attached.push(at.clone());
            mapped.lower.push(at);
        }
        super::overlay::mount_classic(&mapped, nix::mount::MsFlags::empty(), target)
            .map_err(|e| e.to_string())
    })();
    for at in attached.iter().rev() {
        if let Err(e) = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %at.display(), error = %e, "unmount an idmapped layer");
        }
    }
    remove_layer_dirs(&dir);
    result
}

/// Removes the directories the idmapped layers were attached at: never
/// recursively (a layer still attached there is an image layer), each one
/// unmounted first in case an earlier attempt left it mounted.
fn remove_layer_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&p);
    }
    let _ = std::fs::remove_dir(dir);
}

/// Attaches the detached mount `tree` at `target`.
pub fn attach(tree: BorrowedFd<'_>, target: &Path) -> IdmapResult<()> {
    mount_api::attach(tree, target).map_err(|e| format!("move_mount to {}: {e}", target.display()))
}

/// Attaches the detached mount `tree` on what `target` (an O_PATH fd) is open on.
pub fn attach_at(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> IdmapResult<()> {
    mount_api::attach_at(tree, target).map_err(|e| format!("move_mount: {e}"))
}

/// Makes the mount at `path` and every mount below it read-only
/// (mount_setattr MOUNT_ATTR_RDONLY with AT_RECURSIVE).
pub fn make_recursive_readonly(path: &Path) -> IdmapResult<()> {
    mount_api::setattr_path(
        path,
        true,
        MountAttr {
            set: libc::MOUNT_ATTR_RDONLY,
            ..Default::default()
        },
    )
    .map_err(|e| format!("make {} recursively read-only: {e}", path.display()))
}

/// Probe: can this kernel make a user namespace and an idmapped mount of
/// `dir` (on the filesystem the snapshots and volumes live on)?
pub fn probe_idmapped_mounts(dir: &Path) -> IdmapResult<()> {
    let one = |id: u32| {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(id)
            .size(1u32)
            .build()
            .map_err(|e| e.to_string())
    };
    let m = one(65534)?;
    let userns = userns_from_mappings(std::slice::from_ref(&m), std::slice::from_ref(&m))?;
    let tree = idmapped_tree(dir, false, userns.as_fd())?;
    drop(tree);
    Ok(())
}

/// Probe: does this kernel make recursive read-only mounts? Tried on a
/// detached copy of `dir`, which vanishes with its fd.
pub fn probe_recursive_readonly(dir: &Path) -> IdmapResult<()> {
    let tree = mount_api::clone_tree(dir, true)
        .map_err(|e| format!("open_tree {}: {e}", dir.display()))?;
    mount_api::setattr_fd(
        tree.as_fd(),
        true,
        MountAttr {
            set: libc::MOUNT_ATTR_RDONLY,
            ..Default::default()
        },
    )
    .map_err(|e| format!("mount_setattr RDONLY|AT_RECURSIVE: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_data_is_split() {
        let l = parse_overlay("index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w,volatile");
        assert_eq!(l.lower, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(l.upper, Some(PathBuf::from("/u")));
        assert_eq!(l.work, Some(PathBuf::from("/w")));
        assert_eq!(
            l.other,
            vec!["index=off".to_string(), "volatile".to_string()]
        );
    }

    #[test]
    fn maps_are_one_line_each() {
        let m = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100000u32)
            .size(65536u32)
            .build()
            .unwrap();
        assert_eq!(map_text(&[m, m]), "0 100000 65536\n0 100000 65536\n");
    }
}
