//! Root tests of the cgroup manager on this machine's real hierarchy (v1 on
//! the test machines; the file checks follow the detected version).
//!
//! Every cgroup is named /berth-test-cgroups-<pid>-<n> and removed by a Drop
//! guard, with every process the test started, also when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, ensure};
use berth::runtime::cgroups::{CgroupError, CgroupManager};
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder,
    LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Env var that turns this test binary into the allocating child of the
/// memory tests (see [`alloc_child`]).
const ALLOC_ENV: &str = "BERTH_TEST_CGROUPS_ALLOC_BYTES";

/// A unique test cgroup plus the processes put in it; both cleaned up on drop.
struct TestCgroup {
    mgr: CgroupManager,
    top: String,
    children: Vec<Child>,
}

impl TestCgroup {
    fn new() -> Self {
        Self::nested("")
    }

    /// `/berth-test-cgroups-<pid>-<n><suffix>`; the whole top directory is
    /// removed on drop.
    fn nested(suffix: &str) -> Self {
        let top = format!(
            "/berth-test-cgroups-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mgr = CgroupManager::new(&format!("{top}{suffix}")).expect("valid path");
        Self {
            mgr,
            top,
            children: Vec::new(),
        }
    }

    fn file(&self, controller: &str, file: &str) -> String {
        let dir = self.mgr.dir(controller).expect("controller mounted");
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("read {}/{file}: {e}", dir.display()))
            .trim()
            .to_owned()
    }

    fn v2(&self) -> bool {
        self.mgr.hierarchy().is_v2()
    }

    /// Starts `sleep 1000` and puts it in the cgroup.
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

    /// Starts this binary as the allocating child, in the cgroup; it
    /// allocates once a line arrives on its stdin.
    fn add_allocator(&mut self, bytes: usize) -> usize {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "alloc_child", "--nocapture", "--test-threads=1"])
            .env(ALLOC_ENV, bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn allocator");
        self.mgr
            .add_process(child.id() as i32)
            .expect("add_process");
        self.children.push(child);
        self.children.len() - 1
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.mgr.destroy();
        if let Ok(top) = CgroupManager::new(&self.top) {
            let _ = top.destroy();
        }
    }
}

/// Not a test of its own: the body of the allocating child. Without the env
/// var it returns at once.
#[test]
fn alloc_child() {
    let Ok(bytes) = std::env::var(ALLOC_ENV) else {
        return;
    };
    let bytes: usize = bytes.parse().unwrap();
    let mut line = String::new();
    let mut stdin = BufReader::new(std::io::stdin());
    stdin.read_line(&mut line).unwrap();
    // Touch every page so it is really charged.
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        v[i] = 1;
    }
    println!("allocated {}", std::hint::black_box(&v).len());
    std::io::stdout().flush().unwrap();
    // Hold the memory until the parent closes stdin.
    let _ = stdin.read_to_end(&mut Vec::new());
    drop(v);
}

fn resources(mem: i64, pids: i64) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(mem)
                .swap(mem * 2)
                .reservation(mem / 2)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(pids).build().unwrap())
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(10i64)
                .minor(229i64)
                .access("rw")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap()
}

fn memory_only(limit: i64) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(limit).build().unwrap())
        .build()
        .unwrap()
}

const MIB: i64 = 1024 * 1024;

fn dirs(cg: &TestCgroup) -> Vec<PathBuf> {
    [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
    ]
    .iter()
    .filter_map(|c| cg.mgr.dir(c))
    .collect()
}

fn proc_state(pid: i32) -> Result<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    after.trim().chars().next().context("no state")
}

#[test]
fn create_applies_limits_that_read_back() -> Result<()> {
    let cg = TestCgroup::new();
    cg.mgr.create(Some(&resources(64 * MIB, 50)))?;
    for d in dirs(&cg) {
        ensure!(d.is_dir(), "{} was not created", d.display());
    }
    if cg.v2() {
        ensure!(cg.file("memory", "memory.max") == (64 * MIB).to_string());
        ensure!(cg.file("cpu", "cpu.max") == "50000 100000");
        ensure!(cg.file("pids", "pids.max") == "50");
        return Ok(());
    }
    ensure!(cg.file("memory", "memory.limit_in_bytes") == (64 * MIB).to_string());
    ensure!(cg.file("memory", "memory.memsw.limit_in_bytes") == (128 * MIB).to_string());
    ensure!(cg.file("memory", "memory.soft_limit_in_bytes") == (32 * MIB).to_string());
    ensure!(cg.file("cpu", "cpu.shares") == "512");
    ensure!(cg.file("cpu", "cpu.cfs_quota_us") == "50000");
    ensure!(cg.file("cpu", "cpu.cfs_period_us") == "100000");
    ensure!(cg.file("cpuset", "cpuset.cpus") == "0");
    ensure!(cg.file("cpuset", "cpuset.mems") == "0");
    ensure!(cg.file("pids", "pids.max") == "50");
    let devices = cg.file("devices", "devices.list");
    for rule in ["c 10:229 rw", "c 1:3 rwm", "c 136:* rwm"] {
        ensure!(
            devices.lines().any(|l| l == rule),
            "{rule} missing in {devices}"
        );
    }
    ensure!(
        !devices.contains("a *:* rwm"),
        "default deny not applied: {devices}"
    );
    Ok(())
}

#[test]
fn create_with_unsupported_resources_fails_and_leaves_nothing() -> Result<()> {
    let cg = TestCgroup::new();
    let mut res = resources(64 * MIB, 50);
    res.set_hugepage_limits(Some(vec![
        LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(2 * MIB)
            .build()?,
    ]));
    let result = cg.mgr.create(Some(&res));
    if cg.mgr.dir("hugetlb").is_none() {
        let err = result.expect_err("hugetlb limit without a hugetlb controller must fail");
        ensure!(matches!(err, CgroupError::InvalidResources(_)), "{err}");
        ensure!(err.to_string().contains("hugetlb"), "{err}");
        for d in dirs(&cg) {
            ensure!(!d.exists(), "{} left behind", d.display());
        }
    }
    let cg = TestCgroup::new();
    let mut bad = memory_only(64 * MIB);
    bad.set_memory(Some(
        LinuxMemoryBuilder::default()
            .limit(64 * MIB)
            .swap(32 * MIB)
            .build()?,
    ));
    let err = cg.mgr.create(Some(&bad)).expect_err("swap below limit");
    ensure!(matches!(err, CgroupError::InvalidResources(_)), "{err}");
    for d in dirs(&cg) {
        ensure!(!d.exists(), "{} left behind", d.display());
    }
    Ok(())
}

#[test]
fn bad_paths_are_refused() {
    for p in ["", "/", "../etc", "/a/../../b", "a/./b"] {
        assert!(
            matches!(CgroupManager::new(p), Err(CgroupError::InvalidPath(_))),
            "{p:?} accepted"
        );
    }
}

#[test]
fn processes_join_and_are_listed() -> Result<()> {
    let mut cg = TestCgroup::nested("/pod/ctr");
    cg.mgr.create(None)?;
    let a = cg.add_sleep();
    let b = cg.add_sleep();
    let pids = cg.mgr.pids()?;
    ensure!(pids.contains(&a) && pids.contains(&b), "{pids:?}");
    let own = std::fs::read_to_string(format!("/proc/{a}/cgroup"))?;
    let want = format!(":/{}", cg.mgr.path());
    for controller in ["memory", "cpuset", "pids", "freezer"] {
        ensure!(
            own.lines()
                .any(|l| l.contains(controller) && l.ends_with(&want))
                || cg.v2(),
            "{controller} not joined: {own}"
        );
    }
    Ok(())
}

#[test]
fn update_changes_limits_of_a_running_cgroup() -> Result<()> {
    let mut cg = TestCgroup::new();
    cg.mgr.create(Some(&resources(64 * MIB, 50)))?;
    cg.add_sleep();
    // Raising above the current memory+swap limit needs the swapped order.
    cg.mgr.apply(&resources(512 * MIB, 20))?;
    // And lowering again.
    cg.mgr.apply(&memory_only(16 * MIB))?;
    if cg.v2() {
        ensure!(cg.file("memory", "memory.max") == (16 * MIB).to_string());
    } else {
        ensure!(cg.file("memory", "memory.limit_in_bytes") == (16 * MIB).to_string());
        ensure!(cg.file("memory", "memory.memsw.limit_in_bytes") == (1024 * MIB).to_string());
    }
    ensure!(cg.file("pids", "pids.max") == "20");
    let missing = TestCgroup::new();
    let err = missing
        .mgr
        .apply(&memory_only(16 * MIB))
        .expect_err("no cgroup");
    ensure!(matches!(err, CgroupError::NotFound(_)), "{err}");
    Ok(())
}

#[test]
fn freeze_and_thaw() -> Result<()> {
    let mut cg = TestCgroup::new();
    cg.mgr.create(None)?;
    let pid = cg.add_sleep();
    cg.mgr.freeze()?;
    if !cg.v2() {
        ensure!(cg.file("freezer", "freezer.state") == "FROZEN");
    }
    let frozen = proc_state(pid)?;
    ensure!(frozen == 'D', "frozen task state {frozen}");
    cg.mgr.freeze()?; // twice is fine
    cg.mgr.thaw()?;
    if !cg.v2() {
        ensure!(cg.file("freezer", "freezer.state") == "THAWED");
    }
    // Woken by the thaw: running or back asleep, never frozen ('D').
    let thawed = proc_state(pid)?;
    ensure!(thawed == 'S' || thawed == 'R', "thawed task state {thawed}");
    Ok(())
}

#[test]
fn stats_reflect_an_allocating_process() -> Result<()> {
    let mut cg = TestCgroup::new();
    let mut res = memory_only(512 * MIB);
    res.set_pids(Some(LinuxPidsBuilder::default().limit(100).build()?));
    cg.mgr.create(Some(&res))?;
    let before = cg.mgr.stats()?;
    let bytes = 100 * MIB as usize;
    let i = cg.add_allocator(bytes);
    let child = &mut cg.children[i];
    writeln!(child.stdin.as_mut().unwrap())?;
    // libtest prints its own lines first.
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.as_mut().unwrap());
    while !line.contains("allocated") {
        line.clear();
        ensure!(
            out.read_line(&mut line)? > 0,
            "child ended before allocating"
        );
    }
    let s = cg.mgr.stats()?;
    ensure!(s.memory_usage_bytes >= bytes as u64, "{s:?}");
    ensure!(s.memory_rss_bytes >= bytes as u64, "{s:?}");
    ensure!(s.memory_working_set_bytes >= bytes as u64, "{s:?}");
    ensure!(s.memory_working_set_bytes <= s.memory_usage_bytes, "{s:?}");
    ensure!(s.memory_limit_bytes == 512 * MIB as u64, "{s:?}");
    ensure!(s.cpu_usage_ns > before.cpu_usage_ns, "{s:?}");
    ensure!(s.cpu_user_ns + s.cpu_system_ns > 0, "{s:?}");
    ensure!(s.pids_current >= 1 && s.pids_limit == 100, "{s:?}");
    ensure!(s.oom_kills == 0, "{s:?}");
    Ok(())
}

#[test]
fn oom_notifier_fires_when_a_process_exceeds_its_limit() -> Result<()> {
    let mut cg = TestCgroup::new();
    let mut res = memory_only(32 * MIB);
    res.set_memory(Some(
        LinuxMemoryBuilder::default()
            .limit(32 * MIB)
            .swap(32 * MIB)
            .build()?,
    ));
    cg.mgr.create(Some(&res))?;
    let fd = cg.mgr.oom_notifier()?;
    let i = cg.add_allocator(256 * MIB as usize);
    let child = &mut cg.children[i];
    writeln!(child.stdin.as_mut().unwrap())?;
    let status = child.wait()?;
    ensure!(
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(9),
        "allocator was not OOM-killed: {status:?}"
    );
    // The event is there by now; poll with a bound only so a broken
    // notifier fails instead of hanging.
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 60_000) };
    ensure!(n == 1, "oom fd not readable (poll returned {n})");
    let s = cg.mgr.stats()?;
    ensure!(s.oom_kills >= 1, "{s:?}");
    Ok(())
}

#[test]
fn destroy_kills_everything_and_removes_every_directory() -> Result<()> {
    let mut cg = TestCgroup::new();
    cg.mgr.create(Some(&resources(64 * MIB, 50)))?;
    cg.add_sleep();
    cg.add_sleep();
    cg.mgr.freeze()?;
    cg.mgr.destroy()?;
    for c in &mut cg.children {
        let status = c.wait()?;
        ensure!(
            std::os::unix::process::ExitStatusExt::signal(&status) == Some(9),
            "{status:?}"
        );
    }
    cg.children.clear();
    for d in dirs(&cg) {
        ensure!(!d.exists(), "{} left behind", d.display());
    }
    cg.mgr.destroy()?; // idempotent
    ensure!(matches!(cg.mgr.pids(), Err(CgroupError::NotFound(_))));
    ensure!(matches!(cg.mgr.stats(), Err(CgroupError::NotFound(_))));
    ensure!(matches!(cg.mgr.freeze(), Err(CgroupError::NotFound(_))));
    ensure!(matches!(
        cg.mgr.add_process(1),
        Err(CgroupError::NotFound(_))
    ));
    Ok(())
}

#[test]
fn cpuset_parents_made_elsewhere_are_filled_in() -> Result<()> {
    let mut cg = TestCgroup::nested("/pod/ctr");
    if cg.v2() {
        return Ok(());
    }
    // Parents made by someone else, with empty cpuset.cpus / mems.
    let cpuset_root = cg.mgr.hierarchy().dir("cpuset", "").context("cpuset")?;
    let pod = cpuset_root.join(cg.top.trim_start_matches('/')).join("pod");
    std::fs::create_dir_all(&pod)?;
    ensure!(
        std::fs::read_to_string(pod.join("cpuset.cpus"))?
            .trim()
            .is_empty()
    );
    cg.mgr.create(None)?;
    ensure!(
        !std::fs::read_to_string(pod.join("cpuset.cpus"))?
            .trim()
            .is_empty()
    );
    ensure!(!cg.file("cpuset", "cpuset.mems").is_empty());
    let pid = cg.add_sleep();
    ensure!(cg.mgr.pids()?.contains(&pid));
    Ok(())
}
