//! The rootfs set-up's unit tests: pure parts, and the exact kernel calls
//! for each kind of spec mount, recorded by `RecordingSyscall` on a
//! temporary rootfs (no root needed).
use super::devices::device_list;
use super::*;
use std::path::PathBuf;

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

// ---- the exact kernel calls, recorded on a temporary rootfs ----

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::FsFlags;
use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceType, Mount, MountBuilder, RootBuilder,
    SpecBuilder,
};

use crate::runtime::syscall::recording::{Call, RecordingSyscall};

/// A temporary directory with `rootfs/` (the container's) and `host/` (bind sources).
struct Fixture {
    dir: tempfile::TempDir,
    k: RecordingSyscall,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::create_dir(dir.path().join("host")).unwrap();
        let k = RecordingSyscall::new(&dir.path().join("rootfs"));
        Fixture { dir, k }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn host(&self) -> String {
        self.dir.path().join("host").display().to_string()
    }

    fn root_fd(&self) -> OwnedFd {
        nix::fcntl::open(
            &self.rootfs(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    /// The calls for one spec mount.
    fn mount(&self, m: &Mount, userns: bool, cgroup_file: &str) -> SetupResult<Vec<Call>> {
        self.mount_idmapped(m, None, userns, cgroup_file)
    }

    fn mount_idmapped(
        &self,
        m: &Mount,
        tree: Option<&OwnedFd>,
        userns: bool,
        cgroup_file: &str,
    ) -> SetupResult<Vec<Call>> {
        let spec = Spec::default();
        let rootfs = self.rootfs();
        let ctx = RootfsContext {
            sys: &self.k,
            spec: &spec,
            rootfs: &rootfs,
            userns,
            cgroup_file,
            idmapped: &[],
        };
        super::mounts::mount_entry(self.root_fd().as_fd(), m, tree, &ctx)?;
        Ok(self.k.take())
    }
}

fn spec_mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

fn mount(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Call {
    Call::Mount {
        source: src.map(str::to_owned),
        target: target.to_owned(),
        fstype: fstype.map(str::to_owned),
        flags,
        data: data.map(str::to_owned),
    }
}

fn remount(target: &str, flags: MsFlags) -> Call {
    mount(
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None,
    )
}

const BIND: MsFlags = MsFlags::MS_BIND;
const RBIND: MsFlags = MsFlags::MS_BIND.union(MsFlags::MS_REC);

#[test]
fn bind_mounts_read_only_and_recursive_read_only() {
    let f = Fixture::new();
    let host = f.host();
    let ro = MsFlags::MS_RDONLY;
    let nosuid_ro = MsFlags::MS_RDONLY.union(MsFlags::MS_NOSUID);
    let cases: Vec<(&[&str], Vec<Call>)> = vec![
        (
            &["bind"],
            vec![mount(Some(&host), "$ROOT/data", None, BIND, None)],
        ),
        (
            &["rbind", "ro"],
            vec![
                mount(Some(&host), "$ROOT/data", None, RBIND, None),
                remount("$ROOT/data", ro),
            ],
        ),
        (
            &["rbind", "ro", "nosuid", "rprivate"],
            vec![
                mount(Some(&host), "$ROOT/data", None, RBIND, None),
                remount("$ROOT/data", nosuid_ro),
                mount(
                    None,
                    "$ROOT/data",
                    None,
                    MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                    None,
                ),
            ],
        ),
        (
            &["rbind", "rro"],
            vec![
                mount(Some(&host), "$ROOT/data", None, RBIND, None),
                remount("$ROOT/data", ro),
                Call::MountSetattr {
                    path: "$ROOT/data".into(),
                    recursive: true,
                    set: libc::MOUNT_ATTR_RDONLY,
                },
            ],
        ),
    ];
    for (opts, want) in cases {
        let m = spec_mount("/data", "bind", &host, opts);
        assert_eq!(f.mount(&m, false, "").unwrap(), want, "options {opts:?}");
    }
}

#[test]
fn bind_remount_refused_keeps_the_locked_flags() {
    // In a user namespace the kernel refuses to drop a locked nodev/nosuid:
    // the remount is tried again with the flags the mount already has.
    let mut f = Fixture::new();
    f.k.statvfs = FsFlags::ST_NODEV | FsFlags::ST_NOSUID;
    let host = f.host();
    f.k.fail_once(
        |c| matches!(c, Call::Mount { flags, .. } if flags.contains(MsFlags::MS_REMOUNT)),
        Errno::EPERM,
    );
    let m = spec_mount("/data", "bind", &host, &["rbind", "ro"]);
    assert_eq!(
        f.mount(&m, true, "").unwrap(),
        vec![
            mount(Some(&host), "$ROOT/data", None, RBIND, None),
            remount("$ROOT/data", MsFlags::MS_RDONLY),
            remount(
                "$ROOT/data",
                MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID
            ),
        ]
    );
}

#[test]
fn a_bind_of_a_file_makes_a_file_and_an_idmapped_bind_is_attached() {
    let f = Fixture::new();
    let file = f.dir.path().join("host/resolv.conf");
    std::fs::write(&file, "nameserver 127.0.0.1\n").unwrap();
    let src = file.display().to_string();
    let m = spec_mount("/etc/resolv.conf", "bind", &src, &["bind", "ro"]);
    assert_eq!(
        f.mount(&m, false, "").unwrap(),
        vec![
            mount(Some(&src), "$ROOT/etc/resolv.conf", None, BIND, None),
            remount("$ROOT/etc/resolv.conf", MsFlags::MS_RDONLY),
        ]
    );
    assert!(f.rootfs().join("etc/resolv.conf").is_file());
    // The helper made a detached idmapped tree: it is attached, not bound.
    let tree = f.root_fd();
    let host = f.host();
    let m = spec_mount("/data", "bind", &host, &["rbind"]);
    assert_eq!(
        f.mount_idmapped(&m, Some(&tree), true, "").unwrap(),
        vec![Call::MoveMount("$ROOT/data".into())]
    );
}

#[test]
fn filesystem_mounts_tmpfs_proc_sysfs_devpts_mqueue() {
    let f = Fixture::new();
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let cases = vec![
        (
            spec_mount(
                "/tmp",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=1777", "size=65536k"],
            ),
            vec![mount(
                Some("tmpfs"),
                "$ROOT/tmp",
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
                Some("mode=1777,size=65536k"),
            )],
        ),
        (
            spec_mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            vec![mount(
                Some("proc"),
                "$ROOT/proc",
                Some("proc"),
                nosuid_nodev_noexec,
                None,
            )],
        ),
        (
            spec_mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
            vec![mount(
                Some("sysfs"),
                "$ROOT/sys",
                Some("sysfs"),
                nosuid_nodev_noexec | MsFlags::MS_RDONLY,
                None,
            )],
        ),
        (
            spec_mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            vec![mount(
                Some("devpts"),
                "$ROOT/dev/pts",
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            )],
        ),
        (
            // `defaults` adds nothing; a shared propagation is its own call.
            spec_mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["defaults", "nosuid", "rshared"],
            ),
            vec![
                mount(
                    Some("mqueue"),
                    "$ROOT/dev/mqueue",
                    Some("mqueue"),
                    MsFlags::MS_NOSUID,
                    None,
                ),
                mount(
                    None,
                    "$ROOT/dev/mqueue",
                    None,
                    MsFlags::MS_SHARED | MsFlags::MS_REC,
                    None,
                ),
            ],
        ),
    ];
    for (m, want) in cases {
        assert_eq!(f.mount(&m, false, "").unwrap(), want, "{m:?}");
    }
}

#[test]
fn sysfs_in_a_user_namespace_falls_back_to_a_read_only_rbind() {
    let f = Fixture::new();
    let m = spec_mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev"]);
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    f.k.fail_once(
        |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "sysfs"),
        Errno::EPERM,
    );
    assert_eq!(
        f.mount(&m, true, "").unwrap(),
        vec![
            mount(Some("sysfs"), "$ROOT/sys", Some("sysfs"), flags, None),
            mount(Some("/sys"), "$ROOT/sys", None, RBIND, None),
            remount("$ROOT/sys", flags | MsFlags::MS_RDONLY),
        ]
    );
    // Without a user namespace the EPERM is the answer.
    f.k.fail_once(
        |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "sysfs"),
        Errno::EPERM,
    );
    let err = f.mount(&m, false, "").unwrap_err();
    assert!(
        err.contains("mount sysfs on /sys") && err.contains("EPERM"),
        "{err}"
    );
}

#[test]
fn a_relative_destination_is_refused_before_any_call() {
    let f = Fixture::new();
    let m = spec_mount("data", "tmpfs", "tmpfs", &[]);
    assert!(f.mount(&m, false, "").unwrap_err().contains("not absolute"));
    assert_eq!(f.k.take(), vec![]);
}

const HYBRID: &str = "\
30 22 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 22 0:40 / /other/cgroup rw - cgroup cgroup rw,pids
";

#[test]
fn cgroup_v1_mount_is_a_tmpfs_of_the_container_cgroups() {
    let mut f = Fixture::new();
    f.k.mountinfo = HYBRID.into();
    let file = "4:cpu,cpuacct:/berth/c1\n3:memory:/berth/c1\n0::/berth/c1\n";
    let m = spec_mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", "ro"],
    );
    let fl = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let ro = fl | MsFlags::MS_RDONLY;
    assert_eq!(
        f.mount(&m, false, file).unwrap(),
        vec![
            mount(
                Some("tmpfs"),
                "$ROOT/sys/fs/cgroup",
                Some("tmpfs"),
                fl | MsFlags::MS_RELATIME,
                Some("mode=755")
            ),
            mount(
                Some("/sys/fs/cgroup/unified/berth/c1"),
                "$ROOT/sys/fs/cgroup/unified",
                None,
                RBIND,
                None
            ),
            remount("$ROOT/sys/fs/cgroup/unified", ro),
            mount(
                Some("/sys/fs/cgroup/cpu,cpuacct/berth/c1"),
                "$ROOT/sys/fs/cgroup/cpu,cpuacct",
                None,
                RBIND,
                None
            ),
            remount("$ROOT/sys/fs/cgroup/cpu,cpuacct", ro),
            Call::Symlink("$ROOT/sys/fs/cgroup/cpu".into(), "cpu,cpuacct".into()),
            Call::Symlink("$ROOT/sys/fs/cgroup/cpuacct".into(), "cpu,cpuacct".into()),
            mount(
                Some("/sys/fs/cgroup/memory/berth/c1"),
                "$ROOT/sys/fs/cgroup/memory",
                None,
                RBIND,
                None
            ),
            remount("$ROOT/sys/fs/cgroup/memory", ro),
            mount(
                None,
                "$ROOT/sys/fs/cgroup",
                None,
                MsFlags::MS_REMOUNT | ro | MsFlags::MS_RELATIME,
                Some("mode=755")
            ),
        ]
    );
}

#[test]
fn cgroup_v2_mount_is_a_bind_of_the_container_cgroup() {
    let mut f = Fixture::new();
    f.k.mountinfo = "30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n".into();
    let m = spec_mount(
        "/sys/fs/cgroup",
        "cgroup2",
        "cgroup",
        &["nosuid", "noexec", "nodev", "ro"],
    );
    let ro = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV | MsFlags::MS_RDONLY;
    assert_eq!(
        f.mount(&m, false, "0::/kubepods/pod1/c1\n").unwrap(),
        vec![
            mount(
                Some("/sys/fs/cgroup/kubepods/pod1/c1"),
                "$ROOT/sys/fs/cgroup",
                None,
                RBIND,
                None
            ),
            remount("$ROOT/sys/fs/cgroup", ro),
        ]
    );
}

#[test]
fn devices_are_made_with_mknod_or_bound_in_a_user_namespace() {
    let spec = SpecBuilder::default()
        .linux(
            LinuxBuilder::default()
                .devices(vec![
                    LinuxDeviceBuilder::default()
                        .path("/dev/fuse")
                        .typ(LinuxDeviceType::C)
                        .major(10)
                        .minor(229)
                        .file_mode(0o640u32)
                        .uid(0u32)
                        .gid(5u32)
                        .build()
                        .unwrap(),
                ])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let names = ["null", "zero", "full", "random", "urandom", "tty", "fuse"];
    for userns in [false, true] {
        let f = Fixture::new();
        let rootfs = f.rootfs();
        let ctx = RootfsContext {
            sys: &f.k,
            spec: &spec,
            rootfs: &rootfs,
            userns,
            cgroup_file: "",
            idmapped: &[],
        };
        super::devices::create_devices(f.root_fd().as_fd(), &ctx).unwrap();
        let mut want = Vec::new();
        for (n, (major, minor)) in
            names
                .iter()
                .zip([(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (10, 229)])
        {
            let path = format!("$ROOT/dev/{n}");
            want.push(Call::Unlink(path.clone()));
            if userns {
                want.push(mount(Some(&format!("/dev/{n}")), &path, None, BIND, None));
                continue;
            }
            let mode = if *n == "fuse" { 0o640 } else { 0o666 };
            want.push(Call::Mknod {
                path: path.clone(),
                kind: SFlag::S_IFCHR,
                mode,
                dev: nix::sys::stat::makedev(major, minor),
            });
            want.push(Call::Chmod(path.clone(), mode));
            if *n == "fuse" {
                want.push(Call::Chown(path, Some(0), Some(5)));
            }
        }
        assert_eq!(f.k.take(), want, "userns {userns}");
    }
}

#[test]
fn dev_symlinks_replace_ptmx_and_add_core_where_the_host_has_kcore() {
    let mut f = Fixture::new();
    f.k.existing = vec![PathBuf::from("/proc/kcore")];
    super::devices::dev_symlinks(&f.k, f.root_fd().as_fd()).unwrap();
    let link = |n: &str, t: &str| Call::Symlink(format!("$ROOT/dev/{n}"), t.into());
    assert_eq!(
        f.k.take(),
        vec![
            link("fd", "/proc/self/fd"),
            link("stdin", "/proc/self/fd/0"),
            link("stdout", "/proc/self/fd/1"),
            link("stderr", "/proc/self/fd/2"),
            Call::Unlink("$ROOT/dev/ptmx".into()),
            link("ptmx", "pts/ptmx"),
            link("core", "/proc/kcore"),
        ]
    );
}

#[test]
fn masked_and_read_only_paths_and_a_read_only_root() {
    let f = Fixture::new();
    let r = f.rootfs();
    std::fs::create_dir_all(r.join("proc/acpi")).unwrap();
    std::fs::create_dir_all(r.join("proc/sys")).unwrap();
    std::fs::write(r.join("proc/kcore"), "").unwrap();
    let spec = SpecBuilder::default()
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(true)
                .build()
                .unwrap(),
        )
        .linux(
            LinuxBuilder::default()
                .masked_paths(vec![
                    "/proc/kcore".into(),
                    "/proc/acpi".into(),
                    "/proc/missing".into(),
                ])
                .readonly_paths(vec!["/proc/sys".into(), "/proc/gone".into()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    finish(&f.k, &spec, &r).unwrap();
    let locked = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    assert_eq!(
        f.k.take(),
        vec![
            mount(Some("/dev/null"), "$ROOT/proc/kcore", None, BIND, None),
            mount(
                Some("tmpfs"),
                "$ROOT/proc/acpi",
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None
            ),
            mount(Some("$ROOT/proc/sys"), "$ROOT/proc/sys", None, RBIND, None),
            remount("$ROOT/proc/sys", locked),
            remount("$ROOT", MsFlags::MS_RDONLY),
        ]
    );
}

#[test]
fn prepare_sets_root_propagation_makes_the_parent_private_and_binds_the_rootfs() {
    let f = Fixture::new();
    let rootfs = f.rootfs();
    let parent = f.dir.path().display().to_string();
    let spec = SpecBuilder::default()
        .linux(
            LinuxBuilder::default()
                .rootfs_propagation("rshared")
                .build()
                .unwrap(),
        )
        .mounts(vec![spec_mount("/proc", "proc", "proc", &[])])
        .build()
        .unwrap();
    // The rootfs is no mount point: MS_PRIVATE goes to the mount above it.
    f.k.fail_once(|c| matches!(c, Call::Mount { target, flags, .. } if target == "$ROOT" && *flags == MsFlags::MS_PRIVATE), Errno::EINVAL);
    let ctx = RootfsContext {
        sys: &f.k,
        spec: &spec,
        rootfs: &rootfs,
        userns: false,
        cgroup_file: "",
        idmapped: &[],
    };
    prepare(&ctx).unwrap();
    let calls = f.k.take();
    assert_eq!(
        calls[..5],
        [
            mount(None, "/", None, MsFlags::MS_SHARED | MsFlags::MS_REC, None),
            mount(None, "$ROOT", None, MsFlags::MS_PRIVATE, None),
            mount(None, &parent, None, MsFlags::MS_PRIVATE, None),
            mount(Some("$ROOT"), "$ROOT", None, RBIND, None),
            mount(
                Some("proc"),
                "$ROOT/proc",
                Some("proc"),
                MsFlags::empty(),
                None
            ),
        ]
    );
    // Then the devices and the /dev links.
    assert_eq!(calls[5], Call::Unlink("$ROOT/dev/null".into()));
    assert!(matches!(calls.last(), Some(Call::Symlink(p, _)) if p.starts_with("$ROOT/dev/")));
    // The default (no rootfsPropagation) is rslave.
    let spec = Spec::default();
    let ctx = RootfsContext { spec: &spec, ..ctx };
    prepare(&ctx).unwrap();
    assert_eq!(
        f.k.take()[0],
        mount(None, "/", None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
    );
}

#[test]
fn pivot_root_into_the_rootfs_and_detach_the_old_root() {
    let f = Fixture::new();
    pivot(&f.k, &f.rootfs()).unwrap();
    assert_eq!(
        f.k.take(),
        vec![
            Call::Chdir("$ROOT".into()),
            Call::PivotRoot(".".into(), ".".into()),
            Call::Chdir("/".into()),
            mount(None, ".", None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None),
            Call::Umount2(".".into(), MntFlags::MNT_DETACH),
            Call::Chdir("/".into()),
        ]
    );
}
