//! `pivot_root` into the rootfs and the old root detached.

use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::{SetupResult, sys};
use crate::runtime::syscall::Syscall;

/// Makes the rootfs the root of the mount namespace and drops the old root.
pub fn pivot(k: &dyn Syscall, rootfs: &Path) -> SetupResult<()> {
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
    sys(k.fchdir(new.as_fd()), || "chdir to rootfs".into())?;
    sys(k.pivot_root(Path::new("."), Path::new(".")), || {
        format!("pivot_root to {}", rootfs.display())
    })?;
    sys(k.fchdir(old.as_fd()), || "chdir to old root".into())?;
    sys(
        k.mount(
            None,
            Path::new("."),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        ),
        || "make old root a slave".into(),
    )?;
    sys(k.umount2(Path::new("."), MntFlags::MNT_DETACH), || {
        "detach old root".into()
    })?;
    sys(k.chdir(Path::new("/")), || "chdir /".into())?;
    Ok(())
}
