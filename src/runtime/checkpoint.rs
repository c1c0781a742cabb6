//! Checkpointing a running container with CRIU (`criu dump`), as runc's
//! `libcontainer/criu_linux.go` drives it: the container's process tree is
//! dumped into an images directory and, for Kubernetes' forensic
//! checkpoints, left running.
//!
//! What runc declares to CRIU, berth declares the same way:
//! - every bind mount (any mount whose root is not its filesystem's root,
//!   and the host paths berth binds: /etc/hosts, /dev/shm, volumes) is an
//!   external mount keyed by its container path (`--external
//!   mnt[<path>]:<path>`), so restore can map it back;
//! - a network namespace the container joined (the pod's) is external
//!   (`--external net[<inode>]:extRootNetNS`), as runc for joined netns;
//! - cgroups are not CRIU's business (`--manage-cgroups=ignore`): the
//!   container's cgroup stays where the runtime made it.
//!
//! The argument list is a pure function of the process's mounts and
//! namespaces (unit-tested here); [`criu_check`] probes whether this
//! machine's CRIU works at all (`criu check`), which fails for instance on
//! Debian 12's CRIU 3.17 under kernels newer than it knows (vDSO layout).

use std::path::Path;
use std::process::Command;

use super::RuntimeError;

/// The CRIU binary (PATH lookup unless `BERTH_CRIU` names one).
pub fn criu_binary() -> String {
    std::env::var("BERTH_CRIU").unwrap_or_else(|_| "criu".to_owned())
}

/// Whether CRIU works on this machine: `criu check` succeeds. The error is
/// CRIU's own first error line (or why it could not be run).
pub fn criu_check() -> Result<(), String> {
    let out = Command::new(criu_binary())
        .arg("check")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", criu_binary()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `criu check` of 3.17 exits 0 even when kernel feature detection
    // failed; "Looks good." is its verdict.
    if out.status.success() && text.contains("Looks good") {
        return Ok(());
    }
    Err(text
        .lines()
        .find(|l| l.starts_with("Error"))
        .or_else(|| text.lines().next())
        .unwrap_or("criu check failed")
        .trim()
        .to_owned())
}

/// One line of `/proc/<pid>/mountinfo`: mount point, root within its
/// filesystem, filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    pub id: u64,
    /// The filesystem's device (`maj:min`): binds of one superblock share it.
    pub dev: String,
    pub point: String,
    pub root: String,
    pub fstype: String,
}

/// Parses mountinfo (`id parent maj:min root point opts [optional...] - type source super`).
pub fn parse_mountinfo(text: &str) -> Vec<MountPoint> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            let id = it.next()?.parse().ok()?;
            let dev = it.nth(1)?;
            let root = it.next()?;
            let point = it.next()?;
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?;
            Some(MountPoint {
                id,
                dev: dev.to_owned(),
                point: unescape(point),
                root: unescape(root),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether CRIU must be told that a mount is external: a bind (its root is
/// not the filesystem's root), or a filesystem CRIU cannot dump itself. A
/// bind of a filesystem the container mounted itself (its /proc bound onto
/// /proc/sys read-only, its /dev/null over a masked path) is CRIU's own:
/// it dumps and restores it as a bind of that mount.
fn is_external(m: &MountPoint, all: &[MountPoint]) -> bool {
    if m.point == "/" {
        return false;
    }
    let dumpable = matches!(
        m.fstype.as_str(),
        "proc" | "sysfs" | "devpts" | "mqueue" | "tmpfs" | "cgroup" | "cgroup2"
    );
    if !dumpable {
        return true;
    }
    m.root != "/"
        && !all
            .iter()
            .any(|o| o.root == "/" && o.dev == m.dev && o.point != "/" && o.id != m.id)
}

/// The container paths CRIU is told are external mounts (`mnt[<path>]`),
/// each once: restore maps every one back to a host source.
pub fn external_mounts(mounts: &[MountPoint]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    mounts
        .iter()
        .filter(|m| is_external(m, mounts))
        .filter(|m| seen.insert(m.point.clone()))
        .map(|m| m.point.clone())
        .collect()
}

/// The file CRIU's images dir gets with what fds 0, 1 and 2 of the
/// container's init were at dump time, as runc's `descriptors.json`:
/// `pipe:[<inode>]` for a pipe, `file[<mnt>:<inode>]` for a file outside
/// the container's mounts (CRIU's external key), else the path.
pub const DESCRIPTORS: &str = "descriptors.json";

/// The file CRIU's images dir gets with the container paths of the mounts
/// the dump declared external ([`external_mounts`]): restore must map each.
pub const EXTERNAL_MOUNTS: &str = "external-mounts.json";

/// What [`dump_args`] needs to know of the container.
#[derive(Debug, Clone)]
pub struct DumpTarget<'a> {
    pub pid: i32,
    pub images_dir: &'a Path,
    pub work_dir: &'a Path,
    /// The container's mounts (its `/proc/<pid>/mountinfo`).
    pub mounts: &'a [MountPoint],
    /// The inode of the network namespace it joined, when not its own.
    pub joined_netns: Option<u64>,
    /// Files the tree holds open that live outside its mounts (stdio the
    /// shim opened, such as the host's /dev/null): (mount id, inode).
    pub external_files: &'a [(u64, u64)],
    pub leave_running: bool,
}

/// The `criu dump` arguments for `t`.
pub fn dump_args(t: &DumpTarget<'_>) -> Vec<String> {
    let mut a = vec![
        "dump".to_owned(),
        "--tree".to_owned(),
        t.pid.to_string(),
        "--images-dir".to_owned(),
        t.images_dir.display().to_string(),
        "--work-dir".to_owned(),
        t.work_dir.display().to_string(),
        "--log-file".to_owned(),
        "dump.log".to_owned(),
        "-v4".to_owned(),
        "--manage-cgroups=ignore".to_owned(),
        "--tcp-established".to_owned(),
        "--file-locks".to_owned(),
        "--ext-unix-sk".to_owned(),
    ];
    if t.leave_running {
        a.push("--leave-running".to_owned());
    }
    if let Some(ino) = t.joined_netns {
        a.push("--external".to_owned());
        a.push(format!("net[{ino}]:extRootNetNS"));
    }
    for (mnt, ino) in t.external_files {
        a.push("--external".to_owned());
        a.push(format!("file[{mnt:x}:{ino:x}]"));
    }
    for point in external_mounts(t.mounts) {
        a.push("--external".to_owned());
        a.push(format!("mnt[{point}]:{point}"));
    }
    a
}

/// `pid` and its descendants (from `/proc/<pid>/task/*/children`).
fn process_tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Regular files the tree holds open on mounts that are not the
/// container's (`mounts`): (mount id, inode), as CRIU's `file[]` keys.
fn files_outside(tree: &[i32], mounts: &[MountPoint]) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let ours: std::collections::HashSet<u64> = mounts.iter().map(|m| m.id).collect();
    let mut out = Vec::new();
    for p in tree {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if !target.is_absolute() {
                continue; // pipe:[..], socket:[..], anon_inode:..
            }
            let info = std::fs::read_to_string(format!(
                "/proc/{p}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let Some(mnt) = info
                .lines()
                .find_map(|l| l.strip_prefix("mnt_id:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                continue;
            };
            if ours.contains(&mnt) {
                continue;
            }
            if let Ok(m) = std::fs::metadata(fd.path()) {
                out.push((mnt, m.ino()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// What fds 0..2 of `pid` are, as [`DESCRIPTORS`] records them.
fn stdio_descriptors(pid: i32, mounts: &[MountPoint]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    (0..3)
        .map(|fd| {
            let link = format!("/proc/{pid}/fd/{fd}");
            let Ok(target) = std::fs::read_link(&link) else {
                return String::new();
            };
            let text = target.to_string_lossy().into_owned();
            if !target.is_absolute() {
                return text;
            }
            let mnt = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("mnt_id:"))
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (mnt, std::fs::metadata(&link)) {
                (Some(mnt), Ok(m)) if !mounts.iter().any(|o| o.id == mnt) => {
                    format!("file[{mnt:x}:{:x}]", m.ino())
                }
                _ => text,
            }
        })
        .collect()
}

fn ns_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Runs a command to completion (the shim's runs it past its reaper).
pub type Runner<'a> = dyn Fn(&mut Command) -> std::io::Result<std::process::Output> + 'a;

/// Dumps the process tree of `pid` into `images_dir` with CRIU (its log
/// in `work_dir/dump.log`), running CRIU through `run`.
pub fn dump(
    pid: i32,
    images_dir: &Path,
    work_dir: &Path,
    leave_running: bool,
    run: &Runner<'_>,
) -> Result<(), RuntimeError> {
    let io = |what: &str, p: &Path| {
        let context = format!("{what} {}", p.display());
        move |source| RuntimeError::Io { context, source }
    };
    std::fs::create_dir_all(images_dir).map_err(io("create", images_dir))?;
    std::fs::create_dir_all(work_dir).map_err(io("create", work_dir))?;
    let info = format!("/proc/{pid}/mountinfo");
    let mounts =
        parse_mountinfo(&std::fs::read_to_string(&info).map_err(io("read", Path::new(&info)))?);
    let theirs = ns_inode(&format!("/proc/{pid}/ns/net"));
    // A container with a network namespace of its own at pid 1 of the
    // tree created it; the pod's (pinned, joined by every container) is
    // external to the dump. berth's containers always join the pod's.
    let joined_netns = theirs.filter(|ino| Some(*ino) != ns_inode("/proc/self/ns/net"));
    let external_files = files_outside(&process_tree(pid), &mounts);
    let path = images_dir.join(EXTERNAL_MOUNTS);
    std::fs::write(
        &path,
        serde_json::to_vec(&external_mounts(&mounts)).unwrap_or_else(|_| b"[]".to_vec()),
    )
    .map_err(io("write", &path))?;
    let descriptors = stdio_descriptors(pid, &mounts);
    let path = images_dir.join(DESCRIPTORS);
    std::fs::write(
        &path,
        serde_json::to_vec(&descriptors).unwrap_or_else(|_| b"[]".to_vec()),
    )
    .map_err(io("write", &path))?;
    let args = dump_args(&DumpTarget {
        pid,
        images_dir,
        work_dir,
        mounts: &mounts,
        joined_netns,
        external_files: &external_files,
        leave_running,
    });
    tracing::info!(pid, images = %images_dir.display(), "criu dump");
    let out = run(Command::new(criu_binary()).args(&args))
        .map_err(|e| RuntimeError::Checkpoint(format!("cannot run {}: {e}", criu_binary())))?;
    if !out.status.success() {
        let log = std::fs::read_to_string(work_dir.join("dump.log")).unwrap_or_default();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Error"))
            .take(5)
            .collect();
        return Err(RuntimeError::Checkpoint(format!(
            "criu dump of pid {pid} failed ({}): {}",
            out.status,
            if errors.is_empty() {
                String::from_utf8_lossy(&out.stderr).trim().to_owned()
            } else {
                errors.join("; ")
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
1 0 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/a:/b,upperdir=/u,workdir=/w
2 1 0:51 / /proc rw,nosuid - proc proc rw
3 1 0:52 / /dev rw,nosuid - tmpfs tmpfs rw,mode=755
4 3 0:53 / /dev/pts rw - devpts devpts rw
5 1 254:1 /var/lib/berth/pods/p1/hosts /etc/hosts rw - ext4 /dev/vda1 rw
6 3 0:54 /pods/p1/shm /dev/shm rw - tmpfs shm rw
7 1 254:1 /data/my\\040dir /mnt/vol rw - ext4 /dev/vda1 rw
8 1 0:55 / /sys ro - sysfs sysfs ro
9 2 0:51 /sys /proc/sys ro - proc proc rw
10 2 0:52 /null /proc/kcore rw - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo_parses_with_escapes() {
        let m = parse_mountinfo(INFO);
        assert_eq!(m.len(), 10);
        assert_eq!(m[1].dev, "0:51");
        assert_eq!(m[4].point, "/etc/hosts");
        assert_eq!(m[4].root, "/var/lib/berth/pods/p1/hosts");
        assert_eq!(m[6].root, "/data/my dir");
        assert_eq!(m[0].fstype, "overlay");
        assert_eq!((m[0].id, m[7].id), (1, 8));
    }

    #[test]
    fn binds_and_the_joined_netns_are_external() {
        let mounts = parse_mountinfo(INFO);
        let args = dump_args(&DumpTarget {
            pid: 42,
            images_dir: Path::new("/ck/checkpoint"),
            work_dir: Path::new("/ck/work"),
            mounts: &mounts,
            joined_netns: Some(4026532000),
            external_files: &[(24, 5)],
            leave_running: true,
        });
        let s = args.join(" ");
        assert!(s.starts_with("dump --tree 42 --images-dir /ck/checkpoint --work-dir /ck/work"));
        assert!(s.contains("--leave-running"));
        assert!(s.contains("--manage-cgroups=ignore"));
        assert!(s.contains("--external net[4026532000]:extRootNetNS"));
        assert!(s.contains("--external file[18:5]"), "{s}");
        for ext in ["/etc/hosts", "/dev/shm", "/mnt/vol"] {
            assert!(s.contains(&format!("mnt[{ext}]:{ext}")), "{ext} in {s}");
        }
        // The root, what CRIU dumps itself, and binds of the container's
        // own mounts are not external.
        for own in [
            "[/]",
            "[/proc]",
            "[/dev]",
            "[/dev/pts]",
            "[/sys]",
            "[/proc/sys]",
            "[/proc/kcore]",
        ] {
            assert!(!s.contains(&format!("mnt{own}")), "{own} in {s}");
        }
        let kept = dump_args(&DumpTarget {
            leave_running: false,
            joined_netns: None,
            external_files: &[],
            mounts: &[],
            pid: 1,
            images_dir: Path::new("/i"),
            work_dir: Path::new("/w"),
        });
        assert!(
            !kept
                .iter()
                .any(|a| a == "--leave-running" || a == "--external")
        );
    }
}
