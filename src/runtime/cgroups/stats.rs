//! Reading a cgroup's statistics (v1 and v2 stat files) into [`Stats`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::hierarchy::Hierarchy;
use super::{Result, Stats, fsio};
use crate::runtime::{HugetlbUsage, IoUsage, Pressure, StatsV2};

/// v1 limits at or above this (page-rounded i64::MAX) mean "unlimited".
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// USER_HZ, the unit of cpuacct.stat.
const USER_HZ: u64 = 100;

/// Parses a flat keyed file ("key value" per line, e.g. memory.stat,
/// cpu.stat, memory.events, memory.oom_control). Lines that do not parse
/// are skipped.
pub(crate) fn parse_keyed(content: &str) -> HashMap<&str, u64> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (k, v) = (it.next()?, it.next()?);
            Some((k, v.parse().ok()?))
        })
        .collect()
}

/// Normalises a limit: "max" (v2) and the v1 unlimited values read as u64::MAX.
fn limit(v: u64) -> u64 {
    if v >= V1_UNLIMITED { u64::MAX } else { v }
}

fn keyed(dir: &Option<PathBuf>, file: &str) -> Result<HashMap<String, u64>> {
    let Some(dir) = dir else {
        return Ok(HashMap::new());
    };
    Ok(fsio::read_opt(dir, file)?
        .map(|s| {
            parse_keyed(&s)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        })
        .unwrap_or_default())
}

fn num(dir: &Option<PathBuf>, file: &str) -> Result<u64> {
    match dir {
        Some(d) => Ok(fsio::read_u64(d, file)?.unwrap_or(0)),
        None => Ok(0),
    }
}

/// A number from a file newer kernels have (memory.peak): 0 when it is
/// missing or empty.
fn optional_num(dir: &Option<PathBuf>, file: &str) -> u64 {
    dir.as_deref()
        .and_then(|d| fsio::read_u64(d, file).ok().flatten())
        .unwrap_or(0)
}

fn get(map: &HashMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// Reads the statistics of the cgroup at `path`. Controllers that are not
/// there read as zeros.
pub(crate) fn read(h: &Hierarchy, path: &str) -> Result<Stats> {
    let dir = |c: &str| h.dir(c, path).filter(|d: &PathBuf| d.is_dir());
    match h {
        Hierarchy::V1 { .. } => read_v1(&dir("cpu"), &dir("cpuacct"), &dir("memory"), &dir("pids")),
        Hierarchy::V2 { .. } => read_v2(&dir("")),
    }
}

fn read_v1(
    cpu: &Option<PathBuf>,
    cpuacct: &Option<PathBuf>,
    memory: &Option<PathBuf>,
    pids: &Option<PathBuf>,
) -> Result<Stats> {
    let mut s = Stats {
        cpu_usage_ns: num(cpuacct, "cpuacct.usage")?,
        ..Stats::default()
    };
    let has =
        |d: &Option<PathBuf>, f: &str| d.as_deref().is_some_and(|d: &Path| d.join(f).exists());
    if has(cpuacct, "cpuacct.usage_user") {
        s.cpu_user_ns = num(cpuacct, "cpuacct.usage_user")?;
        s.cpu_system_ns = num(cpuacct, "cpuacct.usage_sys")?;
    } else {
        let ticks = keyed(cpuacct, "cpuacct.stat")?;
        s.cpu_user_ns = get(&ticks, "user") * (1_000_000_000 / USER_HZ);
        s.cpu_system_ns = get(&ticks, "system") * (1_000_000_000 / USER_HZ);
    }
    let cpu_stat = keyed(cpu, "cpu.stat")?;
    s.cpu_throttled_periods = get(&cpu_stat, "nr_throttled");
    s.cpu_throttled_time_ns = get(&cpu_stat, "throttled_time");

    let mem = keyed(memory, "memory.stat")?;
    s.memory_usage_bytes = num(memory, "memory.usage_in_bytes")?;
    s.memory_limit_bytes = limit(num(memory, "memory.limit_in_bytes")?);
    s.memory_working_set_bytes = s
        .memory_usage_bytes
        .saturating_sub(get(&mem, "total_inactive_file"));
    s.memory_rss_bytes = get(&mem, "total_rss");
    s.memory_cache_bytes = get(&mem, "total_cache");
    // memsw counts memory + swap: the swap part is the difference.
    s.memory_swap_bytes =
        num(memory, "memory.memsw.usage_in_bytes")?.saturating_sub(s.memory_usage_bytes);
    s.memory_failcnt = num(memory, "memory.failcnt")?;
    s.oom_kills = get(&keyed(memory, "memory.oom_control")?, "oom_kill");

    s.pids_current = num(pids, "pids.current")?;
    s.pids_limit = limit(num(pids, "pids.max")?);
    Ok(s)
}

/// Parses a PSI file (`some avg10=.. avg60=.. avg300=.. total=..` and the
/// same for `full`); `None` when it has neither line.
pub(crate) fn parse_pressure(content: &str) -> Option<Pressure> {
    let mut p = Pressure::default();
    let mut seen = false;
    for line in content.lines() {
        let mut it = line.split_whitespace();
        let target = match it.next() {
            Some("some") => &mut p.some,
            Some("full") => &mut p.full,
            _ => continue,
        };
        seen = true;
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            match k {
                "avg10" => target.avg10 = v.parse().unwrap_or(0.0),
                "avg60" => target.avg60 = v.parse().unwrap_or(0.0),
                "avg300" => target.avg300 = v.parse().unwrap_or(0.0),
                "total" => target.total = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    seen.then_some(p)
}

/// Parses io.stat (`8:0 rbytes=.. wbytes=.. rios=.. wios=.. dbytes=..`).
pub(crate) fn parse_io_stat(content: &str) -> Vec<IoUsage> {
    content
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let (major, minor) = it.next()?.split_once(':')?;
            let mut e = IoUsage {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..IoUsage::default()
            };
            for kv in it {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// The hugetlb sizes of a v2 cgroup (from its `hugetlb.<size>.current` files).
fn hugetlb_v2(dir: &Path) -> Result<Vec<HugetlbUsage>> {
    let mut sizes: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let size = name.strip_prefix("hugetlb.")?.strip_suffix(".current")?;
                (!size.contains('.')).then(|| size.to_owned())
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    sizes.sort();
    let d = Some(dir.to_path_buf());
    sizes
        .into_iter()
        .map(|size| {
            Ok(HugetlbUsage {
                current: num(&d, &format!("hugetlb.{size}.current"))?,
                max: limit(num(&d, &format!("hugetlb.{size}.max"))?),
                failcnt: get(&keyed(&d, &format!("hugetlb.{size}.events"))?, "max"),
                pagesize: size,
            })
        })
        .collect()
}

fn pressure(dir: &Option<PathBuf>, file: &str) -> Result<Option<Pressure>> {
    let Some(d) = dir else { return Ok(None) };
    // Without PSI (psi=0, or CONFIG_PSI off) the files are missing or
    // refuse to be read (EOPNOTSUPP).
    match fsio::read_opt(d, file) {
        Ok(text) => Ok(text.as_deref().and_then(parse_pressure)),
        Err(e) if fsio::errno(&e) == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_v2(dir: &Option<PathBuf>) -> Result<Stats> {
    let cpu = keyed(dir, "cpu.stat")?;
    let mem = keyed(dir, "memory.stat")?;
    let events = keyed(dir, "memory.events")?;
    let usage = num(dir, "memory.current")?;
    let sorted = |m: &HashMap<String, u64>| m.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let v2 = StatsV2 {
        memory_stat: sorted(&mem),
        memory_events: sorted(&events),
        cpu_stat: sorted(&cpu),
        memory_swap_limit_bytes: limit(optional_num(dir, "memory.swap.max")),
        memory_peak_bytes: optional_num(dir, "memory.peak"),
        memory_swap_peak_bytes: optional_num(dir, "memory.swap.peak"),
        io: match dir {
            Some(d) => fsio::read_opt(d, "io.stat")?
                .map(|t| parse_io_stat(&t))
                .unwrap_or_default(),
            None => Vec::new(),
        },
        hugetlb: match dir {
            Some(d) => hugetlb_v2(d)?,
            None => Vec::new(),
        },
        cpu_pressure: pressure(dir, "cpu.pressure")?,
        memory_pressure: pressure(dir, "memory.pressure")?,
        io_pressure: pressure(dir, "io.pressure")?,
    };
    Ok(Stats {
        cpu_usage_ns: get(&cpu, "usage_usec") * 1000,
        cpu_user_ns: get(&cpu, "user_usec") * 1000,
        cpu_system_ns: get(&cpu, "system_usec") * 1000,
        cpu_throttled_periods: get(&cpu, "nr_throttled"),
        cpu_throttled_time_ns: get(&cpu, "throttled_usec") * 1000,
        memory_usage_bytes: usage,
        memory_limit_bytes: limit(num(dir, "memory.max")?),
        memory_working_set_bytes: usage.saturating_sub(get(&mem, "inactive_file")),
        memory_rss_bytes: get(&mem, "anon"),
        memory_cache_bytes: get(&mem, "file"),
        memory_swap_bytes: num(dir, "memory.swap.current")?,
        memory_failcnt: get(&events, "max"),
        oom_kills: get(&events, "oom_kill"),
        pids_current: num(dir, "pids.current")?,
        pids_limit: limit(num(dir, "pids.max")?),
        v2: Some(v2),
    })
}
