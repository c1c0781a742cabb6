//! A small client of systemd's D-Bus API (`org.freedesktop.systemd1`): what
//! runc and crun use of it, done the same way — `StartTransientUnit` for a
//! scope or slice, wait for its job, `StopUnit`, and unit properties.
//!
//! Blocking (zbus's blocking API): its callers are the shim's single-thread
//! paths and berthd's `spawn_blocking` work.

use std::time::{Duration, Instant};

use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::{Result, SystemdError};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const JOB: &str = "org.freedesktop.systemd1.Job";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// How long a start or stop job may take (runc waits 30 s too).
pub const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// One property of a transient unit, as `StartTransientUnit` takes them.
pub type Property<'a> = (&'a str, Value<'a>);

/// A connection to the system instance of systemd.
pub struct Systemd {
    conn: Connection,
}

fn dbus_err(call: &str) -> impl FnOnce(zbus::Error) -> SystemdError + '_ {
    move |source| SystemdError::Dbus {
        call: call.to_owned(),
        source,
    }
}

impl Systemd {
    /// Connects to the system bus.
    pub fn connect() -> Result<Self> {
        let conn = Connection::system().map_err(dbus_err("connect to the system bus"))?;
        Ok(Self { conn })
    }

    fn manager<B>(&self, method: &str, body: &B) -> Result<zbus::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.conn
            .call_method(Some(DEST), PATH, Some(MANAGER), method, body)
            .map_err(dbus_err(method))
    }

    /// Starts the transient unit `name` (`mode` "replace", "fail", ...) with
    /// `properties`, and waits until its job finished. A unit that already
    /// exists is an error ([`is_unit_exists`]).
    pub fn start_transient_unit(&self, name: &str, properties: &[Property<'_>]) -> Result<()> {
        let aux: Vec<(&str, Vec<Property<'_>>)> = Vec::new();
        let reply = self.manager("StartTransientUnit", &(name, "fail", properties, aux))?;
        let job: OwnedObjectPath = reply
            .body()
            .deserialize()
            .map_err(dbus_err("StartTransientUnit reply"))?;
        self.wait_job(name, &job)?;
        match self.active_state(name)?.as_str() {
            "active" | "activating" => Ok(()),
            state => Err(SystemdError::Job {
                unit: name.to_owned(),
                result: format!("state {state}"),
            }),
        }
    }

    /// Stops `name` and waits for the job. A unit that is not loaded is
    /// already stopped.
    pub fn stop_unit(&self, name: &str) -> Result<()> {
        let reply = match self.manager("StopUnit", &(name, "replace")) {
            Ok(r) => r,
            Err(e) if is_no_such_unit(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let job: OwnedObjectPath = reply
            .body()
            .deserialize()
            .map_err(dbus_err("StopUnit reply"))?;
        self.wait_job(name, &job)
    }

    /// Sets properties of a running unit (`SetUnitProperties`, runtime only).
    pub fn set_unit_properties(&self, name: &str, properties: &[Property<'_>]) -> Result<()> {
        self.manager("SetUnitProperties", &(name, true, properties))?;
        Ok(())
    }

    /// The unit's object path (`GetUnit`): loaded units only.
    pub fn unit_path(&self, name: &str) -> Result<OwnedObjectPath> {
        self.manager("GetUnit", &(name,))?
            .body()
            .deserialize()
            .map_err(dbus_err("GetUnit reply"))
    }

    /// A property of the unit's interface `iface`
    /// (`org.freedesktop.systemd1.Unit`, `...Scope`, `...Slice`).
    pub fn unit_property(&self, name: &str, iface: &str, property: &str) -> Result<OwnedValue> {
        let path = self.unit_path(name)?;
        let reply = self
            .conn
            .call_method(Some(DEST), &path, Some(PROPERTIES), "Get", &(iface, property))
            .map_err(dbus_err("Properties.Get"))?;
        reply
            .body()
            .deserialize::<OwnedValue>()
            .map_err(dbus_err("Properties.Get reply"))
    }

    /// The unit's `ActiveState` ("active", "inactive", "failed", ...).
    pub fn active_state(&self, name: &str) -> Result<String> {
        let v = match self.unit_property(name, UNIT, "ActiveState") {
            Ok(v) => v,
            Err(e) if is_no_such_unit(&e) => return Ok("inactive".into()),
            Err(e) => return Err(e),
        };
        String::try_from(v).map_err(|e| SystemdError::Dbus {
            call: "ActiveState".into(),
            source: zbus::Error::Variant(e),
        })
    }

    /// Waits until the job object is gone (finished, whatever its result:
    /// the caller checks the unit's state). Polls: systemd only signals
    /// `JobRemoved` to subscribed clients, and a scope's job takes a few ms.
    fn wait_job(&self, unit: &str, job: &OwnedObjectPath) -> Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let r = self.conn.call_method(
                Some(DEST),
                job,
                Some(PROPERTIES),
                "Get",
                &(JOB, "State"),
            );
            match r {
                Ok(_) => {}
                // The job object is gone: the job finished.
                Err(zbus::Error::MethodError(..)) => return Ok(()),
                Err(e) => return Err(dbus_err("Job.State")(e)),
            }
            if start.elapsed() > JOB_TIMEOUT {
                return Err(SystemdError::Timeout {
                    unit: unit.to_owned(),
                    secs: JOB_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

fn method_error_name(e: &SystemdError) -> Option<&str> {
    match e {
        SystemdError::Dbus {
            source: zbus::Error::MethodError(name, ..),
            ..
        } => Some(name.as_str()),
        _ => None,
    }
}

/// Whether `e` says the unit is not loaded.
pub fn is_no_such_unit(e: &SystemdError) -> bool {
    method_error_name(e) == Some("org.freedesktop.systemd1.NoSuchUnit")
}

/// Whether `e` says a unit of that name already exists.
pub fn is_unit_exists(e: &SystemdError) -> bool {
    method_error_name(e) == Some("org.freedesktop.systemd1.UnitExists")
}

/// The properties of a scope holding `pids`, in `slice`, whose processes
/// systemd may delegate cgroup control to (`Delegate=yes`). The scope is
/// collected as soon as its processes are gone, also when they failed.
pub fn scope_properties<'a>(description: &'a str, slice: &'a str, pids: &[u32]) -> Vec<Property<'a>> {
    vec![
        ("Description", Value::from(description)),
        ("Slice", Value::from(slice)),
        ("PIDs", Value::from(pids.to_vec())),
        ("Delegate", Value::from(true)),
        ("CollectMode", Value::from("inactive-or-failed")),
    ]
}
