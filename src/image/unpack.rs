//! Safe unpacking of untrusted layer archives into a snapshot directory.
//!
//! Every path is resolved component by component from a directory fd of the
//! snapshot root with `O_NOFOLLOW`, and every object is created relative to
//! its parent's fd: a symlink in the archive can never redirect a later
//! write, `..` is refused, absolute paths are taken relative to the root, and
//! hard links only point at entries inside the root. Character and block
//! devices are refused except the overlay whiteout (0:0). The bytes written
//! are capped (decompression bombs, sparse files).
//!
//! OCI whiteouts become overlayfs ones while unpacking: `.wh.name` → a 0:0
//! character device `name`, `.wh..wh..opq` → `trusted.overlay.opaque=y` on
//! the directory.

use std::cell::Cell;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::ImageError;

/// What one unpack wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
    /// Parent directories the archive did not list, made with default
    /// attributes; [`inherit_dir_attrs`] gives them those of lower layers.
    pub implicit_dirs: Vec<PathBuf>,
}

/// Unpacks the tar stream `reader` into the existing directory `root`.
/// `digest` only names the layer in errors; `max_bytes` caps the file bytes.
pub fn unpack<R: Read>(
    reader: R,
    root: &Path,
    digest: &str,
    max_bytes: u64,
) -> Result<UnpackStats, ImageError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| unsafe_layer(digest, format!("open {}: {e}", root.display())))?;
    let mut u = Unpacker {
        root: root_fd,
        digest,
        max_bytes,
        stats: UnpackStats::default(),
        cached_parent: None,
        buf: vec![0u8; 256 * 1024],
    };
    let data_end = Rc::new(Cell::new(None));
    let mut archive = tar::Archive::new(GoTarEnd::new(reader, Rc::clone(&data_end)));
    let entries = archive
        .entries()
        .map_err(|e| unsafe_layer(digest, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| unsafe_layer(digest, format!("malformed tar entry: {e}")))?;
        // Sparse entries keep their data in pieces behind extension
        // headers: no end to register, their padding stays required.
        data_end.set(
            (entry.header().entry_type() != tar::EntryType::GNUSparse)
                .then(|| entry.raw_file_position() + entry.size()),
        );
        u.entry(entry)?;
    }
    archive
        .into_inner()
        .end_of_archive()
        .map_err(|reason| unsafe_layer(digest, reason))?;
    Ok(u.stats)
}

/// The tar stream as Go's archive/tar reads it, which is what containerd,
/// CRI-O, Docker and buildkit unpack with, and so what image builders get
/// away with. Go ends the archive at EOF
/// - where a header would start (no end-of-archive blocks at all),
/// - after one zero block (the second is missing), and
/// - anywhere in the padding that rounds the last entry's data up to 512
///   bytes (`tryReadFull` of the padding answers io.EOF, and Next passes
///   it on as the end): umoci 0.4.7's `insert` writes such layers.
///
/// It refuses EOF inside a header, inside an entry's data, or inside the
/// second zero block (io.ErrUnexpectedEOF), and a non-zero block after a
/// zero one (ErrHeader). The tar crate is stricter about the padding
/// ("unexpected EOF during skip") and looser after the first zero block
/// (it reads no further). This reader makes up the missing padding, and only
/// that: on EOF between the end of the last entry's data ([`Self::data_end`],
/// set by the unpack loop) and the next 512-byte boundary it hands out zeros
/// up to the boundary, so the tar crate then meets EOF at a header, which it
/// takes as the end. [`Self::end_of_archive`] then checks what follows a
/// zero block as Go does. The made-up zeros are not part of the stream that
/// the diff ID is computed over (that is hashed before this reader).
struct GoTarEnd<R> {
    inner: R,
    /// Bytes handed to the tar crate, made-up padding included.
    pos: u64,
    /// Where the data of the entry last handed out ends.
    data_end: Rc<Cell<Option<u64>>>,
    /// Made-up padding still to hand out.
    padding: u64,
    eof: bool,
}

const TAR_BLOCK: u64 = 512;

impl<R: Read> GoTarEnd<R> {
    fn new(inner: R, data_end: Rc<Cell<Option<u64>>>) -> Self {
        Self {
            inner,
            pos: 0,
            data_end,
            padding: 0,
            eof: false,
        }
    }

    /// After the tar crate's last entry: EOF, or a second zero block.
    fn end_of_archive(mut self) -> Result<(), String> {
        let mut block = [0u8; TAR_BLOCK as usize];
        let mut got = 0;
        while got < block.len() {
            match self.read(&mut block[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading the end of the archive: {e}")),
            }
        }
        match got {
            0 => Ok(()),
            n if n < block.len() => Err(format!(
                "the stream ends {n} bytes into the second end-of-archive block"
            )),
            _ if block.iter().all(|&b| b == 0) => Ok(()),
            _ => Err("a zero block is followed by a non-zero block".into()),
        }
    }
}

impl<R: Read> Read for GoTarEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.padding > 0 {
            let n = buf
                .len()
                .min(usize::try_from(self.padding).unwrap_or(usize::MAX));
            buf[..n].fill(0);
            self.padding -= n as u64;
            self.pos += n as u64;
            return Ok(n);
        }
        if self.eof {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.pos += n as u64;
            return Ok(n);
        }
        self.eof = true;
        if let Some(end) = self.data_end.get() {
            let boundary = end.next_multiple_of(TAR_BLOCK);
            if self.pos >= end && self.pos < boundary {
                tracing::debug!(
                    at = self.pos,
                    missing = boundary - self.pos,
                    "the tar stream ends in the padding of its last entry; taking that as the end, as Go's archive/tar does"
                );
                self.padding = boundary - self.pos;
                return self.read(buf);
            }
        }
        Ok(0)
    }
}

fn unsafe_layer(digest: &str, reason: impl Into<String>) -> ImageError {
    ImageError::UnsafeLayer {
        digest: digest.to_owned(),
        reason: printable(&reason.into()),
    }
}

/// At most this much of an archive's text goes into an error message.
const MAX_REASON: usize = 512;

/// `reason` with control characters escaped and cut to [`MAX_REASON`]
/// bytes: a garbage layer's header bytes end up in the tar crate's
/// messages, and from there in kubelet's events and berthd's log.
fn printable(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars() {
        if c.is_control() || c == '\u{fffd}' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str("...");
            break;
        }
    }
    out
}

/// Splits an archive path into safe components: `.` and leading `/` are
/// dropped (absolute paths are taken inside the root), `..` is refused.
pub fn safe_components(path: &Path) -> Result<Vec<&OsStr>, String> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err(format!("path {} contains '..'", path.display())),
            Component::Prefix(_) => return Err(format!("path {} has a prefix", path.display())),
        }
    }
    Ok(out)
}

struct Unpacker<'a> {
    root: OwnedFd,
    digest: &'a str,
    max_bytes: u64,
    stats: UnpackStats,
    cached_parent: Option<(PathBuf, OwnedFd)>,
    buf: Vec<u8>,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

impl Unpacker<'_> {
    fn err(&self, reason: impl Into<String>) -> ImageError {
        unsafe_layer(self.digest, reason)
    }

    /// A failed file system call: the disk is full (ENOSPC, EDQUOT: an
    /// I/O error, ResourceExhausted), else the archive is to blame.
    fn fs_err(&self, what: String, e: impl Into<std::io::Error>) -> ImageError {
        let e: std::io::Error = e.into();
        if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            ImageError::Io {
                context: format!("layer {}: {what}", self.digest),
                source: e,
            }
        } else {
            self.err(format!("{what}: {e}"))
        }
    }

    /// Opens (creating as needed) the directory `comps` under the root,
    /// refusing any component that is not a real directory.
    fn dir(&mut self, comps: &[&OsStr], create: bool) -> Result<BorrowedFd<'_>, ImageError> {
        let key: PathBuf = comps.iter().collect();
        let hit = matches!(&self.cached_parent, Some((k, _)) if *k == key);
        if !hit {
            let mut cur: Option<OwnedFd> = None;
            for (i, c) in comps.iter().enumerate() {
                let parent = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.root.as_fd());
                let fd = match rustix::fs::openat(parent, *c, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) if create => {
                        match rustix::fs::mkdirat(parent, *c, Mode::from_raw_mode(0o755)) {
                            Ok(()) => self.stats.implicit_dirs.push(comps[..=i].iter().collect()),
                            Err(Errno::EXIST) => {}
                            Err(e) => {
                                return Err(self.fs_err(format!("mkdir {}", key.display()), e));
                            }
                        }
                        rustix::fs::openat(parent, *c, DIR_FLAGS, Mode::empty())
                            .map_err(|e| self.fs_err(format!("open {}", key.display()), e))?
                    }
                    Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                        return Err(self.err(format!(
                            "{}: a parent path component is a symlink or not a directory",
                            key.display()
                        )));
                    }
                    Err(e) => return Err(self.fs_err(format!("open {}", key.display()), e)),
                };
                cur = Some(fd);
            }
            let fd = match cur {
                Some(fd) => fd,
                None => rustix::io::fcntl_dupfd_cloexec(&self.root, 0)
                    .map_err(|e| self.fs_err("dup".into(), e))?,
            };
            self.cached_parent = Some((key, fd));
        }
        Ok(self
            .cached_parent
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .expect("just set"))
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        self.stats.entries += 1;
        let path = entry
            .path()
            .map_err(|e| self.err(format!("bad path: {e}")))?
            .into_owned();
        let comps = safe_components(&path).map_err(|r| self.err(r))?;
        let Some((name, parents)) = comps.split_last() else {
            return Ok(()); // the root itself
        };
        let name: &OsStr = name;
        let parents: Vec<&OsStr> = parents.to_vec();
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let xattrs = self.xattrs(&mut entry);

        let name_bytes = name.as_bytes();
        if let Some(target) = name_bytes.strip_prefix(b".wh.") {
            if name_bytes == b".wh..wh..opq" {
                let dir = self.dir(&parents, true)?;
                return rustix::fs::fsetxattr(
                    dir,
                    "trusted.overlay.opaque",
                    b"y",
                    XattrFlags::empty(),
                )
                .map_err(|e| self.fs_err(format!("opaque whiteout in {}", path.display()), e));
            }
            if target.starts_with(b".wh.") {
                return Ok(()); // aufs bookkeeping (.wh..wh.plnk etc.)
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(self.err(format!("malformed whiteout {}", path.display())));
            }
            let target = OsStr::from_bytes(target).to_owned();
            return self.whiteout(&parents, &target, &path);
        }

        match kind {
            tar::EntryType::Directory => {
                let full: PathBuf = parents.iter().chain([&name]).collect();
                self.stats.implicit_dirs.retain(|d| *d != full);
                let dir = self.dir(&parents, true)?;
                let dir = rustix::io::fcntl_dupfd_cloexec(dir, 0)
                    .map_err(|e| self.fs_err("dup".into(), e))?;
                let dir = dir.as_fd();
                if matches!(&self.cached_parent, Some((k, _)) if k.starts_with(parents.iter().chain([&name]).collect::<PathBuf>()))
                {
                    self.cached_parent = None;
                }
                match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        remove_all_at(dir, name)
                            .map_err(|e| self.fs_err(format!("replace {}", path.display()), e))?;
                        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
                            .map_err(|e| self.fs_err(format!("mkdir {}", path.display()), e))?;
                    }
                    Err(Errno::NOENT) => rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
                        .map_err(|e| self.fs_err(format!("mkdir {}", path.display()), e))?,
                    Err(e) => return Err(self.fs_err(format!("stat {}", path.display()), e)),
                }
                let fd = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| self.fs_err(format!("open {}", path.display()), e))?;
                self.finish(&fd, uid, gid, mode, &xattrs, None, &path)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let dir = self.dir(&parents, true)?;
                let dir = rustix::io::fcntl_dupfd_cloexec(dir, 0)
                    .map_err(|e| self.fs_err("dup".into(), e))?;
                self.clear(&dir, name, &path)?;
                let fd = rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.fs_err(format!("create {}", path.display()), e))?;
                let mut file = std::fs::File::from(fd);
                loop {
                    let n = entry
                        .read(&mut self.buf)
                        .map_err(|e| self.fs_err(format!("read {}", path.display()), e))?;
                    if n == 0 {
                        break;
                    }
                    self.stats.bytes += n as u64;
                    if self.stats.bytes > self.max_bytes {
                        return Err(self.err(format!(
                            "uncompressed content exceeds the limit of {} bytes (decompression bomb?)",
                            self.max_bytes
                        )));
                    }
                    file.write_all(&self.buf[..n])
                        .map_err(|e| self.fs_err(format!("write {}", path.display()), e))?;
                }
                let fd = OwnedFd::from(file);
                self.finish(&fd, uid, gid, mode, &xattrs, Some(mtime), &path)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.err(format!("bad link target: {e}")))?
                    .ok_or_else(|| self.err(format!("symlink {} without target", path.display())))?
                    .into_owned();
                let dir = self.dir(&parents, true)?;
                let dir = rustix::io::fcntl_dupfd_cloexec(dir, 0)
                    .map_err(|e| self.fs_err("dup".into(), e))?;
                self.clear(&dir, name, &path)?;
                // The target is stored, never followed: nothing here or later
                // resolves through it (every open uses O_NOFOLLOW per component).
                rustix::fs::symlinkat(&target, &dir, name)
                    .map_err(|e| self.fs_err(format!("symlink {}", path.display()), e))?;
                let _ = rustix::fs::chownat(
                    &dir,
                    name,
                    uid_of(uid),
                    gid_of(gid),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
                let _ = rustix::fs::utimensat(&dir, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.err(format!("bad link target: {e}")))?
                    .ok_or_else(|| {
                        self.err(format!("hard link {} without target", path.display()))
                    })?
                    .into_owned();
                let tcomps = safe_components(&target)
                    .map_err(|r| self.err(format!("hard link target: {r}")))?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(self.err(format!("hard link {} to the root", path.display())));
                };
                let tname: &OsStr = tname;
                let tparents: Vec<&OsStr> = tparents.to_vec();
                let tdir = self.dir(&tparents, false)?;
                let tdir = rustix::io::fcntl_dupfd_cloexec(tdir, 0)
                    .map_err(|e| self.fs_err("dup".into(), e))?;
                let dir = self.dir(&parents, true)?;
                let dir = rustix::io::fcntl_dupfd_cloexec(dir, 0)
                    .map_err(|e| self.fs_err("dup".into(), e))?;
                if tparents == parents && tname == name {
                    return Ok(());
                }
                self.clear(&dir, name, &path)?;
                // Flags 0: a symlink target is linked itself, never followed.
                rustix::fs::linkat(&tdir, tname, &dir, name, AtFlags::empty()).map_err(|e| {
                    self.err(format!(
                        "hard link {} -> {} (the target must be an earlier entry of this layer): {e}",
                        path.display(),
                        target.display()
                    ))
                })?;
            }
            tar::EntryType::Fifo => {
                let dir = self.dir(&parents, true)?;
                let dir = rustix::io::fcntl_dupfd_cloexec(dir, 0)
                    .map_err(|e| self.fs_err("dup".into(), e))?;
                self.clear(&dir, name, &path)?;
                rustix::fs::mknodat(
                    &dir,
                    name,
                    FileType::Fifo,
                    Mode::from_raw_mode(mode & 0o777),
                    0,
                )
                .map_err(|e| self.fs_err(format!("mkfifo {}", path.display()), e))?;
                let _ = rustix::fs::chownat(
                    &dir,
                    name,
                    uid_of(uid),
                    gid_of(gid),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(u32::MAX);
                let minor = header.device_minor().ok().flatten().unwrap_or(u32::MAX);
                if kind == tar::EntryType::Char && major == 0 && minor == 0 {
                    // Already an overlay whiteout.
                    let target = name.to_owned();
                    return self.whiteout(&parents, &target, &path);
                }
                return Err(self.err(format!(
                    "device node {} ({major}:{minor}) is not allowed in a layer",
                    path.display()
                )));
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                tracing::debug!(layer = self.digest, path = %path.display(), kind = ?other, "skipping tar entry of unsupported type");
            }
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        parents: &[&OsStr],
        target: &OsStr,
        path: &Path,
    ) -> Result<(), ImageError> {
        let dir = self.dir(parents, true)?;
        let dir =
            rustix::io::fcntl_dupfd_cloexec(dir, 0).map_err(|e| self.fs_err("dup".into(), e))?;
        self.clear(&dir, target, path)?;
        rustix::fs::mknodat(&dir, target, FileType::CharacterDevice, Mode::empty(), 0)
            .map_err(|e| self.fs_err(format!("whiteout {}", path.display()), e))
    }

    /// Removes whatever an earlier entry left at `name` (later entries win).
    fn clear(&mut self, dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<(), ImageError> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Ok(st) => {
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    // The cached parent may live under it.
                    self.cached_parent = None;
                }
                remove_all_at(dir.as_fd(), name)
                    .map_err(|e| self.fs_err(format!("replace {}", path.display()), e))
            }
            Err(e) => Err(self.fs_err(format!("stat {}", path.display()), e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        fd: &OwnedFd,
        uid: u64,
        gid: u64,
        mode: u32,
        xattrs: &[(String, Vec<u8>)],
        mtime: Option<u64>,
        path: &Path,
    ) -> Result<(), ImageError> {
        rustix::fs::fchown(fd, uid_of(uid), gid_of(gid))
            .map_err(|e| self.fs_err(format!("chown {}", path.display()), e))?;
        // After chown, which clears setuid/setgid.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
            .map_err(|e| self.fs_err(format!("chmod {}", path.display()), e))?;
        for (k, v) in xattrs {
            if let Err(e) = rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty()) {
                tracing::debug!(layer = self.digest, path = %path.display(), xattr = %k, error = %e, "cannot set xattr");
            }
        }
        if let Some(m) = mtime {
            let _ = rustix::fs::futimens(fd, &times(m));
        }
        Ok(())
    }

    /// PAX xattrs worth keeping: file capabilities and user.*; never
    /// `trusted.*` (an archive must not forge overlay whiteouts/opaque dirs).
    fn xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                    && (name == "security.capability" || name.starts_with("user."))
                {
                    out.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
        out
    }
}

fn uid_of(uid: u64) -> Option<rustix::fs::Uid> {
    u32::try_from(uid)
        .ok()
        .filter(|u| *u != u32::MAX)
        .map(rustix::fs::Uid::from_raw)
}

fn gid_of(gid: u64) -> Option<rustix::fs::Gid> {
    u32::try_from(gid)
        .ok()
        .filter(|g| *g != u32::MAX)
        .map(rustix::fs::Gid::from_raw)
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Opens `rel`'s parent under `root` without following any symlink, and
/// returns it with the last component.
fn open_parent<'a>(root: &Path, rel: &'a Path) -> Option<(OwnedFd, &'a OsStr)> {
    let comps = safe_components(rel).ok()?;
    let (name, parents) = comps.split_last()?;
    let mut cur = rustix::fs::open(root, DIR_FLAGS, Mode::empty()).ok()?;
    for c in parents {
        cur = rustix::fs::openat(&cur, *c, DIR_FLAGS, Mode::empty()).ok()?;
    }
    Some((cur, name))
}

/// Gives each implicit directory of the layer at `root` the mode and owner
/// of the same directory in the nearest lower layer that has it (`lowers`
/// top-most first), as containerd does for parents missing from a tar.
pub fn inherit_dir_attrs(root: &Path, implicit: &[PathBuf], lowers: &[PathBuf]) {
    for rel in implicit {
        let mut found = None;
        for lower in lowers {
            let Some((dir, name)) = open_parent(lower, rel) else {
                continue;
            };
            match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    found = Some(st);
                    break;
                }
                Ok(_) => break, // a whiteout or a file: the lower dir is gone
                Err(_) => {}
            }
        }
        let Some(st) = found else { continue };
        if let Some((dir, name)) = open_parent(root, rel)
            && let Ok(fd) = rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty())
        {
            let _ = rustix::fs::fchown(&fd, uid_of(st.st_uid.into()), gid_of(st.st_gid.into()));
            let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o7777));
        }
    }
}

/// Removes `name` under `dir`, recursively, never following symlinks.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let sub = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_owned());
        }
    }
    for n in names {
        remove_all_at(sub.as_fd(), &n)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    /// Builds a tar with raw headers so hostile names survive the builder.
    struct Tar(Vec<u8>);

    impl Tar {
        fn new() -> Self {
            Tar(Vec::new())
        }
        fn raw(
            &mut self,
            name: &[u8],
            kind: tar::EntryType,
            link: &[u8],
            data: &[u8],
            mode: u32,
        ) -> &mut Self {
            let mut h = tar::Header::new_gnu();
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name);
                gnu.linkname[..link.len()].copy_from_slice(link);
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_000_000);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
            self
        }
        fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.raw(name.as_bytes(), tar::EntryType::Regular, b"", data, 0o644)
        }
        fn dir(&mut self, name: &str) -> &mut Self {
            self.raw(name.as_bytes(), tar::EntryType::Directory, b"", b"", 0o755)
        }
        fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(
                name.as_bytes(),
                tar::EntryType::Symlink,
                target.as_bytes(),
                b"",
                0o777,
            )
        }
        fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(
                name.as_bytes(),
                tar::EntryType::Link,
                target.as_bytes(),
                b"",
                0o644,
            )
        }
        fn device(
            &mut self,
            name: &str,
            kind: tar::EntryType,
            major: u32,
            minor: u32,
        ) -> &mut Self {
            let mut h = tar::Header::new_gnu();
            h.set_path(name).unwrap();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(0o600);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut v = self.0.clone();
            v.extend(std::iter::repeat_n(0u8, 1024));
            v
        }
    }

    /// A sandbox: `outside/` must stay empty, `root/` is the layer root.
    struct Sandbox {
        dir: tempfile::TempDir,
    }

    impl Sandbox {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("root")).unwrap();
            std::fs::create_dir(dir.path().join("outside")).unwrap();
            Sandbox { dir }
        }
        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }
        fn outside(&self) -> PathBuf {
            self.dir.path().join("outside")
        }
        fn unpack(&self, tar: &Tar) -> Result<UnpackStats, ImageError> {
            unpack(&tar.bytes()[..], &self.root(), "sha256:test", 1 << 30)
        }
        fn assert_outside_untouched(&self) {
            let names: Vec<_> = std::fs::read_dir(self.outside())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(names.is_empty(), "something was written outside: {names:?}");
            let top: Vec<_> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(top.len(), 2, "unexpected entries next to the root: {top:?}");
        }
    }

    /// A directory, a 700-byte file and a last file of 17 bytes, without
    /// end-of-archive blocks; and where the last file's data ends.
    fn unpadded_layer() -> (Vec<u8>, usize) {
        let mut t = Tar::new();
        t.dir("etc/")
            .file("etc/a", &[b'a'; 700])
            .file("etc/b", b"last entry's data");
        let data_end = t.0.len() - (512 - 17);
        (t.0, data_end)
    }

    fn unpack_raw(s: &Sandbox, bytes: &[u8]) -> Result<UnpackStats, ImageError> {
        unpack(bytes, &s.root(), "sha256:test", 1 << 30)
    }

    /// Go's archive/tar ends the archive at EOF right after the last
    /// entry's data, anywhere in its padding, at a header boundary, and
    /// after one zero block.
    #[test]
    fn ends_that_go_accepts() {
        let (body, data_end) = unpadded_layer();
        let zeros = |n: usize| vec![0u8; n];
        for (what, bytes) in [
            ("right after the data", body[..data_end].to_vec()),
            ("inside the padding", body[..data_end + 100].to_vec()),
            (
                "one byte short of the boundary",
                body[..body.len() - 1].to_vec(),
            ),
            ("at the boundary", body.clone()),
            (
                "after one zero block",
                [&body[..], &zeros(512)[..]].concat(),
            ),
            (
                "after two zero blocks",
                [&body[..], &zeros(1024)[..]].concat(),
            ),
            (
                "after two zero blocks and anything",
                [&body[..], &zeros(1024)[..], &b"trailing"[..]].concat(),
            ),
        ] {
            let s = Sandbox::new();
            let st = unpack_raw(&s, &bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(st.entries, 3, "{what}");
            assert_eq!(
                std::fs::read(s.root().join("etc/b")).unwrap(),
                b"last entry's data",
                "{what}"
            );
            assert_eq!(std::fs::read(s.root().join("etc/a")).unwrap(), [b'a'; 700]);
        }
        // EOF in the padding of an entry is the end, whatever would follow.
        let s = Sandbox::new();
        let a_end = 512 + 512 + 700;
        let st = unpack_raw(&s, &body[..a_end + 10]).unwrap();
        assert_eq!(st.entries, 2);
        assert_eq!(std::fs::read(s.root().join("etc/a")).unwrap(), [b'a'; 700]);
    }

    /// ... and refuses EOF inside an entry's data, inside a header, inside
    /// the second zero block, and a non-zero block after a zero one.
    #[test]
    fn ends_that_go_refuses() {
        let (body, data_end) = unpadded_layer();
        let header_b = data_end - 17 - 512;
        let zeros = |n: usize| vec![0u8; n];
        let mut other = Tar::new();
        other.file("etc/c", b"c");
        for (what, bytes) in [
            (
                "inside the last entry's data",
                body[..data_end - 1].to_vec(),
            ),
            (
                "inside an earlier entry's data",
                body[..512 + 512 + 699].to_vec(),
            ),
            ("inside a header", body[..header_b + 300].to_vec()),
            ("in a header's zero tail", body[..header_b + 511].to_vec()),
            (
                "inside the second zero block",
                [&body[..], &zeros(512 + 100)[..]].concat(),
            ),
            (
                "a header after a zero block",
                [&body[..], &zeros(512)[..], &other.0[..]].concat(),
            ),
        ] {
            let s = Sandbox::new();
            let e = unpack_raw(&s, &bytes).expect_err(what);
            assert!(matches!(e, ImageError::UnsafeLayer { .. }), "{what}: {e}");
        }
        // A last entry whose data fills its blocks has no padding to miss.
        let mut t = Tar::new();
        t.file("full", &[b'f'; 512]);
        let s = Sandbox::new();
        let e = unpack_raw(&s, &t.0[..512 + 511]).expect_err("cut in aligned data");
        assert!(matches!(e, ImageError::UnsafeLayer { .. }), "{e}");
        unpack_raw(&s, &t.0).unwrap();
    }

    #[test]
    fn plain_layer() {
        let s = Sandbox::new();
        let mut t = Tar::new();
        t.dir("bin/")
            .file("bin/hello", b"hi")
            .raw(b"bin/suid", tar::EntryType::Regular, b"", b"x", 0o4755)
            .symlink("bin/sh", "/bin/busybox")
            .hardlink("bin/hello2", "bin/hello")
            .file("./etc/passwd", b"root:x:0:0::/:/bin/sh\n");
        let st = s.unpack(&t).unwrap();
        assert_eq!(st.bytes, 2 + 1 + 22);
        let r = s.root();
        assert_eq!(std::fs::read(r.join("bin/hello")).unwrap(), b"hi");
        assert_eq!(
            std::fs::read_link(r.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(
            std::fs::metadata(r.join("bin/hello")).unwrap().ino(),
            std::fs::metadata(r.join("bin/hello2")).unwrap().ino()
        );
        assert_eq!(
            std::fs::metadata(r.join("bin/suid"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o4755
        );
        assert_eq!(
            std::fs::metadata(r.join("bin/hello")).unwrap().mtime(),
            1_000_000
        );
        s.assert_outside_untouched();
    }

    #[test]
    fn dotdot_is_refused() {
        let s = Sandbox::new();
        let mut t = Tar::new();
        t.file("../outside/evil", b"x");
        assert!(matches!(s.unpack(&t), Err(ImageError::UnsafeLayer { .. })));
        let mut t = Tar::new();
        t.file("a/../../outside/evil", b"x");
        assert!(matches!(s.unpack(&t), Err(ImageError::UnsafeLayer { .. })));
        s.assert_outside_untouched();
    }

    #[test]
    fn absolute_paths_stay_inside() {
        let s = Sandbox::new();
        let outside = s.outside();
        let abs = format!("{}/evil", outside.display());
        let mut t = Tar::new();
        t.file(&abs, b"x").file("/etc/abs", b"y");
        s.unpack(&t).unwrap();
        assert_eq!(std::fs::read(s.root().join("etc/abs")).unwrap(), b"y");
        assert!(s.root().join(abs.trim_start_matches('/')).exists());
        s.assert_outside_untouched();
    }

    #[test]
    fn symlink_parent_is_never_followed() {
        let s = Sandbox::new();
        let outside = s.outside();
        let mut t = Tar::new();
        t.symlink("escape", outside.to_str().unwrap())
            .file("escape/evil", b"x");
        let e = s.unpack(&t).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let mut t = Tar::new();
        t.symlink("rel", "../outside").file("rel/evil", b"x");
        assert!(s.unpack(&t).is_err());
        s.assert_outside_untouched();
    }

    #[test]
    fn symlink_then_file_of_same_name_replaces_the_link() {
        let s = Sandbox::new();
        let outside = s.outside();
        let mut t = Tar::new();
        t.symlink("victim", &format!("{}/victim", outside.display()))
            .file("victim", b"inside");
        s.unpack(&t).unwrap();
        assert_eq!(std::fs::read(s.root().join("victim")).unwrap(), b"inside");
        assert!(
            !std::fs::symlink_metadata(s.root().join("victim"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        s.assert_outside_untouched();
    }

    #[test]
    fn hardlinks_cannot_escape() {
        let s = Sandbox::new();
        std::fs::write(s.dir.path().join("secret"), b"s").unwrap();
        let mut t = Tar::new();
        t.hardlink("stolen", "../secret");
        assert!(s.unpack(&t).is_err());
        // Absolute target: resolved inside the root, where it does not exist.
        let mut t = Tar::new();
        t.hardlink("stolen", s.dir.path().join("secret").to_str().unwrap());
        assert!(s.unpack(&t).is_err());
        // Through a symlink to outside: refused (parent is a symlink).
        let mut t = Tar::new();
        t.symlink("up", s.dir.path().to_str().unwrap())
            .hardlink("stolen", "up/secret");
        assert!(s.unpack(&t).is_err());
        // A hard link to a symlink links the symlink, not what it points to.
        let mut t = Tar::new();
        t.symlink("sl", s.dir.path().join("secret").to_str().unwrap())
            .hardlink("hl", "sl");
        s.unpack(&t).unwrap();
        assert!(
            std::fs::symlink_metadata(s.root().join("hl"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::metadata(s.dir.path().join("secret"))
                .unwrap()
                .nlink(),
            1
        );
        std::fs::remove_file(s.dir.path().join("secret")).unwrap();
        s.assert_outside_untouched();
    }

    #[test]
    fn devices_are_refused_whiteouts_are_written() {
        let s = Sandbox::new();
        let mut t = Tar::new();
        t.device("dev/sda", tar::EntryType::Block, 8, 0);
        assert!(matches!(s.unpack(&t), Err(ImageError::UnsafeLayer { .. })));
        let mut t = Tar::new();
        t.device("dev/mem", tar::EntryType::Char, 1, 1);
        assert!(s.unpack(&t).is_err());
        let s = Sandbox::new();
        let mut t = Tar::new();
        t.dir("etc/")
            .file("etc/keep", b"k")
            .file("etc/.wh.removed", b"")
            .dir("opaque/")
            .file("opaque/.wh..wh..opq", b"")
            .file("opaque/new", b"n")
            .file(".wh..wh.plnk", b"")
            .device("cdev00", tar::EntryType::Char, 0, 0);
        s.unpack(&t).unwrap();
        let r = s.root();
        let wh = std::fs::symlink_metadata(r.join("etc/removed")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!r.join("etc/.wh.removed").exists());
        assert!(
            std::fs::symlink_metadata(r.join("cdev00"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let mut buf = [0u8; 8];
        let n = rustix::fs::getxattr(r.join("opaque"), "trusted.overlay.opaque", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y");
        assert!(!r.join(".wh..wh.plnk").exists());
        s.assert_outside_untouched();
    }

    #[test]
    fn forged_trusted_xattrs_are_dropped() {
        let s = Sandbox::new();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
            ("SCHILY.xattr.user.note", &b"ok"[..]),
        ])
        .unwrap();
        b.append_data(&mut h, "d/f", &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        unpack(&data[..], &s.root(), "sha256:test", 1 << 20).unwrap();
        let mut buf = [0u8; 8];
        assert!(
            rustix::fs::getxattr(s.root().join("d/f"), "trusted.overlay.opaque", &mut buf).is_err()
        );
        s.assert_outside_untouched();
    }

    #[test]
    fn implicit_parents_inherit_lower_attributes() {
        let lower = Sandbox::new();
        let mut t = Tar::new();
        t.raw(b"tmp/", tar::EntryType::Directory, b"", b"", 0o1777)
            .raw(b"opt/", tar::EntryType::Directory, b"", b"", 0o700);
        lower.unpack(&t).unwrap();
        let upper = Sandbox::new();
        let mut t = Tar::new();
        t.file("tmp/.wh.x", b"")
            .file("opt/y", b"y")
            .raw(b"srv/", tar::EntryType::Directory, b"", b"", 0o750)
            .file("srv/z", b"z")
            .file("new/w", b"w");
        let st = upper.unpack(&t).unwrap();
        let mut implicit = st.implicit_dirs.clone();
        implicit.sort();
        assert_eq!(
            implicit,
            vec![
                PathBuf::from("new"),
                PathBuf::from("opt"),
                PathBuf::from("tmp")
            ]
        );
        inherit_dir_attrs(&upper.root(), &st.implicit_dirs, &[lower.root()]);
        let mode = |p: &str| {
            std::fs::metadata(upper.root().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("opt"), 0o700);
        assert_eq!(mode("srv"), 0o750, "explicit entries keep their own mode");
        assert_eq!(mode("new"), 0o755);
    }

    #[test]
    fn decompression_bomb_is_capped() {
        let s = Sandbox::new();
        let mut t = Tar::new();
        t.file("big", &vec![0u8; 1 << 20]);
        let e = unpack(&t.bytes()[..], &s.root(), "sha256:test", 1000).unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
    }

    #[test]
    fn file_replaces_directory_and_garbage_is_refused() {
        let s = Sandbox::new();
        let mut t = Tar::new();
        t.dir("x/").file("x/y", b"1").file("x", b"now a file");
        s.unpack(&t).unwrap();
        assert_eq!(std::fs::read(s.root().join("x")).unwrap(), b"now a file");
        let junk = vec![0x42u8; 2048];
        assert!(unpack(&junk[..], &s.root(), "sha256:test", 1 << 20).is_err());
    }
}
