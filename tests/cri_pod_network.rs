//! Pod networking through real CRI pods made by berthd, in built-in mode
//! and in CNI mode with Debian's plugins (bridge + host-local + portmap +
//! loopback from /usr/lib/cni): a busybox httpd in pod A is reachable from
//! the host at A's PodSandboxStatus IP, from pod B (ExecSync) and through a
//! hostPort on 127.0.0.1; two pods get different IPs; PodSandboxStats counts
//! the traffic; after RemovePodSandbox no veth, netns, rule or lease is left.
//! In CNI mode a portmap wrapper whose DEL fails twice makes StopPodSandbox
//! and then RemovePodSandbox fail (the pod stays listed, its lease kept)
//! until a retry succeeds.
//! 200 pods made and removed one after another leave nothing behind either.
//! Traffic stays on loopback and the test's own bridge and namespaces.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::berthd::PATIENCE;
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, Runtime, container_config, create_container, mounts_containing, pod_status, run_pod,
    stop_and_remove_pod,
};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Builtin,
    Cni,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET /token from `addr:port` over TCP from the host, retried until the
/// server answers. Returns the body.
async fn host_get(ip: &str, port: u16) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    let addr = (ip.parse::<IpAddr>()?, port);
    loop {
        let attempt = (|| -> Result<String> {
            let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /token HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            match text.split_once("\r\n\r\n") {
                Some((head, body)) if head.starts_with("HTTP/1.") => Ok(body.to_owned()),
                _ => bail!("not an HTTP answer: {text:?}"),
            }
        })();
        match attempt {
            Ok(body) => return Ok(body),
            Err(e) if Instant::now() > deadline => bail!("GET {ip}:{port}/token: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// GET /token from inside container `from` (busybox nc through ExecSync).
async fn exec_get(rt: &mut Runtime, from: &str, ip: &str) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    let script =
        format!("printf 'GET /token HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 5 {ip} 8080");
    loop {
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: from.into(),
                cmd: vec!["/bin/sh".into(), "-c".into(), script.clone()],
                timeout: 30,
            })
            .await?
            .into_inner();
        let text = String::from_utf8_lossy(&r.stdout).into_owned();
        if r.exit_code == 0
            && let Some((head, body)) = text.split_once("\r\n\r\n")
            && head.starts_with("HTTP/1.")
        {
            return Ok(body.to_owned());
        }
        if Instant::now() > deadline {
            bail!(
                "GET {ip}:8080 from {from}: exit {} {text:?} {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Interfaces enslaved to `bridge`.
fn bridge_ports(bridge: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        })
        .collect())
}

/// The host's nftables ruleset and iptables nat rules, as text.
fn firewall_text() -> String {
    let mut text = String::new();
    for (cmd, args) in [
        ("nft", vec!["list", "ruleset"]),
        ("iptables-save", vec![]),
        ("ip6tables-save", vec![]),
    ] {
        if let Ok(out) = std::process::Command::new(cmd).args(&args).output() {
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    text
}

/// Files under `dir` whose name or content mentions `needle`.
fn files_mentioning(dir: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file()
                && (p.display().to_string().contains(needle)
                    || std::fs::read(&p)
                        .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle)))
            {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// A CNI plugin that is Debian's `portmap`, except that its DEL fails for
/// the first `fails` attempts of each pod (by design of the test).
fn flaky_portmap(bin_dir: &Path, name: &str, count_dir: &Path, fails: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin_dir)?;
    std::fs::create_dir_all(count_dir)?;
    let script = format!(
        r#"#!/bin/sh
if [ "$CNI_COMMAND" = DEL ]; then
  f="{count}/$CNI_CONTAINERID"
  n=$(cat "$f" 2>/dev/null || echo 0)
  echo $((n + 1)) > "$f"
  if [ "$n" -lt {fails} ]; then
    cat > /dev/null
    echo '{{"cniVersion":"1.0.0","code":11,"msg":"flaky DEL: attempt '$((n + 1))' fails by design"}}'
    exit 1
  fi
fi
exec /usr/lib/cni/portmap
"#,
        count = count_dir.display(),
    );
    let path = bin_dir.join(name);
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// After RemovePodSandbox of `pods` (id, IP): no veth on the test's bridge,
/// no netns pin or pod dir, no firewall rule naming an IP, no built-in lease
/// and no host-local lease under `ipam_dir`.
fn assert_nothing_left(env: &PodEnv, pods: &[(String, String)], ipam_dir: &Path) -> Result<()> {
    assert!(bridge_ports(&env.bridge)?.is_empty(), "no veth left");
    let firewall = firewall_text();
    for (pod, ip) in pods {
        assert!(
            mounts_containing(pod).is_empty(),
            "no netns pin of {pod} left"
        );
        assert!(
            !env.dirs.state.join("pods").join(pod).exists(),
            "no pod dir (netns file) of {pod} left"
        );
        // "10.x.y.2" must not be a prefix of a longer address in the text.
        for sep in [" ", "/", ":", "\n", ","] {
            assert!(
                !firewall.contains(&format!("{ip}{sep}")),
                "no firewall rule for {ip} left:\n{firewall}"
            );
        }
        let leases = files_mentioning(&env.dirs.state.join("network"), pod);
        assert!(leases.is_empty(), "no built-in lease of {pod}: {leases:?}");
        let leases = files_mentioning(ipam_dir, pod);
        assert!(
            leases.is_empty(),
            "no host-local lease of {pod}: {leases:?}"
        );
    }
    Ok(())
}

async fn pod_network_suite(mode: Mode, idx: u32) -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-net", Compression::Gzip);
    let reference = push(&registry, "berth-test/net", "v1", &image).await?;

    let env = PodEnv::new(&format!("net{idx}"), idx)?;
    let pid = std::process::id();
    let tmp = env.dirs.tmp.path().to_owned();
    let ipam_dir = tmp.join("cni-ipam");
    let count_dir = tmp.join("del-count");
    let flaky = format!("berth-flaky-{pid}");
    let subnet4 = format!("10.{}.{}.0/24", 190 + idx, pid % 250);
    if mode == Mode::Cni {
        let conf_dir = tmp.join("cni-conf");
        let bin_dir = tmp.join("cni-bin");
        std::fs::create_dir_all(&conf_dir)?;
        flaky_portmap(&bin_dir, &flaky, &count_dir, 2)?;
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("berth-cri-net-{pid}-{idx}"),
            "plugins": [
                {
                    "type": "bridge", "bridge": env.bridge, "isGateway": true,
                    "ipMasq": true, "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet4}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": ipam_dir,
                    }
                },
                {"type": flaky, "capabilities": {"portMappings": true}, "snat": true},
            ],
        });
        std::fs::write(
            conf_dir.join("10-berth.conflist"),
            serde_json::to_vec_pretty(&list)?,
        )?;
        std::fs::write(
            &env.config,
            format!(
                "[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 bridge_name = \"{}\"\n",
                conf_dir.display(),
                bin_dir.display(),
                env.bridge,
            ),
        )?;
    }
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await?
        .into_inner()
        .status
        .context("status")?;
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status),
        "{status:?}"
    );

    // Pod A serves /token on :8080, with a hostPort on 127.0.0.1.
    let host_port = free_port()?;
    let mut a_cfg = env.pod_config("neta", false);
    a_cfg.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(host_port),
        host_ip: "127.0.0.1".into(),
    }];
    let pod_a = run_pod(&mut rt, &a_cfg).await?;
    let token = format!("token-{mode:?}-{pid}");
    let httpd = create_container(
        &mut rt,
        &pod_a,
        &a_cfg,
        container_config(
            "httpd",
            &reference,
            &format!(
                "/bin/busybox mkdir -p /www && echo {token} > /www/token && \
                 exec /bin/busybox httpd -f -p 8080 -h /www"
            ),
        ),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: httpd.clone(),
    })
    .await?;

    let b_cfg = env.pod_config("netb", false);
    let pod_b = run_pod(&mut rt, &b_cfg).await?;
    let client = create_container(
        &mut rt,
        &pod_b,
        &b_cfg,
        container_config("client", &reference, "exec sleep 1000"),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: client.clone(),
    })
    .await?;

    let ip_a = pod_status(&mut rt, &pod_a)
        .await?
        .network
        .context("network status")?
        .ip;
    let ip_b = pod_status(&mut rt, &pod_b)
        .await?
        .network
        .context("network status")?
        .ip;
    assert!(!ip_a.is_empty() && !ip_b.is_empty(), "{ip_a:?} {ip_b:?}");
    assert_ne!(ip_a, ip_b, "two pods, two addresses");
    assert_eq!(bridge_ports(&env.bridge)?.len(), 2, "one veth per pod");

    // Host → pod A, pod B → pod A, 127.0.0.1:hostPort → pod A.
    assert_eq!(host_get(&ip_a, 8080).await?.trim(), token);
    assert_eq!(exec_get(&mut rt, &client, &ip_a).await?.trim(), token);
    assert_eq!(host_get("127.0.0.1", host_port).await?.trim(), token);

    // PodSandboxStats counts the traffic on A's interface.
    let stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_a.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("pod stats")?;
    let iface = stats
        .linux
        .as_ref()
        .and_then(|l| l.network.as_ref())
        .and_then(|n| n.default_interface.as_ref())
        .context("network usage")?;
    assert_eq!(iface.name, "eth0");
    assert!(
        iface.rx_bytes.map(|v| v.value).unwrap_or_default() > 0,
        "{iface:?}"
    );
    assert!(
        iface.tx_bytes.map(|v| v.value).unwrap_or_default() > 0,
        "{iface:?}"
    );

    // The hostPort rule names A's address (so its absence later means something).
    assert!(
        firewall_text().contains(&ip_a),
        "a DNAT rule to {ip_a} for the hostPort"
    );

    // Teardown.
    let pods = [(pod_a.clone(), ip_a.clone()), (pod_b.clone(), ip_b.clone())];
    if mode == Mode::Cni {
        // DEL fails: StopPodSandbox fails, RemovePodSandbox fails and keeps
        // the pod; the next RemovePodSandbox retries DEL and succeeds.
        let err = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_a.clone(),
            })
            .await
            .unwrap_err();
        assert!(err.message().contains("flaky DEL"), "{err:?}");
        let err = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_a.clone(),
            })
            .await
            .unwrap_err();
        assert!(err.message().contains("flaky DEL"), "{err:?}");
        let listed = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        assert!(
            listed.iter().any(|p| p.id == pod_a),
            "the pod stays for a retry"
        );
        assert!(
            !files_mentioning(&ipam_dir, &pod_a).is_empty(),
            "its lease is kept until DEL succeeds"
        );
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_a.clone(),
        })
        .await?;
        let count = std::fs::read_to_string(count_dir.join(&pod_a))?;
        assert_eq!(count.trim(), "3", "DEL ran until it succeeded, once more");
        // Pod B: its DELs fail during RemovePodSandbox only.
        for _ in 0..2 {
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_b.clone(),
            })
            .await
            .unwrap_err();
        }
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_b.clone(),
        })
        .await?;
    } else {
        for (pod, _) in &pods {
            stop_and_remove_pod(&mut rt, pod).await?;
        }
    }
    assert!(
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items
            .is_empty()
    );
    assert_nothing_left(&env, &pods, &ipam_dir)?;
    drop(rt);
    drop(images);
    berthd.stop(Signal::SIGTERM)?;
    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn builtin_network_through_cri_pods() -> Result<()> {
    pod_network_suite(Mode::Builtin, 3).await
}

#[tokio::test(flavor = "multi_thread")]
async fn cni_network_through_cri_pods() -> Result<()> {
    pod_network_suite(Mode::Cni, 4).await
}

/// 200 pods with their own network, made and removed one after another
/// through berthd in built-in mode, then checked as after the suite: no veth
/// on the bridge, no netns pin or pod dir, no firewall rule, no lease.
#[tokio::test(flavor = "multi_thread")]
async fn builtin_200_pod_cycles_leave_nothing() -> Result<()> {
    let env = PodEnv::new("netcyc", 5)?;
    let mut berthd = env.start_logged("info")?;
    let mut rt = berthd.runtime().await?;
    let mut pods = Vec::new();
    for i in 0..200 {
        let cfg = env.pod_config(&format!("cyc{i}"), false);
        let pod = run_pod(&mut rt, &cfg).await?;
        let ip = pod_status(&mut rt, &pod)
            .await?
            .network
            .context("no network status")?
            .ip;
        assert!(!ip.is_empty(), "pod {i} got no IP");
        stop_and_remove_pod(&mut rt, &pod).await?;
        pods.push((pod, ip));
    }
    // Built-in mode: no host-local leases to look for.
    assert_nothing_left(&env, &pods, &env.dirs.tmp.path().join("no-cni"))?;
    drop(rt);
    berthd.stop(Signal::SIGTERM)?;
    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    Ok(())
}
