//! CriLogWriter: a container's stdout/stderr written to a kubelet log file in
//! the CRI log format, `<RFC3339Nano time> <stream> <P|F> <text>\n`, one
//! record per line; a line longer than the buffer, or cut by the end of the
//! stream, is written in parts tagged `P` (partial), the last one `F`.
//!
//! berthd asks for it with the stdio URI `cri-log:///path/to/file.log`. The
//! process gets the write end of a pipe; a small thread in the shim reads
//! the other end and appends records to the file, so logging goes on while
//! berthd is down or restarting.
//!
//! Log rotation (ReopenContainerLog): kubelet renames the file away and
//! berthd creates a new one at the path; before each batch of records the
//! writer compares the path's inode with its open file's and reopens the
//! path when they differ (or the path is gone).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use crate::attach::{AttachHub, Tap};
use crate::error::{Result, ShimError};

/// The stdio URI scheme of CRI log files.
pub const SCHEME: &str = "cri-log://";
/// Lines longer than this are split into partial records (as containerd's
/// 16 KiB default `max_container_log_line_size`).
const MAX_LINE: usize = 16 * 1024;
const STACK: usize = 64 * 1024;

/// Opens `path` for appending and returns the pipe end the process writes
/// `stream` ("stdout" or "stderr") to. An empty path logs nothing (the
/// output only goes to attach sessions). Everything read also goes to
/// `hub`'s attach sessions.
pub fn open(path: &str, stream: &'static str, hub: Option<Arc<AttachHub>>) -> Result<OwnedFd> {
    let file = if path.is_empty() {
        None
    } else {
        Some(LogFile::open(path).map_err(ShimError::io(format!("open log file {path}")))?)
    };
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(ShimError::sys("pipe for the CRI log"))?;
    let input = Tap::new(File::from(reader), stream, hub);
    std::thread::Builder::new()
        .name(format!("log-{stream}"))
        .stack_size(STACK)
        .spawn(move || match file {
            Some(file) => copy_lines(input, file, stream),
            None => copy_lines(input, std::io::sink(), stream),
        })
        .map_err(ShimError::io("spawn log thread"))?;
    Ok(writer)
}

/// The log file, reopened when the path names another file (rotation).
struct LogFile {
    path: String,
    file: File,
    ino: (u64, u64),
}

impl LogFile {
    fn open(path: &str) -> std::io::Result<LogFile> {
        use std::os::unix::fs::MetadataExt;
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        let m = file.metadata()?;
        Ok(LogFile {
            path: path.to_string(),
            file,
            ino: (m.dev(), m.ino()),
        })
    }

    fn check_rotated(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let same = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.ino)
            .unwrap_or(false);
        if !same && let Ok(new) = LogFile::open(&self.path) {
            *self = new;
        }
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Where records go; a rotating log file checks its path before each batch.
trait RecordSink: Write {
    fn before_batch(&mut self) {}
}

impl RecordSink for LogFile {
    fn before_batch(&mut self) {
        self.check_rotated();
    }
}

impl RecordSink for Vec<u8> {}

impl RecordSink for std::io::Sink {}

impl<T: RecordSink + ?Sized> RecordSink for &mut T {
    fn before_batch(&mut self) {
        (**self).before_batch();
    }
}

/// Copies `input` to `out` as CRI log records until EOF.
fn copy_lines(mut input: impl Read, mut out: impl RecordSink, stream: &str) {
    let mut buf = vec![0u8; MAX_LINE];
    let mut pending = 0usize;
    loop {
        let n = match input.read(&mut buf[pending..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending += n;
        out.before_batch();
        let mut start = 0;
        while let Some(pos) = buf[start..pending].iter().position(|&b| b == b'\n') {
            let _ = write_record(&mut out, stream, 'F', &buf[start..start + pos]);
            start += pos + 1;
        }
        if start == 0 && pending == buf.len() {
            let _ = write_record(&mut out, stream, 'P', &buf[..pending]);
            pending = 0;
        } else {
            buf.copy_within(start..pending, 0);
            pending -= start;
        }
    }
    if pending > 0 {
        let _ = write_record(&mut out, stream, 'F', &buf[..pending]);
    }
}

fn write_record(out: &mut impl Write, stream: &str, tag: char, text: &[u8]) -> std::io::Result<()> {
    let mut rec = Vec::with_capacity(text.len() + 48);
    rec.extend_from_slice(rfc3339_nano(std::time::SystemTime::now()).as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_bytes());
    rec.push(b' ');
    rec.push(tag as u8);
    rec.push(b' ');
    rec.extend_from_slice(text);
    rec.push(b'\n');
    // One write per record: O_APPEND keeps stdout and stderr records whole.
    out.write_all(&rec)
}

/// `2006-01-02T15:04:05.999999999Z` (UTC, nanoseconds, trailing zeros kept).
pub fn rfc3339_nano(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339_nano(leap).starts_with("2000-02-29T00:00:00"));
    }

    fn records(input: &[u8]) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        copy_lines(input, &mut out, "stdout");
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let _ts = it.next().unwrap();
                (
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                    it.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn full_and_partial_lines() {
        let r = records(b"hello\nworld\n\nlast");
        let tags: Vec<_> = r
            .iter()
            .map(|(s, t, x)| (s.as_str(), t.as_str(), x.as_str()))
            .collect();
        assert_eq!(
            tags,
            vec![
                ("stdout", "F", "hello"),
                ("stdout", "F", "world"),
                ("stdout", "F", ""),
                ("stdout", "F", "last")
            ]
        );
        let long = vec![b'x'; MAX_LINE + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let r = records(&input);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1, "P");
        assert_eq!(r[0].2.len(), MAX_LINE);
        assert_eq!(r[1].1, "F");
        assert_eq!(r[1].2.len(), 10);
    }

    #[test]
    fn rotation_reopens_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let p = path.to_str().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let file = LogFile::open(p).unwrap();
        let t = std::thread::spawn(move || copy_lines(File::from(r), file, "stdout"));
        let mut w = File::from(w);
        w.write_all(b"before\n").unwrap();
        // Wait until the record is written, then rotate as kubelet does.
        while std::fs::read_to_string(&path).unwrap().is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        std::fs::File::create(&path).unwrap();
        w.write_all(b"after\n").unwrap();
        drop(w);
        t.join().unwrap();
        let old = std::fs::read_to_string(dir.path().join("0.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.ends_with(" stdout F before\n"), "{old}");
        assert!(new.ends_with(" stdout F after\n"), "{new}");
        assert!(!old.contains("after"));
    }
}
