//! The Task service's state machine over a stub runtime that records what
//! it is asked and whose processes exit when the test says (through
//! `on_exit`, as the reaper would): no root, no cgroups, no processes.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::runtime::cgroups::OomCounts;
use berth::runtime::{CreateOptions, ExecProcess, Stats, Stdio};
use containerd_shim::ExitSignal;
use containerd_shim::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, StartRequest, StateRequest,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::protos::types::task::Status;
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};

use super::runtime::{Runtime, RuntimeContainer};
use super::{Inner, TaskService, has_own_pid_namespace};
use crate::error::{Result, ShimError};
use crate::events::EventSender;

type Hook = Mutex<Option<Box<dyn FnOnce(i32) + Send>>>;

/// What the stub was asked, and what it does at start and delete.
#[derive(Default)]
struct Record {
    calls: Mutex<Vec<String>>,
    next_pid: AtomicI32,
    on_start: Hook,
    on_delete: Hook,
    /// What `oom_counts` reads (own, parent).
    oom: Mutex<OomCounts>,
}

impl Record {
    fn call(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }
    fn pid(&self) -> i32 {
        1000 + self.next_pid.fetch_add(1, Ordering::SeqCst)
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn run_hook(hook: &Hook, pid: i32) {
    if let Some(f) = hook.lock().unwrap().take() {
        f(pid);
    }
}

#[derive(Clone, Default)]
struct Stub(Arc<Record>);

#[derive(Clone)]
struct StubContainer {
    id: String,
    pid: i32,
    rec: Arc<Record>,
}

impl Runtime for Stub {
    type Container = StubContainer;
    fn create(
        &self,
        opts: CreateOptions<'_>,
    ) -> Result<(StubContainer, Option<std::os::fd::OwnedFd>)> {
        self.0.call(format!("create {}", opts.id));
        let c = StubContainer {
            id: opts.id.to_string(),
            pid: self.0.pid(),
            rec: self.0.clone(),
        };
        Ok((c, None))
    }
    fn restore(
        &self,
        opts: CreateOptions<'_>,
        images: &std::path::Path,
        _run: &berth::runtime::checkpoint::Runner<'_>,
    ) -> Result<StubContainer> {
        self.0
            .call(format!("restore {} {}", opts.id, images.display()));
        Ok(StubContainer {
            id: opts.id.to_string(),
            pid: self.0.pid(),
            rec: self.0.clone(),
        })
    }
}

impl RuntimeContainer for StubContainer {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn start(&self) -> Result<()> {
        self.rec.call(format!("start {}", self.id));
        run_hook(&self.rec.on_start, self.pid);
        Ok(())
    }
    fn kill(&self, signal: i32, all: bool) -> Result<()> {
        self.rec
            .call(format!("kill {} {signal} all={all}", self.id));
        Ok(())
    }
    fn kill_exec(&self, pid: i32, signal: i32) -> Result<()> {
        self.rec.call(format!("kill-exec {pid} {signal}"));
        Ok(())
    }
    fn exec(&self, process: &OciProcess, _stdio: Stdio) -> Result<ExecProcess> {
        let args = process.args().clone().unwrap_or_default().join(" ");
        self.rec.call(format!("exec {} {args}", self.id));
        Ok(ExecProcess {
            pid: self.rec.pid(),
            pty_master: None,
        })
    }
    fn pause(&self) -> Result<()> {
        self.rec.call(format!("pause {}", self.id));
        Ok(())
    }
    fn resume(&self) -> Result<()> {
        self.rec.call(format!("resume {}", self.id));
        Ok(())
    }
    fn update(&self, _resources: &LinuxResources) -> Result<()> {
        self.rec.call(format!("update {}", self.id));
        Ok(())
    }
    fn pids(&self) -> Result<Vec<i32>> {
        Ok(vec![self.pid])
    }
    fn stats(&self) -> Result<Stats> {
        Ok(Stats::default())
    }
    fn oom_notifier(&self) -> Result<std::os::fd::OwnedFd> {
        Err(ShimError::Unimplemented("the stub has no cgroup".into()))
    }
    fn oom_counts(&self) -> Result<OomCounts> {
        Ok(*self.rec.oom.lock().unwrap())
    }
    fn delete(&self) -> Result<()> {
        self.rec.call(format!("delete {}", self.id));
        run_hook(&self.rec.on_delete, self.pid);
        Ok(())
    }
    fn persist(&self, _bundle: &std::path::Path) -> Result<()> {
        Ok(())
    }
    fn checkpoint(
        &self,
        images: &std::path::Path,
        _work: &std::path::Path,
        _run: &berth::runtime::checkpoint::Runner<'_>,
    ) -> Result<()> {
        self.rec
            .call(format!("checkpoint {} {}", self.id, images.display()));
        Ok(())
    }
}

struct Fixture {
    svc: TaskService<Stub>,
    rec: Arc<Record>,
    events: Receiver<(String, Any)>,
    bundle: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let stub = Stub::default();
        let rec = stub.0.clone();
        let (sender, events) = EventSender::recording();
        let svc = TaskService::without_reaper(stub, "t", sender, Arc::new(ExitSignal::default()));
        let bundle = tempfile::tempdir().unwrap();
        Spec::default()
            .save(bundle.path().join("config.json"))
            .unwrap();
        Fixture {
            svc,
            rec,
            events,
            bundle,
        }
    }

    fn inner(&self) -> &Inner<Stub> {
        &self.svc.inner
    }

    fn create(&self, id: &str) -> Result<u32> {
        let r = self.inner().create(&CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle.path().display().to_string(),
            ..Default::default()
        })?;
        Ok(r.pid)
    }

    fn start(&self, id: &str, exec_id: &str) -> Result<i32> {
        let r = self.inner().start(&StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })?;
        Ok(r.pid as i32)
    }

    fn state(&self, id: &str, exec_id: &str) -> Result<(Status, u32)> {
        let s = self.inner().state(&StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })?;
        Ok((s.status.enum_value_or_default(), s.exit_status))
    }

    fn kill(&self, id: &str, exec_id: &str, all: bool) -> Result<()> {
        self.inner().kill(&KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal: 9,
            all,
            ..Default::default()
        })
    }

    fn delete(&self, id: &str, exec_id: &str) -> Result<u32> {
        let r = self.inner().delete(&DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })?;
        Ok(r.exit_status)
    }

    fn add_exec(&self, id: &str, exec_id: &str) -> Result<()> {
        let process: OciProcess =
            serde_json::from_str(r#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#)
                .unwrap();
        self.inner().exec(&ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process).unwrap(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    /// The events sent so far, by message name.
    fn events(&self) -> Vec<String> {
        self.events
            .try_iter()
            .map(|(_, any)| {
                any.type_url
                    .trim_start_matches("containerd.events.")
                    .to_string()
            })
            .collect()
    }
}

fn code(r: Result<impl std::fmt::Debug>) -> Code {
    r.expect_err("an error").code()
}

#[test]
fn init_goes_created_running_stopped_and_is_deleted() {
    let f = Fixture::new();
    let pid = f.create("c1").unwrap() as i32;
    assert_eq!(f.state("c1", "").unwrap(), (Status::CREATED, 0));
    assert_eq!(code(f.create("c1")), Code::ALREADY_EXISTS);
    assert_eq!(code(f.create("")), Code::INVALID_ARGUMENT);
    assert_eq!(f.start("c1", "").unwrap(), pid);
    assert_eq!(f.state("c1", "").unwrap(), (Status::RUNNING, 0));
    assert_eq!(
        code(f.start("c1", "")),
        Code::FAILED_PRECONDITION,
        "started twice"
    );
    assert_eq!(
        code(f.delete("c1", "")),
        Code::FAILED_PRECONDITION,
        "running"
    );
    f.inner().on_exit(pid, 3);
    assert_eq!(f.state("c1", "").unwrap(), (Status::STOPPED, 3));
    assert_eq!(f.delete("c1", "").unwrap(), 3);
    assert_eq!(code(f.state("c1", "")), Code::NOT_FOUND);
    assert_eq!(
        f.events(),
        ["TaskCreate", "TaskStart", "TaskExit", "TaskDelete"]
    );
    assert_eq!(f.rec.calls(), ["create c1", "start c1", "delete c1"]);
}

#[test]
fn exec_is_added_started_and_deleted() {
    let f = Fixture::new();
    f.create("c1").unwrap();
    // An exec may be added before the init starts (it starts after it).
    f.add_exec("c1", "e1").unwrap();
    f.start("c1", "").unwrap();
    assert_eq!(code(f.add_exec("c1", "e1")), Code::ALREADY_EXISTS);
    assert_eq!(code(f.add_exec("c1", "")), Code::INVALID_ARGUMENT);
    assert_eq!(code(f.add_exec("nope", "e2")), Code::NOT_FOUND);
    assert_eq!(f.state("c1", "e1").unwrap(), (Status::CREATED, 0));
    assert_eq!(
        code(f.kill("c1", "e1", false)),
        Code::FAILED_PRECONDITION,
        "not started"
    );
    let pid = f.start("c1", "e1").unwrap();
    assert_eq!(f.state("c1", "e1").unwrap(), (Status::RUNNING, 0));
    assert_eq!(
        code(f.delete("c1", "e1")),
        Code::FAILED_PRECONDITION,
        "running"
    );
    f.kill("c1", "e1", false).unwrap();
    f.inner().on_exit(pid, 137);
    assert_eq!(f.state("c1", "e1").unwrap(), (Status::STOPPED, 137));
    assert_eq!(
        f.state("c1", "").unwrap().0,
        Status::RUNNING,
        "the init runs on"
    );
    assert_eq!(f.delete("c1", "e1").unwrap(), 137);
    assert_eq!(code(f.state("c1", "e1")), Code::NOT_FOUND);
    assert_eq!(
        f.events(),
        [
            "TaskCreate",
            "TaskExecAdded",
            "TaskStart",
            "TaskExecStarted",
            "TaskExit"
        ]
    );
    assert_eq!(
        f.rec.calls(),
        [
            "create c1".to_string(),
            "start c1".into(),
            "exec c1 true".into(),
            format!("kill-exec {pid} 9"),
        ]
    );
}

#[test]
fn kill_after_exit_is_not_found_unless_all() {
    let f = Fixture::new();
    let pid = f.create("c1").unwrap() as i32;
    f.start("c1", "").unwrap();
    f.add_exec("c1", "e1").unwrap();
    let exec_pid = f.start("c1", "e1").unwrap();
    f.inner().on_exit(exec_pid, 0);
    assert_eq!(code(f.kill("c1", "e1", false)), Code::NOT_FOUND);
    f.inner().on_exit(pid, 0);
    assert_eq!(code(f.kill("c1", "", false)), Code::NOT_FOUND);
    // `all` still reaches whatever is left in the container.
    f.kill("c1", "", true).unwrap();
    assert_eq!(
        code(f.add_exec("c1", "e2")),
        Code::FAILED_PRECONDITION,
        "stopped"
    );
    assert_eq!(f.rec.calls().last().unwrap(), "kill c1 9 all=true");
}

#[test]
fn task_start_is_sent_before_a_task_exit_that_races_it() {
    let f = Fixture::new();
    f.create("c1").unwrap();
    // The init exits while the runtime's start is still returning: the
    // reaper's dispatch runs on another thread at once.
    let inner = f.svc.inner.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    *f.rec.on_start.lock().unwrap() = Some(Box::new(move |pid| {
        let t = std::thread::spawn(move || inner.on_exit(pid, 0));
        std::thread::sleep(Duration::from_millis(50));
        tx.send(t).unwrap();
    }));
    f.start("c1", "").unwrap();
    rx.recv().unwrap().join().unwrap();
    assert_eq!(f.events(), ["TaskCreate", "TaskStart", "TaskExit"]);
    assert_eq!(f.state("c1", "").unwrap().0, Status::STOPPED);
}

/// Runs one container whose cgroup reads `at_create` when it is created
/// and `at_exit` when its init exits with `status`; the events sent.
fn oom_at_exit(at_create: OomCounts, at_exit: OomCounts, status: u32) -> Vec<String> {
    let f = Fixture::new();
    *f.rec.oom.lock().unwrap() = at_create;
    let pid = f.create("c1").unwrap() as i32;
    f.start("c1", "").unwrap();
    *f.rec.oom.lock().unwrap() = at_exit;
    f.inner().on_exit(pid, status);
    // Delete reads the same count: nothing new.
    assert_eq!(f.delete("c1", "").unwrap(), status);
    f.events()
}

fn oom_counts(own: Option<u64>, parent: Option<u64>) -> OomCounts {
    OomCounts { own, parent }
}

const WITH_OOM: [&str; 5] = [
    "TaskCreate",
    "TaskStart",
    "TaskOOM",
    "TaskExit",
    "TaskDelete",
];
const WITHOUT_OOM: [&str; 4] = ["TaskCreate", "TaskStart", "TaskExit", "TaskDelete"];

/// The systemd driver's race: the scope is removed with its count before
/// anyone read it; the parent's count and the SIGKILL tell the OOM kill.
#[test]
fn an_oom_kill_whose_scope_is_gone_is_reported_before_the_exit() {
    let events = oom_at_exit(oom_counts(Some(0), Some(2)), oom_counts(None, Some(3)), 137);
    assert_eq!(events, WITH_OOM);
}

/// A SIGKILL with no new kill in the parent is no OOM, nor is a parent's
/// kill when the init exited otherwise.
#[test]
fn a_sigkill_without_a_new_parent_kill_is_no_oom() {
    let events = oom_at_exit(oom_counts(Some(0), Some(2)), oom_counts(None, Some(2)), 137);
    assert_eq!(events, WITHOUT_OOM);
    let events = oom_at_exit(oom_counts(Some(0), Some(2)), oom_counts(None, Some(3)), 1);
    assert_eq!(events, WITHOUT_OOM);
}

#[test]
fn an_oom_kill_the_exit_still_finds_in_the_cgroup_is_reported_once() {
    let events = oom_at_exit(
        oom_counts(Some(0), Some(0)),
        oom_counts(Some(1), Some(1)),
        137,
    );
    assert_eq!(events, WITH_OOM);
}

#[test]
fn a_never_started_init_is_deleted_with_its_kill_status() {
    let f = Fixture::new();
    f.create("c1").unwrap();
    assert_eq!(code(f.inner().pause("c1")), Code::FAILED_PRECONDITION);
    // The runtime's delete kills the waiting init; the reaper reports it.
    let inner = f.svc.inner.clone();
    *f.rec.on_delete.lock().unwrap() = Some(Box::new(move |pid| {
        std::thread::spawn(move || inner.on_exit(pid, 137));
    }));
    assert_eq!(f.delete("c1", "").unwrap(), 137);
    assert_eq!(code(f.state("c1", "")), Code::NOT_FOUND);
    assert_eq!(f.events(), ["TaskCreate", "TaskExit", "TaskDelete"]);
    assert_eq!(f.rec.calls(), ["create c1", "delete c1"]);
}

#[test]
fn pause_and_resume_a_running_container() {
    let f = Fixture::new();
    f.create("c1").unwrap();
    f.start("c1", "").unwrap();
    f.inner().pause("c1").unwrap();
    assert_eq!(f.state("c1", "").unwrap().0, Status::PAUSED);
    assert_eq!(code(f.inner().pause("c1")), Code::FAILED_PRECONDITION);
    assert_eq!(
        code(f.delete("c1", "")),
        Code::FAILED_PRECONDITION,
        "paused"
    );
    f.inner().resume("c1").unwrap();
    assert_eq!(f.state("c1", "").unwrap().0, Status::RUNNING);
    assert_eq!(code(f.inner().resume("c1")), Code::FAILED_PRECONDITION);
    assert_eq!(
        f.events(),
        ["TaskCreate", "TaskStart", "TaskPaused", "TaskResumed"]
    );
    assert_eq!(
        f.rec.calls(),
        ["create c1", "start c1", "pause c1", "resume c1"]
    );
}

#[test]
fn only_a_running_container_is_checkpointed() {
    use containerd_shim::protos::shim::shim::CheckpointTaskRequest;
    let f = Fixture::new();
    let req = |path: &str| CheckpointTaskRequest {
        id: "c1".into(),
        path: path.into(),
        ..Default::default()
    };
    f.create("c1").unwrap();
    assert_eq!(
        code(f.inner().checkpoint(&req("/img"))),
        Code::FAILED_PRECONDITION
    );
    f.start("c1", "").unwrap();
    assert_eq!(
        code(f.inner().checkpoint(&req("img"))),
        Code::INVALID_ARGUMENT
    );
    f.inner().checkpoint(&req("/img")).unwrap();
    assert_eq!(f.rec.calls().last().unwrap(), "checkpoint c1 /img");
}

#[test]
fn a_create_with_a_checkpoint_restores_and_start_continues_it() {
    let f = Fixture::new();
    let req = |path: &str| CreateTaskRequest {
        id: "c1".into(),
        bundle: f.bundle.path().display().to_string(),
        checkpoint: path.into(),
        ..Default::default()
    };
    assert_eq!(code(f.inner().create(&req("img"))), Code::INVALID_ARGUMENT);
    let pid = f.inner().create(&req("/ck/checkpoint")).unwrap().pid;
    assert!(pid > 0);
    assert_eq!(f.state("c1", "").unwrap().0, Status::CREATED);
    f.start("c1", "").unwrap();
    assert_eq!(f.state("c1", "").unwrap().0, Status::RUNNING);
    assert_eq!(f.rec.calls(), ["restore c1 /ck/checkpoint", "start c1"]);
}

#[test]
fn unknown_containers_are_not_found() {
    let f = Fixture::new();
    assert_eq!(code(f.state("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(f.start("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(f.kill("nope", "", true)), Code::NOT_FOUND);
    assert_eq!(code(f.delete("nope", "")), Code::NOT_FOUND);
    f.create("c1").unwrap();
    assert_eq!(code(f.state("c1", "e9")), Code::NOT_FOUND);
}

#[test]
fn the_real_service_starts_with_its_reaper() {
    let svc = TaskService::new(
        super::Berth,
        "t",
        EventSender::discard(),
        Arc::new(ExitSignal::default()),
    )
    .unwrap();
    let err = svc
        .inner
        .state(&StateRequest {
            id: "nope".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), Code::NOT_FOUND);
}

#[test]
fn pid_namespace_detection() {
    let mut spec = Spec::default();
    assert!(has_own_pid_namespace(&spec));
    let linux = spec.linux().clone().map(|mut l| {
        l.set_namespaces(Some(vec![]));
        l
    });
    spec.set_linux(linux);
    assert!(!has_own_pid_namespace(&spec));
}
