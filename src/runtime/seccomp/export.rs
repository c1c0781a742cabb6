//! Getting the compiled program out of libseccomp: its BPF through a memfd
//! (`seccomp_export_bpf_mem` needs libseccomp 2.6; Debian 12 has 2.5), and
//! the pseudo filter code text for tests and debugging.

use std::io::{Read, Seek, SeekFrom};

use libseccomp::ScmpFilterContext;
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::SeccompError;

fn export_with(
    write: impl FnOnce(&std::fs::File) -> Result<(), libseccomp::error::SeccompError>,
) -> Result<Vec<u8>, SeccompError> {
    let fd = memfd_create("berth-seccomp", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| SeccompError::Export(e.into()))?;
    let mut file = std::fs::File::from(fd);
    write(&file).map_err(|e| SeccompError::library("export the filter", e))?;
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut buf))
        .map_err(SeccompError::Export)?;
    Ok(buf)
}

/// The raw BPF program (`struct sock_filter` array) of the filter.
pub fn bpf(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let raw = export_with(|f| ctx.export_bpf(f))?;
    decode(&raw)
}

/// Splits native-endian `struct sock_filter` records (8 bytes each).
pub fn decode(raw: &[u8]) -> Result<Vec<libc::sock_filter>, SeccompError> {
    const SIZE: usize = std::mem::size_of::<libc::sock_filter>();
    if !raw.len().is_multiple_of(SIZE) {
        return Err(SeccompError::Export(std::io::Error::other(format!(
            "BPF export of {} bytes is not a whole number of instructions",
            raw.len()
        ))));
    }
    Ok(raw
        .chunks_exact(SIZE)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// libseccomp's human-readable pseudo filter code of the filter.
pub fn pfc(ctx: &ScmpFilterContext) -> Result<String, SeccompError> {
    let raw = export_with(|f| ctx.export_pfc(f))?;
    String::from_utf8(raw).map_err(|e| SeccompError::Export(std::io::Error::other(e)))
}
