//! The streaming server over SPDY/3.1, driven by the project's own SPDY
//! client, against a backend that runs real host processes (pipes or a
//! pty) and dials into a real network namespace.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use berth::stream::{StreamConfig, StreamServer, TerminalSize};
use common::local_backend::{LocalProcessBackend, connect_in_netns};
use common::netns::TestNetns;
use common::spdy_client::{SpdyClient, http_request};
use common::stream_checks::status_json;
use k8s_cri::v1 as cri;

async fn server(backend: Arc<LocalProcessBackend>) -> Result<StreamServer> {
    Ok(StreamServer::start(&StreamConfig::default(), backend).await?)
}

fn exec_req(cmd: &[&str], stdin: bool, tty: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: "local".into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

#[tokio::test]
async fn exec_without_tty_pipes_stdin_stdout_stderr_and_reports_success() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    let url = srv
        .get_exec(&exec_req(
            &["/bin/sh", "-c", "cat; echo to-stderr >&2"],
            true,
            false,
        ))?
        .url;
    assert!(url.starts_with(&format!("http://{}/exec/", srv.local_addr())));
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io", "v3.channel.k8s.io"]).await?;
    assert_eq!(c.protocol.as_deref(), Some("v4.channel.k8s.io"));
    let mut error = c.open(&[("streamType", "error")]).await?;
    let stdin = c.open(&[("streamType", "stdin")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let mut stderr = c.open(&[("streamType", "stderr")]).await?;
    stdout.close().await?;
    stderr.close().await?;
    stdin.write(b"hello through spdy\n").await?;
    stdin.close().await?;
    let (out, err, status) = tokio::join!(
        stdout.read_to_end(),
        stderr.read_to_end(),
        error.read_to_end()
    );
    assert_eq!(String::from_utf8_lossy(&out), "hello through spdy\n");
    assert_eq!(String::from_utf8_lossy(&err), "to-stderr\n");
    assert_eq!(status_json(&status)["status"], "Success");
    Ok(())
}

#[tokio::test]
async fn exit_code_42_is_a_failure_status_with_the_code() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    let url = srv
        .get_exec(&exec_req(
            &["/bin/sh", "-c", "echo out; exit 42"],
            false,
            false,
        ))?
        .url;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let mut error = c.open(&[("streamType", "error")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let mut stderr = c.open(&[("streamType", "stderr")]).await?;
    let (out, _err, status) = tokio::join!(
        stdout.read_to_end(),
        stderr.read_to_end(),
        error.read_to_end()
    );
    assert_eq!(String::from_utf8_lossy(&out), "out\n");
    let status = status_json(&status);
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "42");
    Ok(())
}

#[tokio::test]
async fn older_protocols_report_exit_codes_as_text_and_success_as_nothing() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    for (protocols, expected) in [
        (&["v2.channel.k8s.io"][..], Some("v2.channel.k8s.io")),
        (&["channel.k8s.io"][..], Some("channel.k8s.io")),
        (&[][..], None),
    ] {
        for code in [0, 42] {
            let script = format!("exit {code}");
            let url = srv
                .get_exec(&exec_req(&["/bin/sh", "-c", &script], false, false))?
                .url;
            let c = SpdyClient::connect(&url, protocols).await?;
            assert_eq!(c.protocol.as_deref(), expected);
            let mut error = c.open(&[("streamType", "error")]).await?;
            let mut stdout = c.open(&[("streamType", "stdout")]).await?;
            let mut stderr = c.open(&[("streamType", "stderr")]).await?;
            let (_, _, status) = tokio::join!(
                stdout.read_to_end(),
                stderr.read_to_end(),
                error.read_to_end()
            );
            let text = String::from_utf8_lossy(&status);
            if code == 0 {
                assert!(text.is_empty(), "{protocols:?}: {text}");
            } else {
                assert!(text.contains("42"), "{protocols:?}: {text}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn tty_exec_sees_the_resize_in_stty_size() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    let url = srv
        .get_exec(&exec_req(
            &[
                "/bin/busybox",
                "sh",
                "-c",
                "read line; /bin/busybox stty size; exit 3",
            ],
            true,
            true,
        ))?
        .url;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let mut error = c.open(&[("streamType", "error")]).await?;
    let stdin = c.open(&[("streamType", "stdin")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let resize = c.open(&[("streamType", "resize")]).await?;
    resize.write(br#"{"Width":100,"Height":33}"#).await?;
    // The pty has the new size before the shell is allowed to ask for it.
    backend
        .wait_resize(TerminalSize {
            width: 100,
            height: 33,
        })
        .await;
    stdin.write(b"go\n").await?;
    let out = String::from_utf8_lossy(&stdout.read_to_end().await).into_owned();
    assert!(out.contains("33 100"), "stty size printed {out:?}");
    let status = status_json(&error.read_to_end().await);
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    Ok(())
}

#[tokio::test]
async fn attach_echoes_stdin() -> Result<()> {
    let backend = LocalProcessBackend::new();
    backend
        .containers
        .lock()
        .unwrap()
        .insert("echoer".into(), vec!["/bin/cat".into()]);
    let srv = server(backend.clone()).await?;
    let url = srv
        .get_attach(&cri::AttachRequest {
            container_id: "echoer".into(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })?
        .url;
    assert!(url.contains("/attach/"));
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let mut error = c.open(&[("streamType", "error")]).await?;
    let stdin = c.open(&[("streamType", "stdin")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let mut stderr = c.open(&[("streamType", "stderr")]).await?;
    stdin.write(b"ping 1\n").await?;
    assert!(stdout.read_until("ping 1\n").await.contains("ping 1"));
    stdin.write(b"ping 2\n").await?;
    assert!(stdout.read_until("ping 2\n").await.contains("ping 2"));
    stdin.close().await?;
    assert!(stdout.read_to_end().await.is_empty());
    assert!(stderr.read_to_end().await.is_empty());
    assert_eq!(status_json(&error.read_to_end().await)["status"], "Success");
    Ok(())
}

#[tokio::test]
async fn tokens_are_single_use_and_expire() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    let url = srv.get_exec(&exec_req(&["/bin/true"], false, false))?.url;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let mut error = c.open(&[("streamType", "error")]).await?;
    let _o = c.open(&[("streamType", "stdout")]).await?;
    let _e = c.open(&[("streamType", "stderr")]).await?;
    assert_eq!(status_json(&error.read_to_end().await)["status"], "Success");
    let again = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await;
    let msg = format!("{:#}", again.err().expect("a used token must be refused"));
    assert!(msg.contains("404"), "{msg}");

    // A token of another kind of request does not open an exec.
    let pf = srv.get_port_forward(&cri::PortForwardRequest {
        pod_sandbox_id: "p".into(),
        port: vec![80],
    })?;
    let wrong = pf.url.replace("/portforward/", "/exec/");
    let (resp, _) = http_request(
        &wrong,
        "POST",
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
    )
    .await?;
    assert_eq!(resp.status, 404);

    // Expiry: a one-second TTL.
    let short = StreamServer::start(
        &StreamConfig {
            token_ttl_secs: 1,
            ..StreamConfig::default()
        },
        backend.clone(),
    )
    .await?;
    let url = short.get_exec(&exec_req(&["/bin/true"], false, false))?.url;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await;
    let msg = format!(
        "{:#}",
        late.err().expect("an expired token must be refused")
    );
    assert!(msg.contains("404"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_refused_clearly() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    let mut r = exec_req(&["/bin/true"], false, true);
    r.stderr = true;
    assert!(
        srv.get_exec(&r)
            .unwrap_err()
            .to_string()
            .contains("tty and stderr")
    );
    assert!(srv.get_exec(&exec_req(&[], false, false)).is_err());
    let url = srv.get_exec(&exec_req(&["/bin/true"], false, false))?.url;
    let err = SpdyClient::connect(&url, &["v9.channel.k8s.io"])
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("403"), "{err:#}");
    let url = srv.get_exec(&exec_req(&["/bin/true"], false, false))?.url;
    let (resp, _) = http_request(&url, "GET", &[]).await?;
    assert_eq!(resp.status, 400);
    let tls = StreamConfig {
        tls_cert: Some("/x.pem".into()),
        ..StreamConfig::default()
    };
    let err = StreamServer::start(&tls, backend.clone())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("tls_key"), "{err}");
    let missing = StreamConfig {
        tls_cert: Some("/nonexistent/berth-cert.pem".into()),
        tls_key: Some("/nonexistent/berth-key.pem".into()),
        ..StreamConfig::default()
    };
    let err = StreamServer::start(&missing, backend).await.err().unwrap();
    assert!(
        err.to_string().contains("/nonexistent/berth-cert.pem"),
        "{err}"
    );
    Ok(())
}

/// Waits for `cond`; a generous deadline only turns a leak into a failure
/// instead of a hang (this is not a speed assertion).
async fn eventually(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn alive(pid: u32) -> bool {
    // A zombie is still a leak: it must be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_stream_leaves_nothing_behind() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    // Warm up (lazily opened fds of the runtime and the blocking pool).
    for tty in [false, true] {
        let url = srv
            .get_exec(&exec_req(&["/bin/echo", "warm"], false, tty))?
            .url;
        let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
        let mut error = c.open(&[("streamType", "error")]).await?;
        let mut out = c.open(&[("streamType", "stdout")]).await?;
        let _extra = if tty {
            c.open(&[("streamType", "resize")]).await?
        } else {
            c.open(&[("streamType", "stderr")]).await?
        };
        out.read_to_end().await;
        error.read_to_end().await;
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    let fds_before = fd_count();
    let tasks_before = metrics.num_alive_tasks();

    for tty in [false, true] {
        let url = srv
            .get_exec(&exec_req(
                &["/bin/sh", "-c", "echo started; exec sleep 1000"],
                true,
                tty,
            ))?
            .url;
        let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
        let _error = c.open(&[("streamType", "error")]).await?;
        let _stdin = c.open(&[("streamType", "stdin")]).await?;
        let mut stdout = c.open(&[("streamType", "stdout")]).await?;
        let _stderr = if tty {
            c.open(&[("streamType", "resize")]).await?
        } else {
            c.open(&[("streamType", "stderr")]).await?
        };
        assert!(stdout.read_until("started").await.contains("started"));
        let pid = *backend.pids.lock().unwrap().last().unwrap();
        assert!(alive(pid));
        // The client goes away without a word.
        drop((c, stdout, _error, _stdin, _stderr));
        eventually(|| !alive(pid), "the exec'd process to be killed and reaped").await;
    }
    // Sessions wind down asynchronously; wait until they are gone.
    eventually(
        || metrics.num_alive_tasks() <= tasks_before,
        "the sessions' tasks to end",
    )
    .await;
    eventually(
        || fd_count() <= fds_before,
        "the sessions' fds to be closed",
    )
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sessions() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = Arc::new(server(backend.clone()).await?);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..24 {
        let srv = srv.clone();
        set.spawn(async move {
            let script = format!("echo session-{i}; exit {}", i % 3);
            let code = (i % 3).to_string();
            let url = srv
                .get_exec(&exec_req(&["/bin/sh", "-c", &script], false, false))?
                .url;
            let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
            let mut error = c.open(&[("streamType", "error")]).await?;
            let mut out = c.open(&[("streamType", "stdout")]).await?;
            let mut err = c.open(&[("streamType", "stderr")]).await?;
            let (o, _, s) = tokio::join!(out.read_to_end(), err.read_to_end(), error.read_to_end());
            anyhow::ensure!(String::from_utf8_lossy(&o) == format!("session-{i}\n"));
            let s: serde_json::Value = serde_json::from_slice(&s)?;
            if i % 3 == 0 {
                anyhow::ensure!(s["status"] == "Success", "{s}");
            } else {
                anyhow::ensure!(
                    s["details"]["causes"][0]["message"].as_str() == Some(code.as_str()),
                    "{s}"
                );
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_into_a_netns_with_parallel_connections() -> Result<()> {
    let ns = TestNetns::create("stream")?;
    let root = tempfile::tempdir()?;
    let body = "served from inside the pod netns\n".repeat(2000);
    std::fs::write(root.path().join("index.html"), &body)?;
    let port = 8080;
    let _httpd = ns.httpd(root.path(), port)?;
    // Wait until httpd listens (it was just started).
    while connect_in_netns(&ns.path, port).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backend = LocalProcessBackend::new();
    backend
        .pods
        .lock()
        .unwrap()
        .insert("pod-a".into(), ns.path.clone());
    let srv = server(backend.clone()).await?;
    let url = srv
        .get_port_forward(&cri::PortForwardRequest {
            pod_sandbox_id: "pod-a".into(),
            port: vec![i32::from(port)],
        })?
        .url;
    let c = Arc::new(SpdyClient::connect(&url, &["portforward.k8s.io"]).await?);
    assert_eq!(c.protocol.as_deref(), Some("portforward.k8s.io"));
    let mut set = tokio::task::JoinSet::new();
    for request in 0..6 {
        let c = c.clone();
        let body = body.clone();
        set.spawn(async move {
            let id = request.to_string();
            let p = port.to_string();
            let mut error = c
                .open(&[("streamType", "error"), ("port", &p), ("requestID", &id)])
                .await?;
            let mut data = c
                .open(&[("streamType", "data"), ("port", &p), ("requestID", &id)])
                .await?;
            data.write(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
                .await?;
            let resp = String::from_utf8(data.read_to_end().await)?;
            if resp.is_empty() {
                let err = error.read_to_end().await;
                anyhow::bail!(
                    "empty response; error stream: {:?}; data reset: {:?}",
                    String::from_utf8_lossy(&err),
                    data.reset
                );
            }
            anyhow::ensure!(
                resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
                "{}",
                &resp[..resp.len().min(200)]
            );
            anyhow::ensure!(resp.ends_with(&body), "body differs ({} bytes)", resp.len());
            let err = error.read_to_end().await;
            anyhow::ensure!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    // A port nobody listens on: the error stream says so.
    let mut error = c
        .open(&[("streamType", "error"), ("port", "9"), ("requestID", "99")])
        .await?;
    let mut data = c
        .open(&[("streamType", "data"), ("port", "9"), ("requestID", "99")])
        .await?;
    let err = String::from_utf8_lossy(&error.read_to_end().await).into_owned();
    assert!(err.contains("port 9") && err.contains("pod-a"), "{err}");
    assert!(data.read_to_end().await.is_empty());
    Ok(())
}

fn written_by(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines().find_map(|l| {
                l.strip_prefix("wchar: ")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_stalls_the_process_instead_of_filling_memory() -> Result<()> {
    const TOTAL: u64 = 64 * 1024 * 1024;
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    let script = format!("head -c {TOTAL} /dev/zero");
    let url = srv
        .get_exec(&exec_req(&["/bin/sh", "-c", &script], false, false))?
        .url;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let mut error = c.open(&[("streamType", "error")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let mut stderr = c.open(&[("streamType", "stderr")]).await?;
    eventually(
        || !backend.pids.lock().unwrap().is_empty(),
        "the process to start",
    )
    .await;
    let pid = *backend.pids.lock().unwrap().last().unwrap();
    // Nobody reads: the writer must come to a standstill well before the
    // end, held back by bounded pipes, channels and socket buffers.
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written_by(pid);
        if now == last {
            break;
        }
        last = now;
    }
    assert!(
        last < TOTAL / 4,
        "the process wrote {last} bytes to a client that reads nothing"
    );
    // Reading resumes the flow and every byte arrives.
    let mut got = 0u64;
    while let Some(chunk) = stdout.recv().await {
        got += chunk.len() as u64;
    }
    assert_eq!(got, TOTAL);
    stderr.read_to_end().await;
    assert_eq!(status_json(&error.read_to_end().await)["status"], "Success");
    Ok(())
}

#[tokio::test]
async fn garbage_after_the_upgrade_closes_the_connection() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    let url = srv
        .get_exec(&exec_req(&["/bin/sleep", "1000"], false, false))?
        .url;
    let (resp, tcp) = http_request(
        &url,
        "POST",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ],
    )
    .await?;
    assert_eq!(resp.status, 101);
    let mut tcp = tcp.into_inner();
    // A control frame of SPDY version 2, then noise.
    tcp.write_all(&[0x80, 0x02, 0x00, 0x01, 0, 0, 0, 4, 1, 2, 3, 4, 9, 9, 9])
        .await?;
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest).await;
    // The server hung up; no process was started for the broken session.
    assert!(backend.pids.lock().unwrap().is_empty());
    Ok(())
}

/// Many clients' tasks opening stream pairs at once on one connection (the
/// port-forward tests' flake: the test client once sent stream ids out of
/// order under load, and the server rightly dropped the connection). Port 9
/// of the test's own network namespace refuses: every pair gets its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_forwards_opened_in_parallel_on_one_connection() -> Result<()> {
    let backend = LocalProcessBackend::new();
    backend
        .pods
        .lock()
        .unwrap()
        .insert("pod-a".into(), "/proc/self/ns/net".into());
    let srv = server(backend.clone()).await?;
    let url = srv
        .get_port_forward(&cri::PortForwardRequest {
            pod_sandbox_id: "pod-a".into(),
            port: vec![9],
        })?
        .url;
    let c = Arc::new(SpdyClient::connect(&url, &["portforward.k8s.io"]).await?);
    let mut set = tokio::task::JoinSet::new();
    for request in 0..200 {
        let c = c.clone();
        set.spawn(async move {
            let id = request.to_string();
            let mut error = c
                .open(&[("streamType", "error"), ("port", "9"), ("requestID", &id)])
                .await?;
            let _data = c
                .open(&[("streamType", "data"), ("port", "9"), ("requestID", &id)])
                .await?;
            let err = String::from_utf8_lossy(&error.read_to_end().await).into_owned();
            anyhow::ensure!(err.contains("port 9"), "request {id}: error stream {err:?}");
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}
