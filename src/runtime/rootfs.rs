//! The container's filesystem, set up by the container init in its new
//! mount namespace: root propagation, the rootfs as a mount point, spec
//! mounts, default devices and /dev symlinks, `pivot_root`, masked and
//! read-only paths, read-only root.
//!
//! Every destination is resolved inside the rootfs ([`super::path`]) and
//! mounted through `/proc/self/fd/N`, so symlinks in a destination never
//! lead out of the rootfs.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::FsFlags;
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

use super::idmap;
use super::mount_options::{self, MountOptions};
use super::path::{self, Kind, ensure_in_root, open_in_root, proc_fd_path};

/// A failure with the context a person needs ("mount proc on /proc: EPERM").
pub type SetupResult<T> = Result<T, String>;

/// What the rootfs set-up needs besides the spec.
pub struct RootfsContext<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// The container runs in a new or joined user namespace: devices are bind
    /// mounted from the host instead of created with mknod.
    pub userns: bool,
    /// The helper's `/proc/self/cgroup` (the container's cgroups).
    pub cgroup_file: &'a str,
    /// Per spec mount (same index): a detached tree the helper made before
    /// it joined the user namespace, attached instead of a bind: idmapped
    /// for a bind mount with uid/gid mappings, a plain copy of the source
    /// for any other bind mount of a container in a user namespace.
    pub idmapped: &'a [Option<OwnedFd>],
}

fn sys<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> SetupResult<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

fn do_mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    mount(source, target, fstype, flags, data)
}

/// Everything before `pivot_root`.
pub fn prepare(ctx: &RootfsContext<'_>) -> SetupResult<()> {
    let linux = ctx.spec.linux().as_ref();
    let prop = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => mount_options::propagation(p)
            .ok_or_else(|| format!("invalid rootfsPropagation {p:?}"))?,
    };
    sys(do_mount(None, Path::new("/"), None, prop, None), || {
        "set propagation of /".into()
    })?;
    // As runc's prepareRoot: the rootfs's own mount (or, when the rootfs is
    // no mount point, the mount it sits on) becomes private, whatever the
    // root propagation. pivot_root refuses a new root whose parent mount is
    // shared, and with rshared (a Bidirectional mount) every mount here is;
    // private also keeps the bind below from propagating to the host.
    make_rootfs_mount_private(ctx.rootfs)?;
    let root_str = ctx.rootfs.to_string_lossy();
    sys(
        do_mount(
            Some(&root_str),
            ctx.rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
        || format!("bind mount rootfs {} on itself", ctx.rootfs.display()),
    )?;
    let root = sys(
        nix::fcntl::open(
            ctx.rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open rootfs {}", ctx.rootfs.display()),
    )?;
    for (i, m) in ctx.spec.mounts().iter().flatten().enumerate() {
        let idmapped = ctx.idmapped.get(i).and_then(|t| t.as_ref());
        mount_entry(root.as_fd(), m, idmapped, ctx)?;
    }
    create_devices(root.as_fd(), ctx)?;
    dev_symlinks(root.as_fd())?;
    // The process' cwd must exist (runc creates it too).
    if let Some(cwd) = ctx.spec.process().as_ref().map(|p| p.cwd()) {
        ensure_in_root(root.as_fd(), cwd, Kind::Dir).map_err(|e| format!("process cwd: {e}"))?;
    }
    Ok(())
}

/// runc's rootfsParentMountPrivate: MS_PRIVATE on `rootfs`, else on the
/// nearest mount point above it (EINVAL: not a mount point, go up).
fn make_rootfs_mount_private(rootfs: &Path) -> SetupResult<()> {
    let mut path = rootfs;
    loop {
        match do_mount(None, path, None, MsFlags::MS_PRIVATE, None) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) if path != Path::new("/") => {
                path = path.parent().unwrap_or(Path::new("/"));
            }
            Err(e) => {
                return Err(format!(
                    "make the mount of rootfs {} private (at {}): {e}",
                    rootfs.display(),
                    path.display()
                ));
            }
        }
    }
}

fn unescape_mountinfo(s: &str) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Flags of the mount at `target` that a bind remount must keep (in a user
/// namespace the kernel refuses to drop locked ones).
fn kept_flags(target: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(target) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Bind-remounts `target` with `flags` added to what it has.
fn remount_bind(target: &Path, flags: MsFlags, what: &str) -> SetupResult<()> {
    let all = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    match do_mount(None, target, None, all, None) {
        Ok(()) => Ok(()),
        Err(Errno::EPERM) => sys(
            do_mount(None, target, None, all | kept_flags(target), None),
            || format!("remount {what} with {flags:?}"),
        ),
        Err(e) => sys(Err(e), || format!("remount {what} with {flags:?}")),
    }
}

fn mount_entry(
    root: BorrowedFd<'_>,
    m: &Mount,
    idmapped: Option<&OwnedFd>,
    ctx: &RootfsContext<'_>,
) -> SetupResult<()> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(format!(
            "mount destination {} is not absolute",
            dest.display()
        ));
    }
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = mount_options::parse(m.options().as_deref().unwrap_or(&[]));
    let bind = opts.bind || typ == "bind";
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(root, m, &opts, ctx);
    }
    let what = format!(
        "mount {} on {}",
        if bind { "bind" } else { typ },
        dest.display()
    );
    if bind {
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| format!("{what}: bind mount without a source"))?;
        // A detached tree tells what it is (its source may be out of the
        // reach of a user-namespaced process: see `RootfsContext::idmapped`).
        let is_dir = match idmapped {
            Some(tree) => nix::sys::stat::fstat(tree.as_fd())
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .unwrap_or(true),
            None => std::fs::metadata(src).map(|m| m.is_dir()).unwrap_or(true),
        };
        let kind = if is_dir { Kind::Dir } else { Kind::File };
        let target = ensure_in_root(root, dest, kind).map_err(|e| format!("{what}: {e}"))?;
        if let Some(tree) = idmapped {
            idmap::attach_at(tree.as_fd(), target.as_fd())
                .map_err(|e| format!("{what} (detached tree of {}): {e}", src.display()))?;
        } else {
            let mut flags = MsFlags::MS_BIND;
            if opts.recursive {
                flags |= MsFlags::MS_REC;
            }
            sys(
                do_mount(
                    Some(&src.to_string_lossy()),
                    &proc_fd_path(&target),
                    None,
                    flags,
                    None,
                ),
                || format!("{what} (from {})", src.display()),
            )?;
        }
        // Reopen: the fd still points at the covered directory.
        let mounted = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
        let extra = opts.flags - MsFlags::MS_REMOUNT;
        if !extra.is_empty() {
            remount_bind(&proc_fd_path(&mounted), extra, &what)?;
        }
        if opts.recursive_readonly {
            idmap::make_recursive_readonly(&proc_fd_path(&mounted))
                .map_err(|e| format!("{what}: {e}"))?;
        }
        apply_propagation(&mounted, &opts, &what)?;
        return Ok(());
    }
    let target = ensure_in_root(root, dest, Kind::Dir).map_err(|e| format!("{what}: {e}"))?;
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| typ.to_owned());
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let res = do_mount(
        Some(&source),
        &proc_fd_path(&target),
        Some(typ),
        opts.flags,
        data,
    );
    match res {
        Ok(()) => {}
        Err(Errno::EPERM) if typ == "sysfs" && ctx.userns => {
            // A user namespace without its own network namespace may not
            // mount sysfs; bind the host's read-only instead (as runc does).
            sys(
                do_mount(
                    Some("/sys"),
                    &proc_fd_path(&target),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                ),
                || format!("{what} (rbind of /sys)"),
            )?;
            let mounted = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
            remount_bind(
                &proc_fd_path(&mounted),
                opts.flags | MsFlags::MS_RDONLY,
                &what,
            )?;
        }
        Err(e) => return sys(Err(e), || format!("{what} (options {data:?})")),
    }
    let mounted = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
    apply_propagation(&mounted, &opts, &what)
}

fn apply_propagation(target: &OwnedFd, opts: &MountOptions, what: &str) -> SetupResult<()> {
    for p in &opts.propagation {
        sys(
            do_mount(None, &proc_fd_path(target), None, *p, None),
            || format!("{what}: set propagation {p:?}"),
        )?;
    }
    Ok(())
}

/// A cgroup hierarchy mounted on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// The root of the hierarchy that is mounted there.
    pub root: String,
    /// v1 controllers (and `name=`) from the super options; empty for v2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The cgroup hierarchies of a mountinfo text.
pub fn cgroup_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let v2 = match r[0] {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        let controllers = if v2 {
            vec![]
        } else {
            r[2].split(',')
                .filter(|o| {
                    !matches!(
                        *o,
                        "rw" | "ro"
                            | "nosuid"
                            | "nodev"
                            | "noexec"
                            | "relatime"
                            | "xattr"
                            | "clone_children"
                            | "noprefix"
                            | "cpuset_v2_mode"
                            | "favordynmods"
                    ) && !o.starts_with("release_agent=")
                })
                .map(str::to_owned)
                .collect()
        };
        out.push(Hierarchy {
            mount_point: unescape_mountinfo(l[4]),
            root: l[3].to_owned(),
            controllers,
            v2,
        });
    }
    out
}

/// The cgroup path of a hierarchy in a `/proc/<pid>/cgroup` text.
pub fn cgroup_path_for(cgroup_file: &str, h: &Hierarchy) -> Option<String> {
    for line in cgroup_file.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let matches = if h.v2 {
            ctrls.is_empty()
        } else {
            !ctrls.is_empty()
                && ctrls
                    .split(',')
                    .all(|c| h.controllers.iter().any(|x| x == c))
                && h.controllers.len() == ctrls.split(',').count()
        };
        if matches {
            return Some(path.to_owned());
        }
    }
    None
}

/// A `cgroup` spec mount: a tmpfs holding, for each host hierarchy, a bind
/// of the container's own cgroup directory (read-only when asked).
fn mount_cgroup(
    root: BorrowedFd<'_>,
    m: &Mount,
    opts: &MountOptions,
    ctx: &RootfsContext<'_>,
) -> SetupResult<()> {
    let dest = m.destination();
    let what = format!("mount cgroup on {}", dest.display());
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("{what}: read mountinfo: {e}"))?;
    let hierarchies: Vec<Hierarchy> = cgroup_hierarchies(&info)
        .into_iter()
        .filter(|h| h.mount_point.starts_with("/sys/fs/cgroup"))
        .collect();
    let target = ensure_in_root(root, dest, Kind::Dir).map_err(|e| format!("{what}: {e}"))?;
    let only_v2 = hierarchies.len() == 1 && hierarchies[0].v2;
    if !only_v2 {
        sys(
            do_mount(
                Some("tmpfs"),
                &proc_fd_path(&target),
                Some("tmpfs"),
                opts.flags - MsFlags::MS_RDONLY,
                Some("mode=755"),
            ),
            || format!("{what}: tmpfs"),
        )?;
    }
    for h in &hierarchies {
        let Some(cg) = cgroup_path_for(ctx.cgroup_file, h) else {
            continue;
        };
        let rel_in_root = cg
            .strip_prefix(h.root.trim_end_matches('/'))
            .unwrap_or(&cg)
            .trim_start_matches('/');
        let src = h.mount_point.join(rel_in_root);
        let name = if only_v2 {
            PathBuf::new()
        } else {
            match h.mount_point.file_name() {
                Some(n) => PathBuf::from(n),
                None => continue,
            }
        };
        let sub = dest.join(&name);
        let t = ensure_in_root(root, &sub, Kind::Dir).map_err(|e| format!("{what}: {e}"))?;
        sys(
            do_mount(
                Some(&src.to_string_lossy()),
                &proc_fd_path(&t),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            ),
            || format!("{what}: bind {}", src.display()),
        )?;
        let mounted = sys(open_in_root(root, &sub), || format!("{what}: reopen"))?;
        let flags = opts.flags
            & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
        remount_bind(&proc_fd_path(&mounted), flags, &what)?;
        // co-mounted controllers ("cpu,cpuacct") get a link per controller.
        let n = name.to_string_lossy();
        if n.contains(',') {
            let dir = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
            for c in n.split(',') {
                let _ = nix::unistd::symlinkat(&*n, &dir, c);
            }
        }
    }
    if !only_v2 && opts.flags.contains(MsFlags::MS_RDONLY) {
        let mounted = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
        sys(
            do_mount(
                None,
                &proc_fd_path(&mounted),
                None,
                MsFlags::MS_REMOUNT | (opts.flags | MsFlags::MS_RDONLY),
                Some("mode=755"),
            ),
            || format!("{what}: remount tmpfs read-only"),
        )?;
    }
    Ok(())
}

/// A device to create in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub kind: SFlag,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The devices every container gets, plus the spec's own.
pub fn device_list(spec: &Spec) -> SetupResult<Vec<Device>> {
    let mut out: Vec<Device> = [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, major, minor)| Device {
        path: p.into(),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: None,
        gid: None,
    })
    .collect();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(format!(
                    "device {}: type 'a' is not a device",
                    d.path().display()
                ));
            }
        };
        if !d.path().starts_with("/dev") {
            return Err(format!("device {} is not under /dev", d.path().display()));
        }
        let dev = Device {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid(),
            gid: d.gid(),
        };
        out.retain(|o| o.path != dev.path);
        out.push(dev);
    }
    Ok(out)
}

fn create_devices(root: BorrowedFd<'_>, ctx: &RootfsContext<'_>) -> SetupResult<()> {
    for d in device_list(ctx.spec)? {
        let what = format!("create device {}", d.path.display());
        let parent = d.path.parent().unwrap_or(Path::new("/dev"));
        let name = d
            .path
            .file_name()
            .ok_or_else(|| format!("{what}: no file name"))?;
        let dir = ensure_in_root(root, parent, Kind::Dir).map_err(|e| format!("{what}: {e}"))?;
        // Whatever the image put there goes (a regular file posing as /dev/null).
        match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return sys(Err(e), || format!("{what}: remove existing")),
        }
        if ctx.userns {
            // mknod is not allowed in a user namespace: bind the host's node.
            let f =
                ensure_in_root(root, &d.path, Kind::File).map_err(|e| format!("{what}: {e}"))?;
            sys(
                do_mount(
                    Some(&d.path.to_string_lossy()),
                    &proc_fd_path(&f),
                    None,
                    MsFlags::MS_BIND,
                    None,
                ),
                || format!("{what}: bind from host"),
            )?;
            continue;
        }
        sys(
            nix::sys::stat::mknodat(
                &dir,
                name,
                d.kind,
                Mode::from_bits_truncate(d.mode),
                nix::sys::stat::makedev(d.major, d.minor),
            ),
            || format!("{what}: mknod"),
        )?;
        sys(
            nix::sys::stat::fchmodat(
                &dir,
                name,
                Mode::from_bits_truncate(d.mode),
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )
            .or_else(|e| {
                // fchmodat cannot skip symlinks on older kernels; the node is ours.
                if e == Errno::EOPNOTSUPP {
                    nix::sys::stat::fchmodat(
                        &dir,
                        name,
                        Mode::from_bits_truncate(d.mode),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )
                } else {
                    Err(e)
                }
            }),
            || format!("{what}: chmod"),
        )?;
        if d.uid.is_some() || d.gid.is_some() {
            sys(
                nix::unistd::fchownat(
                    &dir,
                    name,
                    d.uid.map(nix::unistd::Uid::from_raw),
                    d.gid.map(nix::unistd::Gid::from_raw),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                ),
                || format!("{what}: chown"),
            )?;
        }
    }
    Ok(())
}

fn dev_symlinks(root: BorrowedFd<'_>) -> SetupResult<()> {
    let dev = ensure_in_root(root, Path::new("/dev"), Kind::Dir)?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        if name == "ptmx" {
            // Replace a ptmx node of the image: the container's devpts is what counts.
            let _ = nix::unistd::unlinkat(&dev, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        match nix::unistd::symlinkat(target, &dev, name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return sys(Err(e), || format!("symlink /dev/{name} -> {target}")),
        }
    }
    Ok(())
}

/// Makes the rootfs the root of the mount namespace and drops the old root.
pub fn pivot(rootfs: &Path) -> SetupResult<()> {
    let open_dir = |p: &Path| {
        sys(
            nix::fcntl::open(
                p,
                OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
            || format!("open {}", p.display()),
        )
    };
    let old = open_dir(Path::new("/"))?;
    let new = open_dir(rootfs)?;
    sys(nix::unistd::fchdir(&new), || "chdir to rootfs".into())?;
    sys(nix::unistd::pivot_root(".", "."), || {
        format!("pivot_root to {}", rootfs.display())
    })?;
    sys(nix::unistd::fchdir(&old), || "chdir to old root".into())?;
    sys(
        do_mount(
            None,
            Path::new("."),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        ),
        || "make old root a slave".into(),
    )?;
    sys(umount2(".", MntFlags::MNT_DETACH), || {
        "detach old root".into()
    })?;
    sys(nix::unistd::chdir("/"), || "chdir /".into())?;
    Ok(())
}

/// Everything after `pivot_root`: masked and read-only paths, read-only root.
pub fn finish(spec: &Spec) -> SetupResult<()> {
    let root = sys(
        nix::fcntl::open(
            "/",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || "open /".into(),
    )?;
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let what = format!("mask {p}");
        let fd = match open_in_root(root.as_fd(), Path::new(p)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return sys(Err(e), || what),
        };
        let target = proc_fd_path(&fd);
        if path::is_dir(&fd) {
            sys(
                do_mount(
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                ),
                || format!("{what}: tmpfs"),
            )?;
        } else {
            sys(
                do_mount(Some("/dev/null"), &target, None, MsFlags::MS_BIND, None),
                || format!("{what}: bind /dev/null"),
            )?;
        }
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let what = format!("read-only path {p}");
        let fd = match open_in_root(root.as_fd(), Path::new(p)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return sys(Err(e), || what),
        };
        let target = proc_fd_path(&fd);
        sys(
            do_mount(
                Some(&target.to_string_lossy()),
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            ),
            || format!("{what}: bind"),
        )?;
        let fd = sys(open_in_root(root.as_fd(), Path::new(p)), || {
            format!("{what}: reopen")
        })?;
        remount_bind(
            &proc_fd_path(&fd),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            &what,
        )?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY, "read-only root")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/sys\\040temd rw - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn hierarchies_from_mountinfo() {
        let h = cgroup_hierarchies(MOUNTINFO);
        assert_eq!(h.len(), 5);
        assert!(h[0].v2);
        assert_eq!(h[1].controllers, vec!["cpu"]);
        assert_eq!(h[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(h[4].mount_point, PathBuf::from("/sys/fs/cgroup/sys temd"));
        assert_eq!(h[4].controllers, vec!["name=systemd"]);
    }

    #[test]
    fn cgroup_paths_match_their_hierarchy() {
        let h = cgroup_hierarchies(MOUNTINFO);
        let file = "12:memory:/berth/c1\n4:cpu:/berth/c1-cpu\n3:cpu,cpuacct:/x\n0::/v2path\n";
        assert_eq!(cgroup_path_for(file, &h[0]).as_deref(), Some("/v2path"));
        assert_eq!(
            cgroup_path_for(file, &h[1]).as_deref(),
            Some("/berth/c1-cpu")
        );
        assert_eq!(cgroup_path_for(file, &h[2]).as_deref(), Some("/x"));
        assert_eq!(cgroup_path_for(file, &h[3]).as_deref(), Some("/berth/c1"));
        assert_eq!(cgroup_path_for(file, &h[4]), None);
    }

    #[test]
    fn default_devices_and_spec_devices() {
        let spec = Spec::default();
        let d = device_list(&spec).unwrap();
        assert!(
            d.iter()
                .any(|d| d.path == Path::new("/dev/null") && d.major == 1 && d.minor == 3)
        );
        assert_eq!(d.len(), 6);
    }
}
