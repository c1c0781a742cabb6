//! Root tests of the v2 code paths on a real cgroup2 mount: the machine's
//! unified hierarchy (on the hybrid test machines /sys/fs/cgroup/unified,
//! which holds only the hugetlb controller, so freeze, kill, procs and the
//! hugetlb limit are proven here; the memory/cpu/io files are covered by the
//! unit tests against a v2 layout).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, ensure};
use berth::runtime::cgroups::{CgroupError, CgroupManager, Hierarchy};
use oci_spec::runtime::{LinuxHugepageLimitBuilder, LinuxResourcesBuilder};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The cgroup2 mount point, if the machine has one.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// A unique cgroup on the cgroup2 mount; on drop: processes killed, cgroup
/// removed, and the root's cgroup.subtree_control as it was.
struct V2Cgroup {
    mgr: CgroupManager,
    root: PathBuf,
    root_controllers: String,
    children: Vec<Child>,
}

impl V2Cgroup {
    fn new() -> Option<Self> {
        let Some(root) = cgroup2_mount() else {
            eprintln!("no cgroup2 mount on this machine: v2 root tests skipped");
            return None;
        };
        let path = format!(
            "/berth-test-cgroups-v2-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mgr = CgroupManager::with_hierarchy(&path, Hierarchy::v2_at(&root)).unwrap();
        let root_controllers =
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
        Some(Self {
            mgr,
            root,
            root_controllers,
            children: Vec::new(),
        })
    }

    fn dir(&self) -> PathBuf {
        self.mgr.dir("").unwrap()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir().join(file))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    fn add_busy_loop(&mut self) -> i32 {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id() as i32;
        self.children.push(child);
        self.mgr.add_process(pid).expect("add_process");
        pid
    }

    fn add_sleep(&mut self) -> i32 {
        let child = Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        self.children.push(child);
        self.mgr.add_process(pid).expect("add_process");
        pid
    }
}

impl Drop for V2Cgroup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.mgr.destroy();
        let now =
            std::fs::read_to_string(self.root.join("cgroup.subtree_control")).unwrap_or_default();
        for c in now.split_whitespace() {
            if !self.root_controllers.split_whitespace().any(|o| o == c) {
                let _ = std::fs::write(self.root.join("cgroup.subtree_control"), format!("-{c}"));
            }
        }
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat format")?
        .1
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat(5); `fields` starts at field 3.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn proc_state(pid: i32) -> Result<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    after.trim().chars().next().context("no state")
}

#[test]
fn v2_create_join_freeze_stats_destroy() -> Result<()> {
    let Some(mut cg) = V2Cgroup::new() else {
        return Ok(());
    };
    let has_hugetlb = std::fs::read_to_string(cg.root.join("cgroup.controllers"))?
        .split_whitespace()
        .any(|c| c == "hugetlb")
        && std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists();
    let mut res = LinuxResourcesBuilder::default().build()?;
    if has_hugetlb {
        res.set_hugepage_limits(Some(vec![
            LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(4 * 1024 * 1024)
                .build()?,
        ]));
    }
    cg.mgr.create(Some(&res))?;
    ensure!(cg.dir().is_dir());
    if has_hugetlb {
        ensure!(
            cg.read("hugetlb.2MB.max") == "4194304",
            "{}",
            cg.read("hugetlb.2MB.max")
        );
    }

    let a = cg.add_sleep();
    let b = cg.add_sleep();
    let busy = cg.add_busy_loop();
    let pids = cg.mgr.pids()?;
    let mut want = vec![a, b, busy];
    want.sort();
    ensure!(pids == want, "{pids:?}");
    let own = std::fs::read_to_string(format!("/proc/{a}/cgroup"))?;
    ensure!(
        own.lines().any(|l| l == format!("0::/{}", cg.mgr.path())),
        "{own}"
    );

    cg.mgr.freeze()?;
    ensure!(cg.read("cgroup.events").contains("frozen 1"));
    // v2 parks frozen tasks in a signal-like trap (state S, not D): prove
    // the freeze by a busy loop that stops consuming cpu time.
    let before = cpu_ticks(busy)?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    ensure!(
        cpu_ticks(busy)? == before,
        "a frozen busy loop kept running"
    );
    cg.mgr.thaw()?;
    ensure!(cg.read("cgroup.events").contains("frozen 0"));
    ensure!(matches!(proc_state(a)?, 'S' | 'R'));

    // cpu.stat is a core file of every v2 cgroup.
    let s = cg.mgr.stats()?;
    ensure!(s.cpu_usage_ns > 0, "{s:?}");

    // Destroy a frozen cgroup with processes in it.
    cg.mgr.freeze()?;
    cg.mgr.destroy()?;
    for c in &mut cg.children {
        let st = c.wait()?;
        ensure!(
            std::os::unix::process::ExitStatusExt::signal(&st) == Some(9),
            "{st:?}"
        );
    }
    cg.children.clear();
    ensure!(!cg.dir().exists());
    cg.mgr.destroy()?;
    ensure!(matches!(cg.mgr.pids(), Err(CgroupError::NotFound(_))));
    Ok(())
}

/// Runs `script` under sh in the cgroup (moved in before it starts) and
/// returns its exit code and output.
fn run_in(cg: &V2Cgroup, script: &str) -> Result<(i32, String)> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new("sh")
        .args(["-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    cg.mgr.add_process(child.id() as i32)?;
    child.stdin.take().context("stdin")?.write_all(b"go\n")?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

/// cgroup v2's device controller is the eBPF program berth attaches from
/// linux.resources.devices: a process in the cgroup can mknod a device the
/// rules do not allow (mknod of anything is a default) but not open it,
/// while /dev/null and the like work; with `a *:* rwm` (a privileged
/// container) the same open works, and an update replaces the rules. The
/// device is /dev/kmsg's c 1:11, which every kernel has and root may open.
#[test]
fn v2_device_rules_are_enforced_by_the_bpf_program() -> Result<()> {
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    let Some(cg) = V2Cgroup::new() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().display();
    let script = format!(
        "rm -f {d}/kmsg {d}/null; mknod {d}/kmsg c 1 11 || exit 10; mknod {d}/null c 1 3 || exit 11; \
         echo x >{d}/null || exit 12; head -c 1 /dev/zero >/dev/null || exit 13; \
         if head -c 0 <{d}/kmsg; then echo kmsg-opened; else echo kmsg-refused; fi"
    );
    let all = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::A)
        .access("rwm")
        .build()?;
    let privileged = LinuxResourcesBuilder::default()
        .devices(vec![all])
        .build()?;
    cg.mgr.create(Some(&privileged))?;
    let (rc, out) = run_in(&cg, &script)?;
    ensure!(
        rc == 0 && out.contains("kmsg-opened"),
        "allow-all: exit {rc}: {out}"
    );

    // The default rules only (what a container without devices gets).
    let defaults = LinuxResourcesBuilder::default().devices(vec![]).build()?;
    cg.mgr.apply(&defaults)?;
    let (rc, out) = run_in(&cg, &script)?;
    ensure!(
        rc == 0 && out.contains("kmsg-refused") && out.contains("not permitted"),
        "default rules: exit {rc}: {out}"
    );

    // An explicit allow of c 1:11 for reading only.
    let kmsg_r = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::C)
        .major(1i64)
        .minor(11i64)
        .access("r")
        .build()?;
    cg.mgr.apply(
        &LinuxResourcesBuilder::default()
            .devices(vec![kmsg_r])
            .build()?,
    )?;
    let (rc, out) = run_in(&cg, &script)?;
    ensure!(
        rc == 0 && out.contains("kmsg-opened"),
        "c 1:11 r: exit {rc}: {out}"
    );
    let (rc, out) = run_in(
        &cg,
        &format!("{script}; echo x >{d}/kmsg || echo write-refused"),
    )?;
    ensure!(
        rc == 0 && out.contains("write-refused"),
        "c 1:11 r, writing: exit {rc}: {out}"
    );
    Ok(())
}
