//! Mounting an overlayfs with any number of lower layers (Docker images
//! have up to 127): the classic `lowerdir=a:b:...` option string must fit
//! in one page (4096 bytes), which 40 layers under a long root already
//! exceed.
//!
//! - Kernels with `lowerdir+` (6.8 and later, new mount API): every layer is
//!   its own `fsconfig` call, so any number fits.
//! - Older kernels: mount(2) with the option string; when that is longer
//!   than a page, the layers are named by short relative paths (`0`, `1`,
//!   ...: symlinks in a temporary directory next to the target, as Docker's
//!   overlay2 `l/` links) and the mount is made from inside that directory,
//!   on a thread of its own whose working directory is unshared
//!   (`unshare(CLONE_FS)`), as containerd's `mountAt` does. containerd's
//!   own trick (the layers' common prefix as working directory) does not
//!   suffice for berth's layer names (64 hex digits each).
//!
//! berthd's image tests and the shim both mount through here.

use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::RuntimeError;
use super::idmap::OverlayLayers;
use super::mount_api::{self, FsContext};

/// The largest mount data the kernel takes (one page).
pub const MAX_MOUNT_DATA: usize = 4096;

/// The mount flags the new mount API can apply at `fsmount` time, with
/// their `MOUNT_ATTR_*` equivalents.
const ATTRS: [(MsFlags, u64); 6] = [
    (MsFlags::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
    (MsFlags::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
    (MsFlags::MS_NODEV, libc::MOUNT_ATTR_NODEV),
    (MsFlags::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
    (MsFlags::MS_NOATIME, libc::MOUNT_ATTR_NOATIME),
    (MsFlags::MS_NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
];

fn sys(context: String) -> impl FnOnce(Errno) -> RuntimeError {
    move |source| RuntimeError::Sys { context, source }
}

/// Mounts the overlay `layers` (lower dirs top-most first) at `target`
/// with mount `flags` (MS_RDONLY, MS_NOSUID, ...).
pub fn mount_overlay(
    layers: &OverlayLayers,
    flags: MsFlags,
    target: &Path,
) -> Result<(), RuntimeError> {
    if layers.lower.is_empty() {
        return Err(RuntimeError::InvalidSpec(
            "an overlay needs at least one lower dir".into(),
        ));
    }
    match mount_lowerdir_plus(layers, flags, target) {
        Ok(()) => Ok(()),
        // ENOSYS: no new mount API; EINVAL: no `lowerdir+` (before 6.8), or
        // a flag `fsmount` cannot take.
        Err(Fallback::Classic(e)) => {
            tracing::debug!(error = %e, "overlay: no lowerdir+, using mount(2)");
            mount_classic(layers, flags, target)
        }
        Err(Fallback::Failed(e)) => Err(e),
    }
}

enum Fallback {
    Classic(Errno),
    Failed(RuntimeError),
}

fn mount_lowerdir_plus(
    layers: &OverlayLayers,
    flags: MsFlags,
    target: &Path,
) -> Result<(), Fallback> {
    let mut attrs = 0u64;
    let mut rest = flags;
    for (flag, attr) in ATTRS {
        if flags.contains(flag) {
            attrs |= attr;
            rest.remove(flag);
        }
    }
    if !rest.is_empty() {
        return Err(Fallback::Classic(Errno::EINVAL));
    }
    let ctx = FsContext::open("overlay").map_err(Fallback::Classic)?;
    for (i, l) in layers.lower.iter().enumerate() {
        match ctx.set_string("lowerdir+", &l.to_string_lossy()) {
            Ok(()) => {}
            Err(e @ Errno::EINVAL) if i == 0 => return Err(Fallback::Classic(e)),
            Err(e) => {
                return Err(Fallback::Failed(RuntimeError::Sys {
                    context: format!("overlay lowerdir+ {}", l.display()),
                    source: e,
                }));
            }
        }
    }
    let failed = |what: String| {
        move |e| {
            Fallback::Failed(RuntimeError::Sys {
                context: what,
                source: e,
            })
        }
    };
    for (key, dir) in [("upperdir", &layers.upper), ("workdir", &layers.work)] {
        if let Some(d) = dir {
            ctx.set_string(key, &d.to_string_lossy())
                .map_err(failed(format!("overlay {key}={}", d.display())))?;
        }
    }
    for o in &layers.other {
        match o.split_once('=') {
            Some((k, v)) => ctx.set_string(k, v),
            None => ctx.set_flag(o),
        }
        .map_err(failed(format!("overlay option {o}")))?;
    }
    let mnt = match ctx.mount(attrs) {
        Ok(mnt) => mnt,
        // Before 6.5 overlayfs takes its options through the legacy parser,
        // which accepts any key and only refuses `lowerdir+` here, at create
        // (Debian 12's 6.1, found by the VM lane).
        Err(e @ Errno::EINVAL) => return Err(Fallback::Classic(e)),
        Err(e) => {
            return Err(failed(format!(
                "create the overlay for {}",
                target.display()
            ))(e));
        }
    };
    mount_api::attach(mnt.as_fd(), target).map_err(failed(format!(
        "attach the overlay at {}",
        target.display()
    )))
}

/// The classic option string with `lower` as the lower dirs.
fn option_string(layers: &OverlayLayers, lower: &[String]) -> String {
    let mut opts = vec![format!("lowerdir={}", lower.join(":"))];
    if let Some(u) = &layers.upper {
        opts.push(format!("upperdir={}", u.display()));
    }
    if let Some(w) = &layers.work {
        opts.push(format!("workdir={}", w.display()));
    }
    opts.extend(layers.other.iter().cloned());
    opts.join(",")
}

/// mount(2) of the overlay with the classic option string (short layer
/// names when it would be longer than a page). Also the idmapped overlay's
/// way on kernels without `lowerdir+`.
pub(crate) fn mount_classic(
    layers: &OverlayLayers,
    flags: MsFlags,
    target: &Path,
) -> Result<(), RuntimeError> {
    let lower: Vec<String> = layers
        .lower
        .iter()
        .map(|l| l.display().to_string())
        .collect();
    let data = option_string(layers, &lower);
    if data.len() < MAX_MOUNT_DATA {
        return nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            flags,
            Some(data.as_str()),
        )
        .map_err(sys(format!("mount overlay at {}", target.display())));
    }
    // Short names for the layers, relative to a directory of links.
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(RuntimeError::InvalidSpec(format!(
            "overlay target {} has no parent directory",
            target.display()
        )));
    };
    let links = parent.join(format!(".{}.lowers", name.to_string_lossy()));
    let _ = std::fs::remove_dir_all(&links);
    let io = |what: String| {
        move |source| RuntimeError::Io {
            context: what,
            source,
        }
    };
    std::fs::create_dir(&links).map_err(io(format!("create {}", links.display())))?;
    let result = (|| {
        let mut short = Vec::with_capacity(layers.lower.len());
        for (i, l) in layers.lower.iter().enumerate() {
            let n = i.to_string();
            std::os::unix::fs::symlink(l, links.join(&n)).map_err(io(format!(
                "link {} in {}",
                l.display(),
                links.display()
            )))?;
            short.push(n);
        }
        let data = option_string(layers, &short);
        if data.len() >= MAX_MOUNT_DATA {
            return Err(RuntimeError::InvalidSpec(format!(
                "overlay options are {} bytes even with short layer names, more than the kernel's {MAX_MOUNT_DATA}",
                data.len()
            )));
        }
        mount_in(&links, target, flags, &data)
    })();
    // overlayfs resolved the links at mount time: they can go.
    let _ = std::fs::remove_dir_all(&links);
    result
}

/// mount(2) of an overlay whose relative paths start at `dir`: on a thread
/// of its own with its own working directory, so that the rest of the
/// process keeps its own.
fn mount_in(dir: &Path, target: &Path, flags: MsFlags, data: &str) -> Result<(), RuntimeError> {
    let dir = dir.to_owned();
    let target = std::path::absolute(target).map_err(|source| RuntimeError::Io {
        context: format!("resolve {}", target.display()),
        source,
    })?;
    let data = data.to_owned();
    let worker = std::thread::Builder::new()
        .name("overlay-mount".into())
        .spawn(move || -> Result<(), RuntimeError> {
            // This thread's cwd only: never unlocked back into a pool, it
            // ends right after the mount.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                .map_err(sys("unshare(CLONE_FS)".into()))?;
            nix::unistd::chdir(&dir).map_err(sys(format!("chdir {}", dir.display())))?;
            nix::mount::mount(
                Some("overlay"),
                &target,
                Some("overlay"),
                flags,
                Some(data.as_str()),
            )
            .map_err(sys(format!("mount overlay at {}", target.display())))
        })
        .map_err(|source| RuntimeError::Io {
            context: "start the overlay mount thread".into(),
            source,
        })?;
    worker.join().unwrap_or_else(|_| {
        Err(RuntimeError::InvalidSpec(
            "the overlay mount thread panicked".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(n: usize, root: &Path) -> OverlayLayers {
        let mut l = OverlayLayers::default();
        for i in 0..n {
            // Long names, as berth's and containerd's snapshot paths are.
            let d = root.join(format!("{:0>64}", i));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("f{i}")), format!("{i}")).unwrap();
            l.lower.push(d);
        }
        l
    }

    fn check(target: &Path, n: usize) {
        for i in 0..n {
            assert_eq!(
                std::fs::read_to_string(target.join(format!("f{i}"))).unwrap(),
                i.to_string()
            );
        }
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }

    /// Needs root (the suite runs as root); skipped otherwise.
    #[test]
    fn many_layers_mount_both_ways() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut l = layers(127, &tmp.path().join("layers"));
        let up = tmp.path().join("upper");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&up).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        l.upper = Some(up);
        l.work = Some(work);
        let lower: Vec<String> = l.lower.iter().map(|p| p.display().to_string()).collect();
        assert!(option_string(&l, &lower).len() > MAX_MOUNT_DATA);
        let target = tmp.path().join("rootfs");
        std::fs::create_dir_all(&target).unwrap();
        mount_overlay(&l, MsFlags::empty(), &target).unwrap();
        std::fs::write(target.join("written"), "up").unwrap();
        check(&target, 127);
        // The older kernels' way, on this kernel.
        std::fs::remove_dir_all(l.work.as_ref().unwrap()).unwrap();
        std::fs::create_dir_all(l.work.as_ref().unwrap()).unwrap();
        mount_classic(&l, MsFlags::empty(), &target).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("written")).unwrap(),
            "up"
        );
        assert!(!tmp.path().join(".rootfs.lowers").exists());
        check(&target, 127);
        // Read-only through either way.
        mount_overlay(&l, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID, &target).unwrap();
        assert!(std::fs::write(target.join("x"), "x").is_err());
        check(&target, 127);
        mount_classic(&l, MsFlags::MS_RDONLY, &target).unwrap();
        assert!(std::fs::write(target.join("x"), "x").is_err());
        check(&target, 127);
    }
}
