//! The systemd cgroup driver against a real systemd (pid 1) over D-Bus: a
//! pod slice and a container scope made by StartTransientUnit, with the
//! limits both as unit properties and in the cgroup files, delegated, and
//! gone after destroy. Runs in the VM lane (Debian 12, systemd, pure cgroup
//! v2); where systemd is not pid 1 it prints "skipped: <why>".

use std::path::PathBuf;
use std::process::{Child, Command};

use anyhow::{Context, Result, ensure};
use berth::runtime::cgroups::{CgroupManager, Hierarchy, systemd};
use oci_spec::runtime::{LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder};

fn skip_reason() -> Option<String> {
    if !systemd::booted() {
        return Some("systemd is not pid 1 on this machine (the VM lane runs this test)".into());
    }
    if !Hierarchy::detect().is_v2() {
        return Some("the systemd driver test checks cgroup v2 files; this machine is v1".into());
    }
    None
}

/// Written to the real stderr: libtest captures the output of passing tests.
fn skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

fn systemctl_show(unit: &str, prop: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "-p", prop, "--value", unit])
        .output()
        .expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn root() -> PathBuf {
    match Hierarchy::detect() {
        Hierarchy::V2 { root } => root,
        Hierarchy::V1 { .. } => unreachable!("skipped on v1"),
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pod_slice_and_container_scope_through_dbus() -> Result<()> {
    if let Some(why) = skip_reason() {
        skipped(&why);
        return Ok(());
    }
    let pid = std::process::id();
    let slice = format!("berthtest-pod{pid}.slice");
    let pod = CgroupManager::new(&slice)?;
    ensure!(pod.unit().is_some(), "a bare slice is a systemd unit");
    pod.create_parent().context("start the pod slice")?;
    let slice_dir = root().join(format!("berthtest.slice/{slice}"));
    ensure!(slice_dir.is_dir(), "{} missing", slice_dir.display());
    ensure!(systemctl_show(&slice, "ActiveState") == "active");

    // A container scope in it, started with its first process.
    let child = Kill(Command::new("sleep").arg("1000").spawn()?);
    let path = format!("{slice}:berth:c{pid}");
    let ctr = CgroupManager::new(&path)?;
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .swap(96i64 << 20)
                .build()?,
        )
        .pids(LinuxPidsBuilder::default().limit(50i64).build()?)
        .unified(
            [("memory.high".to_string(), "50331648".to_string())]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()?;
    ctr.create_with(Some(&res), Some(child.0.id() as i32))
        .context("start the container scope")?;
    let unit = format!("berth-c{pid}.scope");
    let dir = slice_dir.join(&unit);
    ensure!(dir.is_dir(), "{} missing", dir.display());
    // systemd moved the process in.
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    ensure!(
        procs.lines().any(|l| l.trim() == child.0.id().to_string()),
        "pid not in the scope: {procs:?}"
    );
    // The limits: files and properties agree.
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_owned());
    ensure!(read("memory.max")? == (64u64 << 20).to_string());
    ensure!(read("memory.swap.max")? == (32u64 << 20).to_string());
    ensure!(read("memory.high")? == "50331648");
    ensure!(read("pids.max")? == "50");
    ensure!(systemctl_show(&unit, "MemoryMax") == (64u64 << 20).to_string());
    ensure!(systemctl_show(&unit, "TasksMax") == "50");
    ensure!(systemctl_show(&unit, "Delegate") == "yes");
    ensure!(systemctl_show(&unit, "Slice") == slice);
    // Delegated: the subtree is ours to write.
    std::fs::create_dir(dir.join("sub")).context("mkdir in the delegated scope")?;
    std::fs::remove_dir(dir.join("sub"))?;
    // An update goes to systemd and the files.
    let upd = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(70i64).build()?)
        .build()?;
    ctr.apply(&upd)?;
    ensure!(read("pids.max")? == "70");
    ensure!(systemctl_show(&unit, "TasksMax") == "70");
    let stats = ctr.stats()?;
    ensure!(stats.pids_current >= 1 && stats.v2.is_some());

    // Destroy: the process is killed, the unit and its cgroup are gone.
    ctr.destroy()?;
    ensure!(!dir.exists(), "scope cgroup left behind");
    let state = systemctl_show(&unit, "ActiveState");
    ensure!(state == "inactive", "scope is {state}");
    pod.destroy()?;
    ensure!(!slice_dir.exists(), "slice cgroup left behind");
    ensure!(systemctl_show(&slice, "ActiveState") == "inactive");
    Ok(())
}

#[test]
fn a_scope_without_a_process_is_refused_and_leaves_nothing() -> Result<()> {
    if let Some(why) = skip_reason() {
        skipped(&why);
        return Ok(());
    }
    let path = format!("system.slice:berth:noproc{}", std::process::id());
    let m = CgroupManager::new(&path)?;
    ensure!(m.create(None).is_err(), "a scope without a pid started");
    ensure!(!m.exists());
    Ok(())
}
