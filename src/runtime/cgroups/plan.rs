//! OCI `LinuxResources` → the cgroup file writes that realise them, for v1
//! and v2. [`plan`] is pure (it only probes which files exist); [`execute`]
//! performs the writes.

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use super::hierarchy::Hierarchy;
use super::{CgroupError, Result, devices, fsio};

/// One write of `value` into `file` of `controller`'s directory (v2: the
/// cgroup directory, whatever the controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileWrite {
    pub controller: &'static str,
    pub file: String,
    pub value: String,
}

/// A step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Write(FileWrite),
    /// Two writes the kernel validates against each other's current value
    /// (memory vs memory+swap, cfs period vs quota): first then second, or
    /// second then first when the first is refused with EINVAL.
    Ordered(FileWrite, FileWrite),
}

fn w(controller: &'static str, file: impl Into<String>, value: impl ToString) -> FileWrite {
    FileWrite {
        controller,
        file: file.into(),
        value: value.to_string(),
    }
}

fn invalid(msg: impl Into<String>) -> CgroupError {
    CgroupError::InvalidResources(msg.into())
}

/// The steps that apply `res` to the cgroup at `path`. `creating` adds what
/// a new cgroup always gets (the v1 default device rules).
pub(crate) fn plan(
    h: &Hierarchy,
    path: &str,
    res: &LinuxResources,
    creating: bool,
) -> Result<Vec<Step>> {
    let exists = |controller: &str, file: &str| {
        h.dir(controller, path)
            .is_some_and(|d| d.join(file).exists())
    };
    let mut steps = Vec::new();
    match h {
        Hierarchy::V1 { .. } => plan_v1(res, creating, &exists, &mut steps)?,
        Hierarchy::V2 { .. } => plan_v2(res, &exists, &mut steps)?,
    }
    // Every write needs its controller.
    for step in &steps {
        let writes = match step {
            Step::Write(a) => vec![a],
            Step::Ordered(a, b) => vec![a, b],
        };
        for fw in writes {
            if h.mount(fw.controller).is_none() {
                return Err(invalid(format!(
                    "{} needs the {} controller, which is not mounted on this machine",
                    fw.file, fw.controller
                )));
            }
        }
    }
    Ok(steps)
}

/// Performs the steps.
pub(crate) fn execute(h: &Hierarchy, path: &str, steps: &[Step]) -> Result<()> {
    let write = |fw: &FileWrite| {
        let dir = h
            .dir(fw.controller, path)
            .ok_or_else(|| invalid(format!("no {} controller", fw.controller)))?;
        tracing::trace!(file = %dir.join(&fw.file).display(), value = %fw.value, "cgroup write");
        fsio::write(&dir, &fw.file, &fw.value)
    };
    for step in steps {
        match step {
            Step::Write(a) => write(a)?,
            Step::Ordered(a, b) => match write(a) {
                Ok(()) => write(b)?,
                Err(e) if fsio::errno(&e) == Some(libc::EINVAL) => {
                    write(b)?;
                    write(a)?;
                }
                Err(e) => return Err(e),
            },
        }
    }
    Ok(())
}

fn pair(a: Option<FileWrite>, b: Option<FileWrite>, steps: &mut Vec<Step>) {
    match (a, b) {
        (Some(a), Some(b)) => steps.push(Step::Ordered(a, b)),
        (Some(a), None) | (None, Some(a)) => steps.push(Step::Write(a)),
        (None, None) => {}
    }
}

type Exists<'a> = &'a dyn Fn(&str, &str) -> bool;

fn plan_v1(
    res: &LinuxResources,
    creating: bool,
    exists: Exists<'_>,
    steps: &mut Vec<Step>,
) -> Result<()> {
    if let Some(cpu) = res.cpu() {
        cpu_v1(cpu, steps);
        cpuset(cpu, steps);
    }
    if let Some(mem) = res.memory() {
        memory_v1(mem, exists, steps)?;
    }
    if let Some(pids) = res.pids() {
        pids_max(pids.limit(), steps);
    }
    if let Some(bio) = res.block_io() {
        blkio_v1(bio, exists, steps)?;
    }
    if let Some(limits) = res.hugepage_limits() {
        for l in limits {
            let size = page_size(l.page_size())?;
            steps.push(Step::Write(w(
                "hugetlb",
                format!("hugetlb.{size}.limit_in_bytes"),
                l.limit(),
            )));
        }
    }
    if let Some(net) = res.network() {
        if let Some(id) = net.class_id() {
            steps.push(Step::Write(w("net_cls", "net_cls.classid", id)));
        }
        for p in net.priorities().iter().flatten() {
            steps.push(Step::Write(w(
                "net_prio",
                "net_prio.ifpriomap",
                format!("{} {}", p.name(), p.priority()),
            )));
        }
    }
    if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        tracing::warn!("rdma cgroup limits are not supported; ignored");
    }
    if res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(invalid(
            "linux.resources.unified needs cgroup v2, and this machine runs cgroup v1",
        ));
    }
    if creating || res.devices().is_some() {
        for rule in devices::v1_rules(res.devices().as_deref().unwrap_or_default())? {
            steps.push(Step::Write(w("devices", rule.file(), rule.value())));
        }
    }
    Ok(())
}

fn cpu_v1(cpu: &LinuxCpu, steps: &mut Vec<Step>) {
    if let Some(s) = cpu.shares().filter(|s| *s != 0) {
        steps.push(Step::Write(w("cpu", "cpu.shares", s)));
    }
    let period = cpu
        .period()
        .filter(|p| *p != 0)
        .map(|p| w("cpu", "cpu.cfs_period_us", p));
    let quota = cpu
        .quota()
        .filter(|q| *q != 0)
        .map(|q| w("cpu", "cpu.cfs_quota_us", q.max(-1)));
    pair(period, quota, steps);
    if let Some(b) = cpu.burst() {
        steps.push(Step::Write(w("cpu", "cpu.cfs_burst_us", b)));
    }
    let rt_period = cpu
        .realtime_period()
        .filter(|p| *p != 0)
        .map(|p| w("cpu", "cpu.rt_period_us", p));
    let rt_runtime = cpu
        .realtime_runtime()
        .filter(|r| *r != 0)
        .map(|r| w("cpu", "cpu.rt_runtime_us", r));
    pair(rt_period, rt_runtime, steps);
    if let Some(i) = cpu.idle() {
        steps.push(Step::Write(w("cpu", "cpu.idle", i)));
    }
}

fn cpuset(cpu: &LinuxCpu, steps: &mut Vec<Step>) {
    if let Some(c) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
        steps.push(Step::Write(w("cpuset", "cpuset.cpus", c)));
    }
    if let Some(m) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
        steps.push(Step::Write(w("cpuset", "cpuset.mems", m)));
    }
}

/// Checks the OCI memory values: limit and swap are -1 (unlimited), 0
/// (unset) or positive, and swap (memory+swap on v1) is not below the limit.
fn check_memory(mem: &LinuxMemory) -> Result<(i64, i64)> {
    let limit = mem.limit().unwrap_or(0);
    let swap = mem.swap().unwrap_or(0);
    if limit < -1 {
        return Err(invalid(format!("memory limit {limit} is negative")));
    }
    if swap < -1 {
        return Err(invalid(format!("memory+swap limit {swap} is negative")));
    }
    if limit > 0 && swap > 0 && swap < limit {
        return Err(invalid(format!(
            "memory+swap limit {swap} must not be below the memory limit {limit}"
        )));
    }
    if let Some(s) = mem.swappiness().filter(|s| *s > 100) {
        return Err(invalid(format!("memory swappiness {s} is above 100")));
    }
    if mem.kernel().is_some() {
        tracing::debug!("linux.resources.memory.kernel is deprecated; ignored");
    }
    Ok((limit, swap))
}

fn memory_v1(mem: &LinuxMemory, exists: Exists<'_>, steps: &mut Vec<Step>) -> Result<()> {
    let (limit, mut swap) = check_memory(mem)?;
    let has_memsw = exists("memory", "memory.memsw.limit_in_bytes");
    // Unlimited memory with swap left unset means both unlimited (as runc).
    if limit == -1 && swap == 0 && has_memsw {
        swap = -1;
    }
    if swap != 0 && !has_memsw {
        return Err(invalid(
            "a swap limit needs swap accounting (memory.memsw.*), which this kernel lacks",
        ));
    }
    let lw = (limit != 0).then(|| w("memory", "memory.limit_in_bytes", limit));
    let sw = (swap != 0).then(|| w("memory", "memory.memsw.limit_in_bytes", swap));
    pair(lw, sw, steps);
    if let Some(r) = mem.reservation().filter(|r| *r != 0) {
        steps.push(Step::Write(w("memory", "memory.soft_limit_in_bytes", r)));
    }
    if let Some(t) = mem.kernel_tcp().filter(|t| *t != 0) {
        steps.push(Step::Write(w(
            "memory",
            "memory.kmem.tcp.limit_in_bytes",
            t,
        )));
    }
    if let Some(s) = mem.swappiness() {
        steps.push(Step::Write(w("memory", "memory.swappiness", s)));
    }
    if mem.disable_oom_killer() == Some(true) {
        steps.push(Step::Write(w("memory", "memory.oom_control", 1)));
    }
    Ok(())
}

fn pids_max(limit: i64, steps: &mut Vec<Step>) {
    if limit != 0 {
        let v = if limit > 0 {
            limit.to_string()
        } else {
            "max".into()
        };
        steps.push(Step::Write(w("pids", "pids.max", v)));
    }
}

fn check_weight(weight: u16) -> Result<()> {
    if !(10..=1000).contains(&weight) {
        return Err(invalid(format!(
            "blkio weight {weight} is outside 10..=1000"
        )));
    }
    Ok(())
}

fn blkio_v1(bio: &LinuxBlockIo, exists: Exists<'_>, steps: &mut Vec<Step>) -> Result<()> {
    // CFQ had blkio.weight; with BFQ the files are blkio.bfq.weight*.
    let weight_file = |suffix: &str| -> Result<String> {
        for f in [format!("blkio.{suffix}"), format!("blkio.bfq.{suffix}")] {
            if exists("blkio", &f) {
                return Ok(f);
            }
        }
        Err(invalid(format!(
            "blkio {suffix} is not available: the kernel offers neither blkio.{suffix} \
             nor blkio.bfq.{suffix} (no CFQ/BFQ I/O scheduler)"
        )))
    };
    if let Some(wt) = bio.weight() {
        check_weight(wt)?;
        steps.push(Step::Write(w("blkio", weight_file("weight")?, wt)));
    }
    if let Some(wt) = bio.leaf_weight() {
        check_weight(wt)?;
        steps.push(Step::Write(w("blkio", weight_file("leaf_weight")?, wt)));
    }
    for d in bio.weight_device().iter().flatten() {
        if let Some(wt) = d.weight() {
            check_weight(wt)?;
            let v = format!("{}:{} {wt}", d.major(), d.minor());
            steps.push(Step::Write(w("blkio", weight_file("weight_device")?, v)));
        }
        if let Some(wt) = d.leaf_weight() {
            check_weight(wt)?;
            let v = format!("{}:{} {wt}", d.major(), d.minor());
            steps.push(Step::Write(w(
                "blkio",
                weight_file("leaf_weight_device")?,
                v,
            )));
        }
    }
    let throttles = [
        (
            "blkio.throttle.read_bps_device",
            bio.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            bio.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            bio.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            bio.throttle_write_iops_device(),
        ),
    ];
    for (file, list) in throttles {
        for d in list.iter().flatten() {
            let v = format!("{}:{} {}", d.major(), d.minor(), d.rate());
            steps.push(Step::Write(w("blkio", file, v)));
        }
    }
    Ok(())
}

/// Validates a hugepage size as the kernel names it ("2MB", "1GB", "64KB").
fn page_size(s: &str) -> Result<&str> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(unit, "KB" | "MB" | "GB")
    {
        return Err(invalid(format!("invalid hugepage size {s:?}")));
    }
    Ok(s)
}

/// runc's conversion of cpu shares (2..262144) to cpu.weight (1..10000).
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// runc's conversion of a blkio weight (10..1000) to io.weight (1..10000).
pub(crate) fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    1 + (u64::from(weight.clamp(10, 1000)) - 10) * 9999 / 990
}

/// The v2 memory.swap.max value for OCI's memory+swap `swap` and `memory`
/// (runc's ConvertMemorySwapToCgroupV2Value): `None` leaves it unset.
pub(crate) fn swap_to_v2(swap: i64, memory: i64) -> Result<Option<String>> {
    if memory == -1 && swap == 0 {
        return Ok(Some("max".into()));
    }
    match swap {
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        _ if memory <= 0 => Err(invalid("a swap limit needs a memory limit")),
        _ if swap < memory => Err(invalid(format!(
            "memory+swap limit {swap} must not be below the memory limit {memory}"
        ))),
        _ => Ok(Some((swap - memory).to_string())),
    }
}

/// The v2 cpu.max value for a quota and a period (runc's logic: a period
/// alone resets the quota to "max").
pub(crate) fn cpu_max(quota: i64, period: u64) -> Option<String> {
    if quota == 0 && period == 0 {
        return None;
    }
    let mut s = if quota > 0 {
        quota.to_string()
    } else {
        "max".to_owned()
    };
    if period != 0 {
        s.push_str(&format!(" {period}"));
    }
    Some(s)
}

fn limit_v2(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

fn plan_v2(res: &LinuxResources, exists: Exists<'_>, steps: &mut Vec<Step>) -> Result<()> {
    if let Some(cpu) = res.cpu() {
        if let Some(s) = cpu.shares().filter(|s| *s != 0) {
            steps.push(Step::Write(w("cpu", "cpu.weight", shares_to_weight(s))));
        }
        if let Some(v) = cpu_max(cpu.quota().unwrap_or(0), cpu.period().unwrap_or(0)) {
            steps.push(Step::Write(w("cpu", "cpu.max", v)));
        }
        if let Some(b) = cpu.burst() {
            steps.push(Step::Write(w("cpu", "cpu.max.burst", b)));
        }
        if let Some(i) = cpu.idle() {
            steps.push(Step::Write(w("cpu", "cpu.idle", i)));
        }
        if cpu.realtime_period().unwrap_or(0) != 0 || cpu.realtime_runtime().unwrap_or(0) != 0 {
            return Err(invalid(
                "realtime cpu limits are not supported on cgroup v2",
            ));
        }
        cpuset(cpu, steps);
    }
    if let Some(mem) = res.memory() {
        let (limit, swap) = check_memory(mem)?;
        if let Some(v) = swap_to_v2(swap, limit)? {
            if !exists("memory", "memory.swap.max") {
                return Err(invalid(
                    "a swap limit needs memory.swap.max, which this kernel lacks",
                ));
            }
            steps.push(Step::Write(w("memory", "memory.swap.max", v)));
        }
        if limit != 0 {
            steps.push(Step::Write(w("memory", "memory.max", limit_v2(limit))));
        }
        if let Some(r) = mem.reservation().filter(|r| *r != 0) {
            steps.push(Step::Write(w("memory", "memory.low", limit_v2(r))));
        }
        if mem.swappiness().is_some() {
            tracing::warn!("memory swappiness has no cgroup v2 equivalent; ignored");
        }
        if mem.disable_oom_killer() == Some(true) {
            tracing::warn!("disabling the OOM killer is not possible on cgroup v2; ignored");
        }
    }
    if let Some(pids) = res.pids() {
        pids_max(pids.limit(), steps);
    }
    if let Some(bio) = res.block_io() {
        if let Some(wt) = bio.weight() {
            check_weight(wt)?;
            let v = format!("default {}", blkio_weight_to_io_weight(wt));
            steps.push(Step::Write(w("blkio", "io.weight", v)));
        }
        for d in bio.weight_device().iter().flatten() {
            if let Some(wt) = d.weight() {
                check_weight(wt)?;
                let v = format!(
                    "{}:{} {}",
                    d.major(),
                    d.minor(),
                    blkio_weight_to_io_weight(wt)
                );
                steps.push(Step::Write(w("blkio", "io.weight", v)));
            }
        }
        let throttles = [
            ("rbps", bio.throttle_read_bps_device()),
            ("wbps", bio.throttle_write_bps_device()),
            ("riops", bio.throttle_read_iops_device()),
            ("wiops", bio.throttle_write_iops_device()),
        ];
        for (key, list) in throttles {
            for d in list.iter().flatten() {
                let v = format!("{}:{} {key}={}", d.major(), d.minor(), d.rate());
                steps.push(Step::Write(w("blkio", "io.max", v)));
            }
        }
    }
    if let Some(limits) = res.hugepage_limits() {
        for l in limits {
            let size = page_size(l.page_size())?;
            steps.push(Step::Write(w(
                "hugetlb",
                format!("hugetlb.{size}.max"),
                limit_v2(l.limit()),
            )));
        }
    }
    if res.network().is_some() {
        tracing::warn!("net_cls / net_prio do not exist on cgroup v2; network resources ignored");
    }
    if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        tracing::warn!("rdma cgroup limits are not supported; ignored");
    }
    // Device rules: an eBPF program, attached by `devices::apply_v2`.
    let mut unified: Vec<_> = res.unified().iter().flatten().collect();
    unified.sort();
    for (key, value) in unified {
        let ok = key.contains('.')
            && !key.contains('/')
            && !key.starts_with('.')
            && !key.starts_with("cgroup.");
        if !ok {
            return Err(invalid(format!("invalid unified resource key {key:?}")));
        }
        if !exists("unified", key) {
            return Err(invalid(format!(
                "unified resource {key}: no such file in the cgroup (controller not enabled?)"
            )));
        }
        steps.push(Step::Write(FileWrite {
            controller: "unified",
            file: key.clone(),
            value: value.clone(),
        }));
    }
    Ok(())
}
