//! Restoring a container from CRIU images (`criu restore`), as runc's
//! `restore` drives it (`libcontainer/criu_linux.go`): the rootfs is
//! already mounted (the new container's, with the checkpoint's writable
//! layer applied), and CRIU recreates the process tree inside it.
//!
//! What the dump declared external, the restore gives back:
//! - every external mount (`mnt[<container path>]`) is mapped to the new
//!   container's host source: the spec's bind mounts by destination
//!   (runc's `--ext-mount-map`), masked files to /dev/null;
//! - the joined network namespace (`extRootNetNS`) is the new pod's, passed
//!   as an inherited fd (`--inherit-fd fd[N]:extRootNetNS`);
//! - fds 0..2 recorded in `descriptors.json` at dump time (pipes, files
//!   outside the container) become the new container's stdio
//!   (`--inherit-fd fd[N]:pipe:[inode]`), as runc re-plumbs its stdio;
//! - CRIU joins the container's cgroup before it forks, so the restored
//!   tree is born inside (`--manage-cgroups=ignore`, as at dump).
//!
//! The tree is restored stopped (`--leave-stopped`) and as the caller's
//! child (`--restore-sibling`): [`super::Container::start`] continues it
//! (SIGCONT), as containerd's shim restores on Start.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::cgroups::CgroupManager;
use super::checkpoint::{DESCRIPTORS, EXTERNAL_MOUNTS, Runner, criu_binary};
use super::create::{cgroups_path_for_driver, stdio_fds, validate_id};
use super::{Container, CreateOptions, Result, RuntimeError, state, sys};

/// The state file that marks a restored container whose tree waits for
/// `start` (stopped by CRIU).
pub const RESTORED_STOPPED: &str = "restored-stopped";

/// First fd number the inherited fds are passed as to CRIU.
const FIRST_INHERITED_FD: i32 = 100;

/// What [`restore_args`] needs to know.
#[derive(Debug, Clone)]
pub struct RestoreTarget<'a> {
    pub rootfs: &'a Path,
    pub images_dir: &'a Path,
    pub work_dir: &'a Path,
    pub pidfile: &'a Path,
    /// (container path, host source) of every mount CRIU must map back.
    pub mounts: &'a [(String, String)],
    /// fd number of the network namespace to restore into, if joined.
    pub netns_fd: Option<i32>,
    /// (fd number, CRIU key) of the stdio CRIU must plug back in.
    pub inherited: &'a [(i32, String)],
}

/// The `criu restore` arguments for `t`.
pub fn restore_args(t: &RestoreTarget<'_>) -> Vec<String> {
    let mut a: Vec<String> = [
        "restore",
        "--restore-detached",
        "--restore-sibling",
        "--leave-stopped",
        "--root",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    a.push(t.rootfs.display().to_string());
    for (flag, p) in [
        ("--images-dir", t.images_dir),
        ("--work-dir", t.work_dir),
        ("--pidfile", t.pidfile),
    ] {
        a.push(flag.to_owned());
        a.push(p.display().to_string());
    }
    a.extend(
        [
            "--log-file",
            "restore.log",
            "-v4",
            "--manage-cgroups=ignore",
            "--tcp-established",
            "--file-locks",
            "--ext-unix-sk",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    for (dest, src) in t.mounts {
        a.push("--external".to_owned());
        a.push(format!("mnt[{dest}]:{src}"));
    }
    if let Some(fd) = t.netns_fd {
        a.push("--inherit-fd".to_owned());
        a.push(format!("fd[{fd}]:extRootNetNS"));
    }
    for (fd, key) in t.inherited {
        a.push("--inherit-fd".to_owned());
        a.push(format!("fd[{fd}]:{key}"));
    }
    a
}

/// The host source of every mount CRIU may ask for, by container path:
/// the spec's bind mounts, and /dev/null for masked paths (runc's
/// `addMaskPaths`).
pub fn mount_map(spec: &Spec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .any(|o| o == "bind" || o == "rbind");
        if let (true, Some(src)) = (bind, m.source()) {
            out.push((
                m.destination().display().to_string(),
                src.display().to_string(),
            ));
        }
    }
    let masked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default();
    for p in masked {
        if !out.iter().any(|(d, _)| *d == p) {
            out.push((p, "/dev/null".to_owned()));
        }
    }
    out
}

/// The container's cgroup directories, as the container sees them mounted
/// (`/sys/fs/cgroup/<hierarchy>` on v1, `/sys/fs/cgroup` on v2): CRIU binds
/// the new container's own cgroup there.
fn cgroup_mount_map(cgroup: &CgroupManager) -> Vec<(String, String)> {
    let h = cgroup.hierarchy();
    h.dirs(cgroup.path())
        .into_iter()
        .filter_map(|(controller, dir)| {
            let key = if h.is_v2() {
                "/sys/fs/cgroup".to_owned()
            } else {
                let name = h
                    .mount(&controller)?
                    .file_name()?
                    .to_string_lossy()
                    .into_owned();
                format!("/sys/fs/cgroup/{name}")
            };
            Some((key, dir.display().to_string()))
        })
        .collect()
}

/// The dump's external mounts that `mounts` gives no host source for.
pub fn unmapped_mounts(external: &[String], mounts: &[(String, String)]) -> Vec<String> {
    external
        .iter()
        .filter(|e| !mounts.iter().any(|(d, _)| d == *e))
        .cloned()
        .collect()
}

/// Which of the new stdio fds (0..2) CRIU must plug in for the dumped ones,
/// with their CRIU keys: pipes and files outside the container.
pub fn inherited_stdio(descriptors: &[String]) -> Vec<(usize, String)> {
    descriptors
        .iter()
        .enumerate()
        .take(3)
        .filter(|(_, d)| d.starts_with("pipe:[") || d.starts_with("file["))
        .map(|(i, d)| (i, d.clone()))
        .collect()
}

/// CRIU's first errors from its log (or its stderr).
fn criu_errors(log: &Path, stderr: &[u8]) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") || l.contains("error"))
        .take(6)
        .collect();
    if errors.is_empty() {
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        if tail.is_empty() {
            return String::from_utf8_lossy(stderr).trim().to_owned();
        }
        return tail.into_iter().rev().collect::<Vec<_>>().join("; ");
    }
    errors.join("; ")
}

fn io_err(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = format!("{what} {}", p.display());
    move |source| RuntimeError::Io { context, source }
}

/// Restores the container `opts.id` from the CRIU images in `images_dir`
/// into the rootfs, namespaces, mounts and cgroup of `opts.spec`; CRIU
/// runs through `run`. The tree is left stopped until `start`.
pub fn restore(opts: CreateOptions<'_>, images_dir: &Path, run: &Runner<'_>) -> Result<Container> {
    validate_id(opts.id)?;
    let started = std::time::Instant::now();
    let spec = opts.spec;
    if spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
        || opts.stdio.terminal
    {
        return Err(RuntimeError::InvalidSpec(
            "restoring a container with a terminal is not supported".into(),
        ));
    }
    let rootfs = super::create::bundle_rootfs(spec, opts.bundle)?;
    let descriptors_path = images_dir.join(DESCRIPTORS);
    let descriptors: Vec<String> = match std::fs::read(&descriptors_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            RuntimeError::BadCheckpoint(format!("{}: {e}", descriptors_path.display()))
        })?,
        Err(e) => {
            return Err(RuntimeError::BadCheckpoint(format!(
                "{}: {e}",
                descriptors_path.display()
            )));
        }
    };
    if !images_dir.join("inventory.img").is_file() {
        return Err(RuntimeError::BadCheckpoint(format!(
            "{} holds no CRIU images (inventory.img)",
            images_dir.display()
        )));
    }
    let linux = spec.linux().as_ref();
    let netns = linux
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or(&[])
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone());
    let spec_cgroup = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let cgroup_path =
        cgroups_path_for_driver(spec_cgroup.as_deref(), opts.id, opts.systemd_cgroup)?;
    std::fs::create_dir_all(opts.state_dir).map_err(io_err("create", opts.state_dir))?;
    let work_dir = opts.state_dir.join("criu-restore");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir).map_err(io_err("create", &work_dir))?;
    let pidfile = work_dir.join("restore.pid");

    let cgroup = CgroupManager::new(&cgroup_path)?;
    if cgroup.pids().is_ok_and(|p| !p.is_empty()) {
        return Err(RuntimeError::InvalidSpec(format!(
            "cgroup {cgroup_path} already holds processes"
        )));
    }
    let fail = |e: RuntimeError| {
        if let Err(d) = cgroup.destroy() {
            tracing::warn!(cgroup = cgroup.path(), error = %d, "cleanup of failed restore: destroy cgroup");
        }
        state::remove(opts.state_dir);
        e
    };
    cgroup
        .create_with(linux.and_then(|l| l.resources().as_ref()), None)
        .map_err(|e| fail(e.into()))?;
    let procs = cgroup.procs_files().map_err(|e| fail(e.into()))?;

    let stdio = stdio_fds(opts.stdio).map_err(fail)?;
    let mut passed: Vec<(i32, i32)> = Vec::new();
    let mut inherited = Vec::new();
    let mut next = FIRST_INHERITED_FD;
    for (i, key) in inherited_stdio(&descriptors) {
        passed.push((stdio[i].as_raw_fd(), next));
        inherited.push((next, key));
        next += 1;
    }
    let netns_file: Option<OwnedFd> = match &netns {
        Some(p) => Some(
            std::fs::File::open(p)
                .map(OwnedFd::from)
                .map_err(|e| fail(io_err("open", p)(e)))?,
        ),
        None => None,
    };
    let netns_fd = netns_file.as_ref().map(|f| {
        passed.push((f.as_raw_fd(), next));
        next += 1;
        next - 1
    });
    let mut mounts = mount_map(spec);
    mounts.extend(cgroup_mount_map(&cgroup));
    // The dump's external mounts (archives of other runtimes lack the
    // list; CRIU then names what it misses).
    if let Ok(b) = std::fs::read(images_dir.join(EXTERNAL_MOUNTS)) {
        let external: Vec<String> = serde_json::from_slice(&b).unwrap_or_default();
        let missing = unmapped_mounts(&external, &mounts);
        if !missing.is_empty() {
            return Err(fail(RuntimeError::Restore(format!(
                "the checkpoint's external mounts {missing:?} have no source in the new container (its spec mounts nothing there)"
            ))));
        }
    }
    let args = restore_args(&RestoreTarget {
        rootfs: &rootfs,
        images_dir,
        work_dir: &work_dir,
        pidfile: &pidfile,
        mounts: &mounts,
        netns_fd,
        inherited: &inherited,
    });
    let mut cmd = Command::new(criu_binary());
    cmd.args(&args);
    for (fd, target) in &passed {
        sys::pass_fd_as(&mut cmd, *fd, *target);
    }
    for f in &procs {
        sys::join_cgroup_at_exec(&mut cmd, f.as_raw_fd());
    }
    tracing::info!(container = opts.id, images = %images_dir.display(), "criu restore");
    let out = run(&mut cmd).map_err(|e| {
        fail(RuntimeError::Restore(format!(
            "cannot run {}: {e}",
            criu_binary()
        )))
    })?;
    drop((stdio, netns_file, procs));
    let log = work_dir.join("restore.log");
    if !out.status.success() {
        return Err(fail(RuntimeError::Restore(format!(
            "criu restore of {} failed ({}): {} (log: {})",
            opts.id,
            out.status,
            criu_errors(&log, &out.stderr),
            log.display()
        ))));
    }
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .ok_or_else(|| {
            fail(RuntimeError::Restore(format!(
                "criu restore wrote no pid to {}",
                pidfile.display()
            )))
        })?;
    let marker = opts.state_dir.join(RESTORED_STOPPED);
    std::fs::write(&marker, pid.to_string()).map_err(|e| {
        let _ = sys::kill(pid, libc::SIGKILL);
        fail(io_err("write", &marker)(e))
    })?;
    state::record_start_time(opts.state_dir, pid);
    tracing::info!(
        container = opts.id,
        pid,
        total_ms = started.elapsed().as_secs_f64() * 1000.0,
        "container restored (stopped until start)"
    );
    Ok(Container {
        id: opts.id.to_owned(),
        pid,
        bundle: opts.bundle.to_owned(),
        state_dir: opts.state_dir.to_owned(),
        cgroup_path,
    })
}

/// Continues a restored tree CRIU left stopped; false when `c` was not
/// restored (or is already continued).
pub fn continue_restored(c: &Container) -> Result<bool> {
    let marker = c.state_dir.join(RESTORED_STOPPED);
    if !marker.exists() {
        return Ok(false);
    }
    let cgroup = CgroupManager::new(&c.cgroup_path)?;
    for pid in cgroup.pids()? {
        let _ = sys::kill(pid, libc::SIGCONT);
    }
    let _ = std::fs::remove_file(&marker);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_maps_mounts_netns_and_stdio_back() {
        let mounts = vec![
            ("/etc/hosts".to_owned(), "/pods/p2/hosts".to_owned()),
            ("/proc/kcore".to_owned(), "/dev/null".to_owned()),
        ];
        let inherited = vec![
            (100, "pipe:[77]".to_owned()),
            (101, "file[2a:9]".to_owned()),
        ];
        let s = restore_args(&RestoreTarget {
            rootfs: Path::new("/b/rootfs"),
            images_dir: Path::new("/b/ck/checkpoint"),
            work_dir: Path::new("/b/berth/criu-restore"),
            pidfile: Path::new("/b/berth/criu-restore/restore.pid"),
            mounts: &mounts,
            netns_fd: Some(102),
            inherited: &inherited,
        })
        .join(" ");
        assert!(s.starts_with(
            "restore --restore-detached --restore-sibling --leave-stopped --root /b/rootfs --images-dir /b/ck/checkpoint"
        ));
        assert!(s.contains("--manage-cgroups=ignore"));
        assert!(
            s.contains("--external mnt[/etc/hosts]:/pods/p2/hosts"),
            "{s}"
        );
        assert!(s.contains("--external mnt[/proc/kcore]:/dev/null"), "{s}");
        assert!(s.contains("--inherit-fd fd[102]:extRootNetNS"), "{s}");
        assert!(s.contains("--inherit-fd fd[100]:pipe:[77]"), "{s}");
        assert!(s.contains("--inherit-fd fd[101]:file[2a:9]"), "{s}");
    }

    #[test]
    fn every_external_mount_of_the_dump_needs_a_source() {
        let mounts = vec![("/etc/hosts".to_owned(), "/pods/p2/hosts".to_owned())];
        let external = ["/etc/hosts", "/data"].map(String::from);
        assert_eq!(
            unmapped_mounts(&external, &mounts),
            vec!["/data".to_owned()]
        );
        assert!(unmapped_mounts(&external[..1], &mounts).is_empty());
    }

    #[test]
    fn only_pipes_and_outside_files_are_inherited() {
        let d = ["file[2a:9]", "pipe:[5]", "/dev/pts/0"].map(String::from);
        assert_eq!(
            inherited_stdio(&d),
            vec![(0, "file[2a:9]".to_owned()), (1, "pipe:[5]".to_owned())]
        );
    }

    #[test]
    fn mount_map_takes_binds_and_masked_files() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/pods/p2/hosts", "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "/srv/data", "options": ["bind"]}
            ],
            "linux": {"maskedPaths": ["/proc/kcore"]}
        }))
        .unwrap();
        let m = mount_map(&spec);
        assert!(m.contains(&("/etc/hosts".into(), "/pods/p2/hosts".into())));
        assert!(m.contains(&("/data".into(), "/srv/data".into())));
        assert!(m.contains(&("/proc/kcore".into(), "/dev/null".into())));
        assert!(!m.iter().any(|(d, _)| d == "/proc"));
    }
}
