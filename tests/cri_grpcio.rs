//! A CRI client berth did not write: Python grpcio from PyPI (in the venv
//! tests/grpcio-venv.sh makes under target/), with a default channel on the
//! unix socket. grpcio sends the socket path's %-encoding as `:authority`,
//! which hyper's h2 refuses unless berthd rewrites it (issue 14). Its stubs
//! are generated at test time from the api.proto of the k8s-cri crate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use common::cri_pods::PodEnv;

/// The venv's python, made if missing; None (with the reason) if it can't be.
fn grpcio_python() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/grpcio-venv/bin/python");
    let importable = |p: &Path| {
        Command::new(p)
            .args(["-c", "import grpc, grpc_tools"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if importable(&python) {
        return Ok(python);
    }
    let made = Command::new(root.join("tests/grpcio-venv.sh"))
        .status()
        .map_err(|e| format!("tests/grpcio-venv.sh: {e}"))?;
    if made.success() && importable(&python) {
        Ok(python)
    } else {
        Err(format!(
            "tests/grpcio-venv.sh could not install grpcio ({made}); needs python3-venv and PyPI"
        ))
    }
}

/// The host's target triple, as rustc names it.
fn host_triple() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("no host line in rustc -vV")
}

/// api.proto as the k8s-cri crate this build uses ships it.
fn cri_proto() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Offline, the packages of this platform only: those of others (Windows
    // crates of the lock file) were never downloaded on a fresh machine.
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host_triple()?])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .find(|p| p["name"] == "k8s-cri")
        .and_then(|p| p["manifest_path"].as_str())
        .context("k8s-cri in cargo metadata")?;
    let proto = Path::new(manifest)
        .parent()
        .context("crate dir")?
        .join("proto/v1.proto");
    anyhow::ensure!(proto.is_file(), "{} is missing", proto.display());
    Ok(proto)
}

fn client(python: &Path, socket: &Path, proto: &Path, pod: Option<&str>) -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpcio/cri_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(socket).arg(proto);
    if let Some(pod) = pod {
        cmd.arg(pod);
    }
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "grpcio client failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_runs_version_and_a_pod_lifecycle() -> Result<()> {
    let python = match grpcio_python() {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: {why}");
            return Ok(());
        }
    };
    let proto = cri_proto()?;
    let env = PodEnv::new("grpcio", 23)?;
    let berthd = env.start()?;

    let out = client(&python, &berthd.socket, &proto, None)?;
    assert!(out.contains("version berth v1\n"), "{out}");
    assert!(out.contains("images 0\n"), "{out}");

    let config = serde_json::to_string(&env.pod_config("grpciopod", false))?;
    let out = client(&python, &berthd.socket, &proto, Some(&config))?;
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .context(out.clone())?
        .to_owned();
    assert!(out.contains("status SANDBOX_READY 10.203."), "{out}");
    assert!(out.contains(&format!("listed {id}")), "{out}");
    assert!(out.contains("stopped SANDBOX_NOTREADY\n"), "{out}");
    assert!(out.contains("removed NOT_FOUND\n"), "{out}");
    assert!(
        !env.dirs.state.join("pods").join(&id).exists(),
        "the pod's directory is gone"
    );
    // What grpcio sent, as berthd saw it.
    assert!(
        berthd.log_text().contains("taking it as localhost"),
        "the authority was rewritten"
    );
    Ok(())
}
