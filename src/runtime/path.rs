//! Resolving spec paths inside the rootfs. Every lookup goes through
//! `openat2(RESOLVE_IN_ROOT)`, so `..` and symlinks (absolute or relative)
//! can never leave the root: a destination symlink pointing at `/etc` lands
//! on `<rootfs>/etc`. Missing components are created one at a time, each
//! relative to its already-resolved parent.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// What to create when a path is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Opens `path` (absolute or relative, taken relative to `root` either way)
/// as an `O_PATH` fd, resolved inside `root`.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path) -> nix::Result<OwnedFd> {
    open_in_root_flags(root, path, OFlag::O_PATH)
}

/// Like [`open_in_root`] with explicit open flags (`O_CLOEXEC` is added).
pub fn open_in_root_flags(root: BorrowedFd<'_>, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = relative(path);
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match openat2(root, rel, how) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// `path` without its root and `.` components (`/a/./b` → `a/b`).
pub fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect()
}

/// Opens `path` inside `root`, creating what is missing (directories, and
/// the last component as `kind`). A dangling symlink on the way is followed
/// inside the root and its target created. Returns an `O_PATH` fd.
pub fn ensure_in_root(root: BorrowedFd<'_>, path: &Path, kind: Kind) -> Result<OwnedFd, String> {
    let mut want = relative(path);
    for _hop in 0..40 {
        match open_in_root(root, &want) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(format!("resolve {}: {e}", path.display())),
        }
        match create_missing(root, &want, kind)? {
            Created::Done(fd) => return Ok(fd),
            Created::FollowTo(next) => want = next,
        }
    }
    Err(format!(
        "resolve {}: too many levels of symlinks",
        path.display()
    ))
}

enum Created {
    Done(OwnedFd),
    /// A dangling symlink was found: resolve this path instead.
    FollowTo(PathBuf),
}

fn open_dir(parent: Option<&OwnedFd>, root: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    match parent {
        Some(fd) => nix::fcntl::openat(fd, ".", flags, Mode::empty()),
        None => nix::fcntl::openat(root, ".", flags, Mode::empty()),
    }
}

fn create_missing(root: BorrowedFd<'_>, rel: &Path, kind: Kind) -> Result<Created, String> {
    let comps: Vec<Component<'_>> = rel.components().collect();
    let mut prefix = PathBuf::new();
    let mut parent: Option<OwnedFd> = None;
    for (i, comp) in comps.iter().enumerate() {
        let parent_prefix = prefix.clone();
        prefix.push(comp.as_os_str());
        let last = i + 1 == comps.len();
        match open_in_root(root, &prefix) {
            Ok(fd) => {
                parent = Some(fd);
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(format!("resolve {}: {e}", prefix.display())),
        }
        let Component::Normal(name) = comp else {
            return Err(format!("resolve {}: not found", prefix.display()));
        };
        // The parent was resolved inside the root; create the entry right in it.
        let dir = open_dir(parent.as_ref(), root)
            .map_err(|e| format!("open parent of {}: {e}", prefix.display()))?;
        let created = if last && kind == Kind::File {
            nix::fcntl::openat(
                &dir,
                *name,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop)
        } else {
            nix::sys::stat::mkdirat(&dir, *name, Mode::from_bits_truncate(0o755))
        };
        match created {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                // Exists but does not resolve: a dangling symlink. Follow it
                // (inside the root) and create what it points to.
                let target = nix::fcntl::readlinkat(&dir, *name).map_err(|e| {
                    format!(
                        "create {}: exists but cannot be resolved: {e}",
                        prefix.display()
                    )
                })?;
                let target = PathBuf::from(target);
                let base = if target.is_absolute() {
                    relative(&target)
                } else {
                    parent_prefix.join(target)
                };
                let rest: PathBuf = comps[i + 1..].iter().collect();
                return Ok(Created::FollowTo(base.join(rest)));
            }
            Err(e) => return Err(format!("create {}: {e}", prefix.display())),
        }
        let fd = open_in_root(root, &prefix)
            .map_err(|e| format!("resolve created {}: {e}", prefix.display()))?;
        parent = Some(fd);
    }
    match parent {
        Some(fd) => Ok(Created::Done(fd)),
        None => open_in_root(root, Path::new("."))
            .map(Created::Done)
            .map_err(|e| format!("resolve {}: {e}", rel.display())),
    }
}

/// The path through which an `O_PATH` fd can be used as a mount target or
/// source (`/proc/self/fd/N`).
pub fn proc_fd_path(fd: impl AsFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

/// Whether the `O_PATH` fd refers to a directory.
pub fn is_dir(fd: impl AsFd) -> bool {
    nix::sys::stat::fstat(fd.as_fd())
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn relative_strips_root_and_dots() {
        assert_eq!(relative(Path::new("/a/./b/")), PathBuf::from("a/b"));
        assert_eq!(relative(Path::new("/../x")), PathBuf::from("../x"));
        assert_eq!(relative(Path::new("/")), PathBuf::new());
    }

    fn root_fd(dir: &Path) -> OwnedFd {
        nix::fcntl::open(
            dir,
            OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    fn real_path(fd: &OwnedFd) -> PathBuf {
        fs::read_link(proc_fd_path(fd)).unwrap()
    }

    #[test]
    fn absolute_symlink_stays_inside_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        let rfd = root_fd(&root);
        let fd = ensure_in_root(rfd.as_fd(), Path::new("/escape/sub"), Kind::Dir).unwrap();
        assert_eq!(real_path(&fd), root.join("etc/sub"));
        assert!(!Path::new("/etc/sub").exists() || root.join("etc/sub").exists());
    }

    #[test]
    fn dotdot_is_clamped_to_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        let rfd = root_fd(&root);
        let fd = ensure_in_root(rfd.as_fd(), Path::new("/up/../x/f"), Kind::File).unwrap();
        assert_eq!(real_path(&fd), root.join("x/f"));
        assert!(root.join("x/f").is_file());
    }

    #[test]
    fn existing_paths_are_opened_not_created() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        let rfd = root_fd(tmp.path());
        let fd = ensure_in_root(rfd.as_fd(), Path::new("a/b"), Kind::File).unwrap();
        assert!(is_dir(&fd));
    }

    #[test]
    fn dangling_symlink_target_is_created_inside_root() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/nowhere/at/all", tmp.path().join("d")).unwrap();
        std::os::unix::fs::symlink("../rel", tmp.path().join("r")).unwrap();
        let rfd = root_fd(tmp.path());
        let fd = ensure_in_root(rfd.as_fd(), Path::new("/d/x"), Kind::Dir).unwrap();
        assert_eq!(real_path(&fd), tmp.path().join("nowhere/at/all/x"));
        assert!(!Path::new("/nowhere").exists());
        let fd = ensure_in_root(rfd.as_fd(), Path::new("/r"), Kind::File).unwrap();
        assert_eq!(real_path(&fd), tmp.path().join("rel"));
    }

    #[test]
    fn symlink_loops_end_with_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", tmp.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", tmp.path().join("b")).unwrap();
        let rfd = root_fd(tmp.path());
        assert!(ensure_in_root(rfd.as_fd(), Path::new("/a"), Kind::Dir).is_err());
    }
}
