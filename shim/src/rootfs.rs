//! Mounting the rootfs containerd hands the shim (overlay or bind) at
//! `<bundle>/rootfs`, and taking it down again.
//!
//! The shim mounts in its own (the host's) mount namespace, directly, without
//! forking: the runtime's init helper later pivots into it.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use containerd_shim::protos::types::mount::Mount;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Result, ShimError};

/// The largest mount data the kernel takes in one page.
const MAX_MOUNT_DATA: usize = 4096;

/// Flags and filesystem data parsed from a containerd mount's options.
#[derive(Debug, PartialEq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Propagation to apply after the mount (MS_SHARED, MS_PRIVATE, ...).
    pub propagation: MsFlags,
    /// Options the kernel gets as filesystem data (`lowerdir=...`).
    pub data: String,
}

/// Splits containerd's mount options into mount(2) flags and filesystem data
/// with the runtime's parser (one parser for spec and rootfs mounts; as
/// containerd's and runc's, `defaults` adds and clears nothing).
pub fn parse_options(options: &[String]) -> MountOptions {
    let o = berth::runtime::mount_options::parse(options);
    let mut flags = o.flags;
    if o.bind {
        flags |= MsFlags::MS_BIND;
    }
    if o.recursive {
        flags |= MsFlags::MS_REC;
    }
    MountOptions {
        flags,
        propagation: o.propagation.iter().fold(MsFlags::empty(), |a, p| a | *p),
        data: o.data,
    }
}

/// Removes containerd's `uidmap=` / `gidmap=` options from `m`: containerd
/// 2.x's CRI adds them to a user-namespaced pod's overlay mounts for its
/// own mount package, which idmaps the lower layers with them; the kernel
/// knows no such overlay option. True if there were any.
fn take_idmap_options(m: &mut Mount) -> bool {
    let before = m.options.len();
    m.options
        .retain(|o| !o.starts_with("uidmap=") && !o.starts_with("gidmap="));
    m.options.len() != before
}

/// Mounts every mount of `mounts`, in order, at `target` (containerd's `mount.All`).
///
/// With `userns`, the mounts are idmapped with that user namespace: an
/// overlay's lower layers, or a bind mount's source. containerd's
/// `uidmap=`/`gidmap=` options ask for the same (the mappings of the pod's
/// user namespace, which is the spec's): they are taken off and honoured
/// through `userns`; without one they are refused.
pub fn mount_all(mounts: &[Mount], target: &Path, userns: Option<BorrowedFd<'_>>) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        let mut m = m.clone();
        let idmap_asked = take_idmap_options(&mut m);
        let res = match userns {
            Some(u) => mount_idmapped(&m, target, u),
            None if idmap_asked => Err(ShimError::InvalidArgument(format!(
                "the {} mount asks for idmapped layers (uidmap/gidmap) but the spec has no user namespace",
                m.type_
            ))),
            None => mount_one(&m, target),
        };
        if let Err(e) = res {
            // Leave nothing half-mounted behind.
            if i > 0 {
                unmount_all(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_idmapped(m: &Mount, target: &Path, userns: BorrowedFd<'_>) -> Result<()> {
    use berth::runtime::idmap;
    let opts = parse_options(&m.options);
    let what = format!(
        "idmapped {} mount of {} at {}",
        m.type_,
        m.source,
        target.display()
    );
    match m.type_.as_str() {
        "overlay" => {
            let layers = idmap::parse_overlay(&opts.data);
            idmap::mount_idmapped_overlay(&layers, userns, target)
                .map_err(|e| ShimError::InvalidArgument(format!("{what}: {e}")))?;
        }
        "bind" | "rbind" => {
            let recursive = m.type_ == "rbind" || opts.flags.contains(MsFlags::MS_REC);
            let tree = idmap::idmapped_tree(Path::new(&m.source), recursive, userns)
                .map_err(|e| ShimError::InvalidArgument(format!("{what}: {e}")))?;
            idmap::attach(tree.as_fd(), target)
                .map_err(|e| ShimError::InvalidArgument(format!("{what}: {e}")))?;
        }
        other => {
            return Err(ShimError::InvalidArgument(format!(
                "a {other} rootfs mount cannot be idmapped for a user namespace"
            )));
        }
    }
    let extra = opts.flags & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
    if !extra.is_empty() {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            extra | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(ShimError::sys(format!("remount {}", target.display())))?;
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let opts = parse_options(&m.options);
    if m.type_ == "overlay" && !opts.flags.contains(MsFlags::MS_REMOUNT) {
        // Any number of layers: `lowerdir+`, else short relative names.
        let layers = berth::runtime::idmap::parse_overlay(&opts.data);
        berth::runtime::overlay::mount_overlay(&layers, opts.flags, target).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "mount overlay at {} ({} lower dirs): {e}",
                target.display(),
                layers.lower.len()
            ))
        })?;
        return set_propagation(&opts, target);
    }
    if opts.data.len() >= MAX_MOUNT_DATA {
        return Err(ShimError::InvalidArgument(format!(
            "{} mount options are {} bytes, more than the kernel's {MAX_MOUNT_DATA}",
            m.type_,
            opts.data.len()
        )));
    }
    let fstype = match m.type_.as_str() {
        "" | "bind" | "rbind" => None,
        t => Some(t),
    };
    let mut flags = opts.flags;
    if m.type_ == "bind" || m.type_ == "rbind" {
        flags |= MsFlags::MS_BIND;
    }
    let source = (!m.source.is_empty()).then_some(m.source.as_str());
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    nix::mount::mount(
        source,
        target,
        fstype,
        flags & !MsFlags::MS_RDONLY | base_ro(flags),
        data,
    )
    .map_err(ShimError::sys(format!(
        "mount {} {} at {}",
        m.type_,
        m.source,
        target.display()
    )))?;
    // A bind mount ignores MS_RDONLY on the first call: remount to apply it.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(ShimError::sys(format!(
            "remount {} read-only",
            target.display()
        )))?;
    }
    set_propagation(&opts, target)
}

fn set_propagation(opts: &MountOptions, target: &Path) -> Result<()> {
    if !opts.propagation.is_empty() {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(ShimError::sys(format!(
            "set propagation of {}",
            target.display()
        )))?;
    }
    Ok(())
}

/// MS_RDONLY applies on the first mount call except for bind mounts.
fn base_ro(flags: MsFlags) -> MsFlags {
    if flags.contains(MsFlags::MS_BIND) {
        MsFlags::empty()
    } else {
        flags & MsFlags::MS_RDONLY
    }
}

/// Unmounts everything stacked at `target`. Best effort: failures are logged.
pub fn unmount_all(target: &Path) {
    // Bounded: a target never holds more than a few stacked mounts.
    for _ in 0..64 {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return,
            Err(Errno::EBUSY) => {
                if let Err(e) = nix::mount::umount2(target, MntFlags::MNT_DETACH) {
                    tracing::warn!(target = %target.display(), error = %e, "lazy unmount failed");
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "unmount failed");
                return;
            }
        }
    }
}

/// Detaches the mounts at `target` at once and lets their last reference go
/// on a background thread. Releasing an overlay with an upper layer syncs the
/// whole upper filesystem (syncfs of the host's disk), which on a busy disk
/// takes tens of milliseconds: it need not hold up Delete. The sync still
/// happens, right after, and before the shim process can exit.
pub fn detach_all(target: &Path) {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let mut held = Vec::new();
    // Bounded: a target never holds more than a few stacked mounts.
    for _ in 0..64 {
        // A reference to the top mount, so that detaching it does not
        // release it yet.
        let Ok(fd) = nix::fcntl::open(
            target,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            break;
        };
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => held.push(fd),
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "unmount failed");
                break;
            }
        }
    }
    if held.is_empty() {
        return;
    }
    // If no thread can be started, the release happens here instead.
    let _ = std::thread::Builder::new()
        .name("unmount".into())
        .stack_size(64 * 1024)
        .spawn(move || drop(held));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn containerd_idmap_options_are_taken_off() {
        let mut m = Mount {
            type_: "overlay".into(),
            options: s(&[
                "index=off",
                "lowerdir=/l1:/l2",
                "uidmap=0:100000:65536",
                "gidmap=0:100000:65536",
            ]),
            ..Default::default()
        };
        assert!(take_idmap_options(&mut m));
        assert_eq!(m.options, s(&["index=off", "lowerdir=/l1:/l2"]));
        assert!(!take_idmap_options(&mut m));
        let err = mount_all(
            &[Mount {
                type_: "overlay".into(),
                options: s(&["lowerdir=/nonexistent", "uidmap=0:1:1"]),
                ..Default::default()
            }],
            Path::new("/nonexistent-target"),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no user namespace"), "{err}");
    }

    #[test]
    fn overlay_options_become_data() {
        let o = parse_options(&s(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l1:/l2",
        ]));
        assert_eq!(o.flags, MsFlags::empty());
        assert_eq!(o.data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
    }

    #[test]
    fn bind_options_become_flags() {
        let o = parse_options(&s(&["rbind", "ro", "nosuid", "rprivate"]));
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(o.data.is_empty());
    }

    #[test]
    fn defaults_keeps_what_came_before() {
        // containerd's and runc's `defaults` is no flag at all: it must not
        // make an earlier `ro` writable (the shim's own parser cleared it).
        let o = parse_options(&s(&["ro", "defaults"]));
        assert_eq!(o.flags, MsFlags::MS_RDONLY);
        assert!(o.data.is_empty());
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let o = parse_options(&s(&["ro", "rw", "nodev", "dev"]));
        assert_eq!(o.flags, MsFlags::empty());
    }

    #[test]
    fn read_only_is_deferred_for_bind_mounts() {
        assert_eq!(
            base_ro(MsFlags::MS_BIND | MsFlags::MS_RDONLY),
            MsFlags::empty()
        );
        assert_eq!(base_ro(MsFlags::MS_RDONLY), MsFlags::MS_RDONLY);
    }
}
