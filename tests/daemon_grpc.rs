//! berthd as a process: the CRI socket, Version and Status over gRPC,
//! Unimplemented calls, socket mode, clean SIGTERM shutdown, instances side
//! by side, and the config file vs flags.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use anyhow::Result;
use common::berthd::{Berthd, BerthdDirs};
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_over_grpc() -> Result<()> {
    let dirs = BerthdDirs::new("version")?;
    let berthd = Berthd::start(&dirs)?;
    let v = berthd
        .runtime()
        .await?
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.version.is_empty());
    // Each RPC runs in a span whose close (at debug level) logs its duration.
    berthd.wait_for_log(|l| {
        l.contains("rpc{rpc=Version") && l.contains("close") && l.contains("time.busy")
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_over_grpc() -> Result<()> {
    let dirs = BerthdDirs::new("status")?;
    let berthd = Berthd::start(&dirs)?;
    let mut rt = berthd.runtime().await?;
    let quiet = rt
        .status(cri::StatusRequest { verbose: false })
        .await?
        .into_inner();
    assert!(quiet.info.is_empty(), "info only when verbose");
    let conditions = quiet.status.expect("status").conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady");
    assert!(runtime.status);
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady");
    // Ready or not depends on the machine (nft, CNI config); not ready
    // always says why.
    if !network.status {
        assert!(!network.reason.is_empty() && !network.message.is_empty());
    }

    let verbose = rt
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&verbose.info["config"])?;
    assert_eq!(config["root"].as_str(), Some(dirs.root.to_str().unwrap()));
    assert_eq!(
        config["address"].as_str(),
        Some(dirs.socket.to_str().unwrap())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbuilt_call_is_unimplemented_with_its_name() -> Result<()> {
    let dirs = BerthdDirs::new("unimpl")?;
    let berthd = Berthd::start(&dirs)?;
    let mut rt = berthd.runtime().await?;
    let err = rt
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .expect_err("CheckpointContainer is not built");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(
        err.message().contains("CheckpointContainer"),
        "{}",
        err.message()
    );
    let err = rt
        .exec(cri::ExecRequest::default())
        .await
        .expect_err("Exec without a container is refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("container_id"), "{}", err.message());
    // The daemon keeps serving after refusals.
    rt.version(cri::VersionRequest::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0660_in_a_0711_dir() -> Result<()> {
    let dirs = BerthdDirs::new("mode")?;
    let _berthd = Berthd::start(&dirs)?;
    let meta = std::fs::symlink_metadata(&dirs.socket)?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let parent = std::fs::metadata(dirs.socket.parent().unwrap())?;
    assert_eq!(parent.permissions().mode() & 0o777, 0o711);
    for dir in [&dirs.root, &dirs.state] {
        assert_eq!(
            std::fs::metadata(dir)?.permissions().mode() & 0o777,
            0o711,
            "{}",
            dir.display()
        );
    }
    Ok(())
}

// Multi-threaded, so that the client's connection task keeps answering
// (HTTP/2 GOAWAY + PING) while the test thread waits for berthd to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_removes_the_socket() -> Result<()> {
    let dirs = BerthdDirs::new("sigterm")?;
    let mut berthd = Berthd::start(&dirs)?;
    // An open, idle client connection must not keep berthd from stopping.
    let mut rt = berthd.runtime().await?;
    rt.version(cri::VersionRequest::default()).await?;
    let status = berthd.stop(Signal::SIGTERM)?;
    assert!(
        status.success(),
        "exit {status}; log:\n{}",
        berthd.log_text()
    );
    assert!(!dirs.socket.exists(), "socket left behind");
    let log = berthd.log_text();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(!log.contains("did not finish in time"), "{log}");
    // The same directories serve again.
    let again = Berthd::start(&dirs)?;
    again.serves().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_shuts_down_cleanly() -> Result<()> {
    let dirs = BerthdDirs::new("sigint")?;
    let mut berthd = Berthd::start(&dirs)?;
    let status = berthd.stop(Signal::SIGINT)?;
    assert!(
        status.success(),
        "exit {status}; log:\n{}",
        berthd.log_text()
    );
    assert!(!dirs.socket.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_side_by_side() -> Result<()> {
    let a_dirs = BerthdDirs::new("side-a")?;
    let b_dirs = BerthdDirs::new("side-b")?;
    let mut a = Berthd::start(&a_dirs)?;
    let b = Berthd::start(&b_dirs)?;
    let mut a_rt = a.runtime().await?;
    let mut b_rt = b.runtime().await?;
    let a_info = a_rt
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner()
        .info;
    let b_info = b_rt
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner()
        .info;
    let a_daemon: serde_json::Value = serde_json::from_str(&a_info["daemon"])?;
    let b_daemon: serde_json::Value = serde_json::from_str(&b_info["daemon"])?;
    assert_eq!(a_daemon["pid"].as_u64(), Some(a.pid().as_raw() as u64));
    assert_eq!(b_daemon["pid"].as_u64(), Some(b.pid().as_raw() as u64));
    // Stopping one leaves the other serving.
    assert!(a.stop(Signal::SIGTERM)?.success());
    assert!(
        !a.log_text().contains("did not finish in time"),
        "{}",
        a.log_text()
    );
    b_rt.version(cri::VersionRequest::default()).await?;
    assert!(b_dirs.socket.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_instance_on_same_root_is_refused() -> Result<()> {
    let dirs = BerthdDirs::new("sameroot")?;
    let first = Berthd::start(&dirs)?;
    let other_socket = dirs.tmp.path().join("other.sock");
    let args = vec![
        "--root".to_owned(),
        dirs.root.display().to_string(),
        "--state".to_owned(),
        dirs.tmp.path().join("other-state").display().to_string(),
        "--address".to_owned(),
        other_socket.display().to_string(),
    ];
    let out = std::process::Command::new(common::berthd::berthd_bin())
        .args(&args)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another berthd"), "{err}");
    assert!(!other_socket.exists());
    first.serves().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_instance_on_same_socket_is_refused() -> Result<()> {
    let dirs = BerthdDirs::new("samesock")?;
    let first = Berthd::start(&dirs)?;
    let other = BerthdDirs::new("samesock-b")?;
    let args = vec![
        "--root".to_owned(),
        other.root.display().to_string(),
        "--state".to_owned(),
        other.state.display().to_string(),
        "--address".to_owned(),
        dirs.socket.display().to_string(),
    ];
    let out = std::process::Command::new(common::berthd::berthd_bin())
        .args(&args)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    // The first instance's socket is intact and serving.
    first.serves().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced() -> Result<()> {
    let dirs = BerthdDirs::new("stale")?;
    std::fs::create_dir_all(dirs.socket.parent().unwrap())?;
    // A socket file nobody listens on, as a killed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&dirs.socket)?);
    assert!(dirs.socket.exists());
    let berthd = Berthd::start(&dirs)?;
    berthd.serves().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_a_socket_the_next_start_replaces() -> Result<()> {
    let dirs = BerthdDirs::new("sigkill")?;
    let mut berthd = Berthd::start(&dirs)?;
    berthd.stop(Signal::SIGKILL)?;
    assert!(dirs.socket.exists(), "SIGKILL cannot clean up");
    let again = Berthd::start(&dirs)?;
    again.serves().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_config_file() -> Result<()> {
    let dirs = BerthdDirs::new("override")?;
    let file_socket = dirs.tmp.path().join("from-file.sock");
    let config = dirs.tmp.path().join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "address = \"{}\"\nroot = \"{}\"\nstate = \"{}\"\nlog_level = \"warn\"\n",
            file_socket.display(),
            dirs.root.display(),
            dirs.state.display()
        ),
    )?;
    // The file's root/state are used; the flag's address wins.
    let args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--address".to_owned(),
        dirs.socket.display().to_string(),
    ];
    let berthd = Berthd::start_with(&dirs, args, &dirs.socket)?;
    let info = berthd
        .runtime()
        .await?
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner()
        .info;
    let effective: serde_json::Value = serde_json::from_str(&info["config"])?;
    assert_eq!(
        effective["address"].as_str(),
        Some(dirs.socket.to_str().unwrap())
    );
    assert_eq!(
        effective["root"].as_str(),
        Some(dirs.root.to_str().unwrap())
    );
    assert!(!file_socket.exists());
    assert!(dirs.root.join("berthd.lock").exists());
    Ok(())
}

/// Run by tests/fresh-debian.sh against the berthd that the README's
/// command built and started in a fresh Debian tree: it answers Version
/// on the README's default socket (seen from the host as
/// `$BERTH_EXTERNAL_SOCKET`) and names the commit it was built from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by tests/fresh-debian.sh (needs BERTH_EXTERNAL_SOCKET)"]
async fn external_berthd_answers_version() -> Result<()> {
    let socket = std::env::var_os("BERTH_EXTERNAL_SOCKET")
        .map(std::path::PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("BERTH_EXTERNAL_SOCKET is not set"))?;
    let channel = common::berthd::connect(&socket).await?;
    let mut rt = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel);
    let v = rt
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    let status = rt
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let daemon: serde_json::Value = serde_json::from_str(&status.info["daemon"])?;
    if let Ok(expected) = std::env::var("BERTH_EXPECT_COMMIT") {
        assert_eq!(daemon["commit"], expected.as_str(), "{daemon}");
    }
    println!(
        "berthd {} (commit {}) answered Version on {}",
        v.runtime_version,
        daemon["commit"],
        socket.display()
    );
    Ok(())
}
