//! The seccomp syscall layer: the only `unsafe` of this module.

use nix::errno::Errno;

/// Why `seccomp(SECCOMP_SET_MODE_FILTER)` failed.
pub enum InstallFailure {
    Errno(Errno),
    /// TSYNC: the id of a thread that could not be synchronized.
    Thread(i32),
}

/// Installs `filter` on the calling thread with `flags`. Allocates nothing
/// and calls only the raw syscall: safe between fork and exec.
pub fn set_mode_filter(
    flags: libc::c_ulong,
    filter: &[libc::sock_filter],
) -> Result<(), InstallFailure> {
    let len = u16::try_from(filter.len()).map_err(|_| InstallFailure::Errno(Errno::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `len` valid `sock_filter`s borrowed for the
    // whole call; the kernel only reads them (it copies the program) and
    // keeps no pointer after the call returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    match ret {
        0 => Ok(()),
        r if r < 0 => Err(InstallFailure::Errno(Errno::last())),
        tid => Err(InstallFailure::Thread(tid as i32)),
    }
}
