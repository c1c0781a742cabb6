//! The systemd cgroup driver: cgroups as transient units made through
//! systemd's D-Bus API, as runc's and crun's systemd drivers do.
//!
//! A container is a *scope* (`<prefix>-<name>.scope`) in a *slice*; a pod's
//! parent is a slice (kubelet's `kubepods-burstable-pod<uid>.slice`). The
//! unit's name fixes its cgroup directory: a slice named `a-b-c.slice`
//! lives at `a.slice/a-b.slice/a-b-c.slice` ([`expand_slice`]), a scope in
//! its slice's directory. systemd creates the directory and moves the
//! scope's first process in (`PIDs`); with `Delegate=yes` the subtree is
//! berth's to write, so the resources are then also written to the cgroup
//! files as the cgroupfs driver does (runc does the same: the properties
//! keep a `daemon-reload` from resetting the limits, the file writes cover
//! what systemd has no property for, such as `unified`).
//!
//! Everything here but [`SystemdBus`] is pure: the naming, the path
//! expansion and the property list are unit-tested without D-Bus.
//! [`SystemdBus`] is the one D-Bus client of berth (zbus, blocking, on the
//! system bus): StartTransientUnit, StopUnit, ResetFailedUnit,
//! SetUnitProperties, GetUnit.

use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::plan::{shares_to_weight, swap_to_v2};
use super::{CgroupError, Result};

pub const SLICE_SUFFIX: &str = ".slice";
pub const SCOPE_SUFFIX: &str = ".scope";
/// The slice of a `:prefix:name` path that names none (runc's default).
pub const DEFAULT_SLICE: &str = "system.slice";

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
const UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";
/// How long a start or stop job may take (runc: 30 s).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether systemd is the init of this machine (sd_booted(3): the
/// directory systemd makes at boot).
pub fn booted() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

fn invalid(path: &str, why: impl std::fmt::Display) -> CgroupError {
    CgroupError::InvalidPath(format!("{path} ({why})"))
}

/// The cgroup directory (relative to the hierarchy root, with a leading
/// slash) of the slice `slice`, as systemd lays it out:
/// `kubepods-burstable-pod1.slice` is
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`;
/// `-.slice` is the root (`/`).
pub fn expand_slice(slice: &str) -> Result<String> {
    let Some(name) = slice.strip_suffix(SLICE_SUFFIX) else {
        return Err(invalid(slice, "a slice name ends in .slice"));
    };
    if name.is_empty() || slice.contains('/') {
        return Err(invalid(slice, "not a slice name"));
    }
    if name == "-" {
        return Ok("/".into());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if part.is_empty() {
            return Err(invalid(slice, "empty component between dashes"));
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(part);
        path.push_str(SLICE_SUFFIX);
        prefix.push_str(part);
        prefix.push('-');
    }
    Ok(path)
}

/// The slice a slice belongs to by its name (`a-b.slice` is in `a.slice`,
/// `a.slice` in the root slice `-.slice`).
pub fn parent_slice(slice: &str) -> String {
    let name = slice.strip_suffix(SLICE_SUFFIX).unwrap_or(slice);
    match name.rfind('-') {
        Some(i) => format!("{}{SLICE_SUFFIX}", &name[..i]),
        None => format!("-{SLICE_SUFFIX}"),
    }
}

/// Whether `path` is in systemd form: `slice:prefix:name` or a bare
/// `name.slice` (kubelet's pod cgroup parent under the systemd driver).
pub fn is_systemd_path(path: &str) -> bool {
    path.contains(':') || (path.ends_with(SLICE_SUFFIX) && !path.contains('/'))
}

/// A cgroup as a systemd unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdUnit {
    /// The unit's name: `<prefix>-<name>.scope` or `<name>.slice`.
    pub name: String,
    /// The slice the unit is in.
    pub slice: String,
    /// The unit's cgroup directory, relative to the hierarchy root, with a
    /// leading slash.
    pub cgroup: String,
}

impl SystemdUnit {
    /// The unit of a systemd-form cgroups path (see [`is_systemd_path`]):
    /// `slice:prefix:name` is the scope `prefix-name.scope` in `slice`
    /// (`system.slice` when empty), or the slice `name` when it ends in
    /// `.slice` (runc's rules); a bare `name.slice` is that slice.
    pub fn parse(path: &str) -> Result<Self> {
        if !path.contains(':') {
            let cgroup = expand_slice(path)?;
            return Ok(Self {
                name: path.to_owned(),
                slice: parent_slice(path),
                cgroup,
            });
        }
        let parts: Vec<&str> = path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(invalid(path, "expected slice:prefix:name"));
        };
        let slice = if slice.is_empty() {
            DEFAULT_SLICE
        } else {
            slice
        };
        let parent = expand_slice(slice)?;
        let bad = |s: &str| s.contains('/') || s == "." || s == "..";
        if name.is_empty() || bad(name) || bad(prefix) {
            return Err(invalid(path, "prefix and name must be plain names"));
        }
        if name.ends_with(SLICE_SUFFIX) {
            let cgroup = expand_slice(name)?;
            if parent_slice(name) != slice {
                return Err(invalid(
                    path,
                    format!("slice {name} does not belong to {slice}"),
                ));
            }
            return Ok(Self {
                name: name.to_owned(),
                slice: slice.to_owned(),
                cgroup,
            });
        }
        let unit = if prefix.is_empty() {
            format!("{name}{SCOPE_SUFFIX}")
        } else {
            format!("{prefix}-{name}{SCOPE_SUFFIX}")
        };
        let cgroup = format!("{}/{unit}", parent.trim_end_matches('/'));
        Ok(Self {
            name: unit,
            slice: slice.to_owned(),
            cgroup,
        })
    }

    pub fn is_slice(&self) -> bool {
        self.name.ends_with(SLICE_SUFFIX)
    }
}

/// A unit property value (the D-Bus variant it becomes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    Str(String),
    Bool(bool),
    U64(u64),
    /// `au`: pids.
    U32s(Vec<u32>),
    /// `ay`: a cpu or memory-node bitmask.
    Bytes(Vec<u8>),
    /// `as`.
    Strs(Vec<String>),
}

impl PropValue {
    fn to_value(&self) -> Value<'_> {
        match self {
            PropValue::Str(s) => Value::from(s.as_str()),
            PropValue::Bool(b) => Value::from(*b),
            PropValue::U64(n) => Value::from(*n),
            PropValue::U32s(v) => Value::from(v.clone()),
            PropValue::Bytes(v) => Value::from(v.clone()),
            PropValue::Strs(v) => Value::from(v.clone()),
        }
    }
}

/// A named unit property.
pub type Property = (&'static str, PropValue);

/// systemd's "infinity" for the limit properties.
const INFINITY: u64 = u64::MAX;

/// A cpu or node list (`0-3,8`) as systemd's AllowedCPUs /
/// AllowedMemoryNodes bitmask: byte 0 holds cpus 0-7, lowest bit first
/// (runc's RangeToBits).
pub fn list_to_bits(list: &str) -> Result<Vec<u8>> {
    let mut bytes: Vec<u8> = Vec::new();
    let bad = || CgroupError::InvalidResources(format!("invalid cpu/node list {list:?}"));
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo.parse().map_err(|_| bad())?;
        let hi: usize = hi.parse().map_err(|_| bad())?;
        if lo > hi || hi >= 8192 {
            return Err(bad());
        }
        for bit in lo..=hi {
            if bytes.len() <= bit / 8 {
                bytes.resize(bit / 8 + 1, 0);
            }
            bytes[bit / 8] |= 1 << (bit % 8);
        }
    }
    Ok(bytes)
}

fn limit_prop(v: i64) -> u64 {
    if v < 0 { INFINITY } else { v as u64 }
}

/// systemd's CPUQuotaPerSecUSec (and CPUQuotaPeriodUSec) for a CFS quota
/// and period, as runc computes them: the quota per second of the period
/// (100 ms when unset), rounded up to systemd's 10 ms granularity; no quota
/// is infinity.
pub fn cpu_quota_props(quota: i64, period: u64, out: &mut Vec<Property>) {
    if quota == 0 && period == 0 {
        return;
    }
    let period = if period == 0 { 100_000 } else { period };
    out.push(("CPUQuotaPeriodUSec", PropValue::U64(period)));
    let per_sec = if quota > 0 {
        let mut q = (quota as u64).saturating_mul(1_000_000) / period;
        if !q.is_multiple_of(10_000) {
            q = (q / 10_000 + 1) * 10_000;
        }
        q
    } else {
        INFINITY
    };
    out.push(("CPUQuotaPerSecUSec", PropValue::U64(per_sec)));
}

/// The properties of a new unit: its place (`Slice=` for a scope, `Wants=`
/// of its parent for a slice), `Delegate=yes` for a scope (runc and crun
/// delegate every container scope), the pid that starts a scope,
/// accounting on, and the `resources` that have a systemd property.
pub fn unit_properties(
    unit: &SystemdUnit,
    description: &str,
    pid: Option<i32>,
    resources: Option<&LinuxResources>,
    v2: bool,
) -> Result<Vec<Property>> {
    let mut props: Vec<Property> = vec![("Description", PropValue::Str(description.to_owned()))];
    if unit.is_slice() {
        props.push(("Wants", PropValue::Strs(vec![unit.slice.clone()])));
    } else {
        props.push(("Slice", PropValue::Str(unit.slice.clone())));
        props.push(("Delegate", PropValue::Bool(true)));
        let Some(pid) = pid.filter(|p| *p > 0) else {
            return Err(CgroupError::Systemd {
                unit: unit.name.clone(),
                message: "a scope starts with a process, and none was given".into(),
            });
        };
        props.push(("PIDs", PropValue::U32s(vec![pid as u32])));
    }
    props.push(("DefaultDependencies", PropValue::Bool(false)));
    props.push(("MemoryAccounting", PropValue::Bool(true)));
    props.push(("CPUAccounting", PropValue::Bool(true)));
    props.push(("TasksAccounting", PropValue::Bool(true)));
    props.push((
        if v2 {
            "IOAccounting"
        } else {
            "BlockIOAccounting"
        },
        PropValue::Bool(true),
    ));
    if let Some(r) = resources {
        props.extend(resource_properties(r, v2)?);
    }
    Ok(props)
}

/// The systemd properties for `r` (also for SetUnitProperties on update).
pub fn resource_properties(r: &LinuxResources, v2: bool) -> Result<Vec<Property>> {
    let mut props = Vec::new();
    if let Some(mem) = r.memory() {
        let limit = mem.limit().unwrap_or(0);
        if limit != 0 {
            let name = if v2 { "MemoryMax" } else { "MemoryLimit" };
            props.push((name, PropValue::U64(limit_prop(limit))));
        }
        if v2 {
            if let Some(v) = swap_to_v2(mem.swap().unwrap_or(0), limit)? {
                let v = v.parse().unwrap_or(INFINITY);
                props.push(("MemorySwapMax", PropValue::U64(v)));
            }
            if let Some(low) = mem.reservation().filter(|r| *r != 0) {
                props.push(("MemoryLow", PropValue::U64(limit_prop(low))));
            }
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(s) = cpu.shares().filter(|s| *s != 0) {
            if v2 {
                props.push(("CPUWeight", PropValue::U64(shares_to_weight(s))));
            } else {
                props.push(("CPUShares", PropValue::U64(s)));
            }
        }
        cpu_quota_props(
            cpu.quota().unwrap_or(0),
            cpu.period().unwrap_or(0),
            &mut props,
        );
        if v2 {
            if let Some(c) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                props.push(("AllowedCPUs", PropValue::Bytes(list_to_bits(c)?)));
            }
            if let Some(m) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                props.push(("AllowedMemoryNodes", PropValue::Bytes(list_to_bits(m)?)));
            }
        }
    }
    if let Some(p) = r.pids().as_ref().filter(|p| p.limit() != 0) {
        props.push(("TasksMax", PropValue::U64(limit_prop(p.limit()))));
    }
    if v2 && let Some(unified) = r.unified() {
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (key, value) in keys {
            let name = match key.as_str() {
                "memory.high" => "MemoryHigh",
                "memory.max" => "MemoryMax",
                "memory.low" => "MemoryLow",
                "memory.min" => "MemoryMin",
                "memory.swap.max" => "MemorySwapMax",
                "pids.max" => "TasksMax",
                _ => continue,
            };
            let v = match value.trim() {
                "max" => INFINITY,
                n => n.parse().map_err(|_| {
                    CgroupError::InvalidResources(format!(
                        "unified {key}: {value:?} is not a number"
                    ))
                })?,
            };
            props.retain(|(n, _)| *n != name);
            props.push((name, PropValue::U64(v)));
        }
    }
    Ok(props)
}

/// berth's D-Bus client of systemd (the system bus).
pub struct SystemdBus {
    conn: zbus::blocking::Connection,
}

impl std::fmt::Debug for SystemdBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdBus").finish_non_exhaustive()
    }
}

fn bus_err(unit: &str, e: zbus::Error) -> CgroupError {
    CgroupError::Systemd {
        unit: unit.to_owned(),
        message: e.to_string(),
    }
}

fn method_error(e: &zbus::Error) -> Option<&str> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        _ => None,
    }
}

impl SystemdBus {
    /// Connects to the system bus.
    pub fn connect() -> Result<Self> {
        let conn = zbus::blocking::Connection::system().map_err(|e| bus_err("", e))?;
        Ok(Self { conn })
    }

    fn call<B, R>(&self, unit: &str, method: &str, body: &B) -> std::result::Result<R, zbus::Error>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
    {
        let _ = unit;
        let reply = self
            .conn
            .call_method(Some(DEST), MANAGER_PATH, Some(MANAGER), method, body)?;
        reply.body().deserialize()
    }

    /// Starts the transient unit `name` with `props` and waits for its
    /// start job to finish; the unit must then be active.
    /// An existing slice is fine (kubelet or another pod made it); an
    /// existing scope that failed is reset and started again.
    pub fn start_transient_unit(&self, name: &str, props: &[Property]) -> Result<()> {
        let started = Instant::now();
        let values: Vec<(&str, Value<'_>)> =
            props.iter().map(|(k, v)| (*k, v.to_value())).collect();
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let mut retried = false;
        let job = loop {
            match self.call::<_, OwnedObjectPath>(
                name,
                "StartTransientUnit",
                &(name, "replace", &values, &aux),
            ) {
                Ok(job) => break job,
                Err(e) if method_error(&e) == Some(UNIT_EXISTS) => {
                    if name.ends_with(SLICE_SUFFIX) {
                        return Ok(());
                    }
                    if retried || self.active_state(name)? != "failed" {
                        return Err(bus_err(name, e));
                    }
                    self.reset_failed(name)?;
                    retried = true;
                }
                Err(e) => return Err(bus_err(name, e)),
            }
        };
        self.wait_job(name, &job)?;
        let state = self.active_state(name)?;
        if state != "active" {
            return Err(CgroupError::Systemd {
                unit: name.to_owned(),
                message: format!("started, but its state is {state}"),
            });
        }
        tracing::debug!(
            unit = name,
            elapsed_us = started.elapsed().as_micros() as u64,
            "systemd unit started"
        );
        Ok(())
    }

    /// Stops the unit (systemd kills what is left in it and removes its
    /// cgroup) and waits for that; a unit that is not there is fine. A
    /// failed unit is reset so that its name can be used again.
    pub fn stop_unit(&self, name: &str) -> Result<()> {
        match self.call::<_, OwnedObjectPath>(name, "StopUnit", &(name, "replace")) {
            Ok(job) => self.wait_job(name, &job)?,
            Err(e) if method_error(&e) == Some(NO_SUCH_UNIT) => return Ok(()),
            Err(e) => return Err(bus_err(name, e)),
        }
        if self.unit_exists(name)? && self.active_state(name)? == "failed" {
            self.reset_failed(name)?;
        }
        Ok(())
    }

    /// ResetFailedUnit; a unit that is not there is fine.
    pub fn reset_failed(&self, name: &str) -> Result<()> {
        match self.call::<_, ()>(name, "ResetFailedUnit", &(name,)) {
            Ok(()) => Ok(()),
            Err(e) if method_error(&e) == Some(NO_SUCH_UNIT) => Ok(()),
            Err(e) => Err(bus_err(name, e)),
        }
    }

    /// SetUnitProperties (runtime only, as runc).
    pub fn set_unit_properties(&self, name: &str, props: &[Property]) -> Result<()> {
        if props.is_empty() {
            return Ok(());
        }
        let values: Vec<(&str, Value<'_>)> =
            props.iter().map(|(k, v)| (*k, v.to_value())).collect();
        self.call::<_, ()>(name, "SetUnitProperties", &(name, true, &values))
            .map_err(|e| bus_err(name, e))
    }

    /// Whether systemd has the unit loaded.
    pub fn unit_exists(&self, name: &str) -> Result<bool> {
        match self.call::<_, OwnedObjectPath>(name, "GetUnit", &(name,)) {
            Ok(_) => Ok(true),
            Err(e) if method_error(&e) == Some(NO_SUCH_UNIT) => Ok(false),
            Err(e) => Err(bus_err(name, e)),
        }
    }

    /// The unit's ActiveState ("active", "failed", "inactive", ...);
    /// "inactive" when systemd does not have it.
    pub fn active_state(&self, name: &str) -> Result<String> {
        let path = match self.call::<_, OwnedObjectPath>(name, "GetUnit", &(name,)) {
            Ok(p) => p,
            Err(e) if method_error(&e) == Some(NO_SUCH_UNIT) => return Ok("inactive".into()),
            Err(e) => return Err(bus_err(name, e)),
        };
        self.property::<String>(
            name,
            path.as_str(),
            "org.freedesktop.systemd1.Unit",
            "ActiveState",
        )
    }

    fn property<T>(&self, unit: &str, path: &str, iface: &str, prop: &str) -> Result<T>
    where
        T: TryFrom<zbus::zvariant::OwnedValue>,
        T::Error: std::fmt::Display,
    {
        let reply = self
            .conn
            .call_method(
                Some(DEST),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(iface, prop),
            )
            .map_err(|e| bus_err(unit, e))?;
        let v: zbus::zvariant::OwnedValue =
            reply.body().deserialize().map_err(|e| bus_err(unit, e))?;
        T::try_from(v).map_err(|e| CgroupError::Systemd {
            unit: unit.to_owned(),
            message: format!("property {prop}: {e}"),
        })
    }

    /// Waits until the job object is gone (systemd removes a job when it
    /// finished, whatever the result).
    fn wait_job(&self, unit: &str, job: &OwnedObjectPath) -> Result<()> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        let mut delay = Duration::from_micros(200);
        loop {
            match self.property::<u32>(unit, job.as_str(), "org.freedesktop.systemd1.Job", "Id") {
                Ok(_) => {}
                // UnknownObject / UnknownMethod: the job is finished.
                Err(_) => return Ok(()),
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Systemd {
                    unit: unit.to_owned(),
                    message: format!("job {} did not finish in {JOB_TIMEOUT:?}", job.as_str()),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(20));
        }
    }
}

/// The process-wide connection, made on first use and made again after an
/// error (systemd restarted, bus gone).
pub fn with_bus<T>(f: impl Fn(&SystemdBus) -> Result<T>) -> Result<T> {
    use std::sync::Mutex;
    static BUS: Mutex<Option<std::sync::Arc<SystemdBus>>> = Mutex::new(None);
    let get = || -> Result<std::sync::Arc<SystemdBus>> {
        let mut g = BUS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = g.as_ref() {
            return Ok(b.clone());
        }
        let b = std::sync::Arc::new(SystemdBus::connect()?);
        *g = Some(b.clone());
        Ok(b)
    };
    let bus = get()?;
    match f(&bus) {
        Err(CgroupError::Systemd { unit, message }) if !bus.conn.inner().is_bus() => {
            *BUS.lock().unwrap_or_else(|p| p.into_inner()) = None;
            Err(CgroupError::Systemd { unit, message })
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    #[test]
    fn slices_expand_as_systemd_lays_them_out() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod1234.slice").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"
        );
        assert_eq!(expand_slice("system.slice").unwrap(), "/system.slice");
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        for bad in [
            "kubepods",
            ".slice",
            "a--b.slice",
            "a-.slice",
            "a/b.slice",
            "-a.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parents_of_slices_come_from_their_names() {
        assert_eq!(
            parent_slice("kubepods-burstable-pod1.slice"),
            "kubepods-burstable.slice"
        );
        assert_eq!(parent_slice("kubepods.slice"), "-.slice");
    }

    #[test]
    fn container_paths_name_a_scope_in_the_pod_slice() {
        let u = SystemdUnit::parse("kubepods-besteffort-pod9.slice:berth:c1").unwrap();
        assert_eq!(u.name, "berth-c1.scope");
        assert_eq!(u.slice, "kubepods-besteffort-pod9.slice");
        assert_eq!(
            u.cgroup,
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9.slice/berth-c1.scope"
        );
        assert!(!u.is_slice());
        // runc: an empty slice is system.slice; an empty prefix no dash.
        let u = SystemdUnit::parse(":cri-containerd:c2").unwrap();
        assert_eq!(
            (u.name.as_str(), u.cgroup.as_str()),
            (
                "cri-containerd-c2.scope",
                "/system.slice/cri-containerd-c2.scope"
            )
        );
        let u = SystemdUnit::parse("system.slice::c3").unwrap();
        assert_eq!(u.name, "c3.scope");
        // The root slice.
        let u = SystemdUnit::parse("-.slice:p:c4").unwrap();
        assert_eq!(u.cgroup, "/p-c4.scope");
    }

    #[test]
    fn pod_parents_are_slices() {
        let u = SystemdUnit::parse("kubepods-burstable-pod1.slice").unwrap();
        assert!(u.is_slice());
        assert_eq!(u.slice, "kubepods-burstable.slice");
        assert_eq!(
            u.cgroup,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
        );
        let u = SystemdUnit::parse("kubepods.slice:x:kubepods-pod2.slice").unwrap();
        assert_eq!(u.name, "kubepods-pod2.slice");
        assert_eq!(u.cgroup, "/kubepods.slice/kubepods-pod2.slice");
        assert!(SystemdUnit::parse("system.slice:x:kubepods-pod2.slice").is_err());
    }

    #[test]
    fn malformed_systemd_paths_are_refused() {
        for bad in [
            "a:b",
            "a:b:c:d",
            "kubepods:berth:c1",
            "system.slice:berth:",
            "system.slice:berth:../x",
            "system.slice:a/b:c",
        ] {
            assert!(SystemdUnit::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(is_systemd_path("system.slice:berth:c1"));
        assert!(is_systemd_path("kubepods.slice"));
        assert!(!is_systemd_path("/kubepods/pod1/c1"));
        assert!(!is_systemd_path("/x/y.slice"));
    }

    #[test]
    fn cpu_lists_become_little_endian_bitmasks() {
        assert_eq!(list_to_bits("0").unwrap(), vec![1]);
        assert_eq!(list_to_bits("0-3,8").unwrap(), vec![0x0f, 0x01]);
        assert_eq!(list_to_bits("9,1").unwrap(), vec![0x02, 0x02]);
        assert!(list_to_bits("3-1").is_err());
        assert!(list_to_bits("x").is_err());
    }

    #[test]
    fn cpu_quota_is_per_second_rounded_up_to_10ms() {
        let mut p = Vec::new();
        cpu_quota_props(50_000, 100_000, &mut p);
        assert_eq!(
            p,
            vec![
                ("CPUQuotaPeriodUSec", PropValue::U64(100_000)),
                ("CPUQuotaPerSecUSec", PropValue::U64(500_000))
            ]
        );
        let mut p = Vec::new();
        cpu_quota_props(1_234, 0, &mut p);
        assert_eq!(p[1], ("CPUQuotaPerSecUSec", PropValue::U64(20_000)));
        let mut p = Vec::new();
        cpu_quota_props(-1, 50_000, &mut p);
        assert_eq!(p[1], ("CPUQuotaPerSecUSec", PropValue::U64(u64::MAX)));
        let mut p = Vec::new();
        cpu_quota_props(0, 0, &mut p);
        assert!(p.is_empty());
    }

    fn prop<'a>(props: &'a [Property], name: &str) -> Option<&'a PropValue> {
        props.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    #[test]
    fn a_scope_is_delegated_in_its_slice_with_its_first_pid() {
        let u = SystemdUnit::parse("kubepods-pod1.slice:berth:c1").unwrap();
        let p = unit_properties(&u, "berth container c1", Some(42), None, true).unwrap();
        assert_eq!(
            prop(&p, "Slice"),
            Some(&PropValue::Str("kubepods-pod1.slice".into()))
        );
        assert_eq!(prop(&p, "Delegate"), Some(&PropValue::Bool(true)));
        assert_eq!(prop(&p, "PIDs"), Some(&PropValue::U32s(vec![42])));
        assert_eq!(
            prop(&p, "DefaultDependencies"),
            Some(&PropValue::Bool(false))
        );
        assert_eq!(prop(&p, "IOAccounting"), Some(&PropValue::Bool(true)));
        assert!(
            unit_properties(&u, "x", None, None, true).is_err(),
            "a scope without a pid"
        );
    }

    #[test]
    fn a_slice_wants_its_parent_and_is_not_delegated() {
        let u = SystemdUnit::parse("kubepods-burstable-pod1.slice").unwrap();
        let p = unit_properties(&u, "berth pod", None, None, true).unwrap();
        assert_eq!(
            prop(&p, "Wants"),
            Some(&PropValue::Strs(vec!["kubepods-burstable.slice".into()]))
        );
        assert_eq!(prop(&p, "Delegate"), None);
        assert_eq!(prop(&p, "PIDs"), None);
    }

    #[test]
    fn resources_become_v2_properties_with_runcs_conversions() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(256 << 20)
                    .swap(384 << 20)
                    .reservation(64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(20_000i64)
                    .period(100_000u64)
                    .cpus("0-1")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(-1i64).build().unwrap())
            .unified(
                [
                    ("memory.high".to_string(), "200000000".to_string()),
                    ("io.max".to_string(), "8:0 rbps=1".to_string()),
                ]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
            )
            .build()
            .unwrap();
        let p = resource_properties(&r, true).unwrap();
        assert_eq!(prop(&p, "MemoryMax"), Some(&PropValue::U64(256 << 20)));
        // memory+swap 384M minus memory 256M.
        assert_eq!(prop(&p, "MemorySwapMax"), Some(&PropValue::U64(128 << 20)));
        assert_eq!(prop(&p, "MemoryLow"), Some(&PropValue::U64(64 << 20)));
        assert_eq!(prop(&p, "CPUWeight"), Some(&PropValue::U64(39)));
        assert_eq!(
            prop(&p, "CPUQuotaPerSecUSec"),
            Some(&PropValue::U64(200_000))
        );
        assert_eq!(prop(&p, "AllowedCPUs"), Some(&PropValue::Bytes(vec![3])));
        assert_eq!(
            prop(&p, "AllowedMemoryNodes"),
            Some(&PropValue::Bytes(vec![1]))
        );
        assert_eq!(prop(&p, "TasksMax"), Some(&PropValue::U64(u64::MAX)));
        assert_eq!(prop(&p, "MemoryHigh"), Some(&PropValue::U64(200_000_000)));
        // v1 names.
        let p = resource_properties(&r, false).unwrap();
        assert_eq!(prop(&p, "MemoryLimit"), Some(&PropValue::U64(256 << 20)));
        assert_eq!(prop(&p, "CPUShares"), Some(&PropValue::U64(1024)));
        assert_eq!(prop(&p, "MemorySwapMax"), None);
    }

    #[test]
    fn properties_serialize_as_dbus_variants() {
        let u = SystemdUnit::parse("system.slice:berth:c1").unwrap();
        let props = unit_properties(&u, "d", Some(7), None, true).unwrap();
        let values: Vec<(&str, Value<'_>)> =
            props.iter().map(|(k, v)| (*k, v.to_value())).collect();
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let body = ("berth-c1.scope", "replace", &values, &aux);
        use zbus::zvariant::Type;
        assert_eq!(
            <(
                &str,
                &str,
                Vec<(&str, Value<'_>)>,
                Vec<(&str, Vec<(&str, Value<'_>)>)>
            )>::SIGNATURE
                .to_string(),
            "(ssa(sv)a(sa(sv)))"
        );
        let ctxt = zbus::zvariant::serialized::Context::new_dbus(zbus::zvariant::LE, 0);
        zbus::zvariant::to_bytes(ctxt, &body).unwrap();
    }
}
