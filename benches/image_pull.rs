//! Pull + unpack of a ~200 MB multi-layer image from a local docker-registry:
//! berth's ImageStore vs `ctr images pull --plain-http` into a fresh
//! containerd 1.6 root (unpack included), side by side, with the ratio and
//! peak memory.
//!
//! Run: `cargo bench --bench image_pull` (as root). Each side runs in its
//! own process (berth: this binary re-executed; containerd: its daemon + ctr)
//! so peak RSS (VmHWM) is that of the pull alone.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::oci_image::{self, Compression, Format, LayerBuilder, host_arch};
use common::registry::Registry;

const CHILD_ENV: &str = "BERTH_BENCH_PULL_CHILD";
const RUNS: usize = 5;

fn main() -> Result<()> {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        return child_pull(&args);
    }
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list`
    }
    let rt = tokio::runtime::Runtime::new()?;
    let reg = Registry::start()?;
    let (image, bytes) = build_image();
    rt.block_on(oci_image::push(
        &reg.pusher(),
        "bench/big",
        Some("1"),
        &image,
    ))?;
    let reference = format!("{}/bench/big:1", reg.host);
    let uncompressed: u64 = bytes;
    let compressed: u64 = image.layers.iter().map(|l| l.blob.len() as u64).sum();
    println!(
        "image: {} layers, {:.1} MB compressed, {:.1} MB uncompressed",
        image.layers.len(),
        compressed as f64 / 1e6,
        uncompressed as f64 / 1e6
    );

    let work = tempfile::Builder::new()
        .prefix("berth-bench-image-")
        .tempdir()?;
    let mut berth = Vec::new();
    let mut ctrd = Vec::new();
    for run in 0..RUNS {
        // Start each side with no dirty pages of the previous run to flush.
        rustix::fs::sync();
        let (t, rss) = berth_pull(work.path(), run, &reference)?;
        println!(
            "run {run}: berth      {:>7.0} ms  peak RSS {:>6.1} MB",
            t.as_secs_f64() * 1e3,
            rss as f64 / 1e6
        );
        berth.push((t, rss));
        rustix::fs::sync();
        let (t, rss, ctr_rss) = containerd_pull(work.path(), run, &reference)?;
        println!(
            "run {run}: containerd {:>7.0} ms  peak RSS {:>6.1} MB (containerd) + {:.1} MB (ctr)",
            t.as_secs_f64() * 1e3,
            rss as f64 / 1e6,
            ctr_rss as f64 / 1e6
        );
        ctrd.push((t, rss));
    }
    let median = |v: &mut Vec<(Duration, u64)>| {
        v.sort();
        v[v.len() / 2]
    };
    let (bt, brss) = median(&mut berth);
    let (ct, crss) = median(&mut ctrd);
    println!(
        "image pull+unpack (median of {RUNS}): berth {:.0} ms, containerd+ctr {:.0} ms → berth is {:.2}x faster; peak RSS berth {:.1} MB, containerd {:.1} MB",
        bt.as_secs_f64() * 1e3,
        ct.as_secs_f64() * 1e3,
        ct.as_secs_f64() / bt.as_secs_f64(),
        brss as f64 / 1e6,
        crss as f64 / 1e6
    );
    Ok(())
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like, compressible bytes.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "container",
        "layer",
        "image",
        "runtime",
        "overlay",
        "kernel",
        "berth",
        "pull",
        "digest",
        "\n",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// ~200 MB uncompressed over 6 layers: busybox, then layers of many small
/// text files, and a few big mostly incompressible files (like libraries).
fn build_image() -> (oci_image::Image, u64) {
    let mut layers = vec![LayerBuilder::new().busybox().finish(Compression::Gzip)];
    let mut total = std::fs::metadata("/bin/busybox")
        .map(|m| m.len())
        .unwrap_or(0);
    for l in 0..5u64 {
        let mut b = LayerBuilder::new().dir(&format!("usr{l}"));
        for d in 0..20 {
            b = b.dir(&format!("usr{l}/d{d}"));
            for f in 0..100 {
                let data = text(4096 + ((f * 37) % 8192) as usize, l * 10_000 + d * 100 + f);
                total += data.len() as u64;
                b = b.file(&format!("usr{l}/d{d}/f{f}.txt"), &data, 0o644);
            }
        }
        for f in 0..3 {
            let data = noise(10 << 20, l * 10 + f + 1);
            total += data.len() as u64;
            b = b.file(&format!("usr{l}/lib{f}.so"), &data, 0o755);
        }
        layers.push(b.finish(Compression::Gzip));
    }
    (oci_image::image(layers, Format::Oci, host_arch()), total)
}

fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// In the child: pull into a fresh store, print "<ms> <peak rss bytes>".
fn child_pull(args: &str) -> Result<()> {
    let (root, reference) = args.split_once(' ').context("child args")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let cfg = berth::image::ImageConfig {
            registries_config: PathBuf::from(root).join("registries.conf"),
            ..Default::default()
        };
        let store = berth::image::ImageStore::open(Path::new(root), &cfg).await?;
        let start = Instant::now();
        store.pull(reference, None).await?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!("{ms} {}", peak_rss(std::process::id()));
        Ok::<_, anyhow::Error>(())
    })
}

fn berth_pull(work: &Path, run: usize, reference: &str) -> Result<(Duration, u64)> {
    let root = work.join(format!("berth-{run}"));
    let out = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, format!("{} {reference}", root.display()))
        .output()?;
    if !out.status.success() {
        bail!(
            "berth pull failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut it = text.split_whitespace();
    let ms: f64 = it.next().context("ms")?.parse()?;
    let rss: u64 = it.next().context("rss")?.parse()?;
    let _ = std::fs::remove_dir_all(&root);
    Ok((Duration::from_secs_f64(ms / 1e3), rss))
}

struct Containerd {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // overlay snapshots may still be mounted by nothing; unpacked dirs are plain dirs.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_containerd(work: &Path, run: usize) -> Result<Containerd> {
    let dir = work.join(format!("containerd-{run}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("c.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("containerd.log"))?;
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .context("start containerd")?;
    let c = Containerd { child, socket, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.socket.exists() {
        if Instant::now() > deadline {
            bail!("containerd did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(c)
}

fn containerd_pull(work: &Path, run: usize, reference: &str) -> Result<(Duration, u64, u64)> {
    let c = start_containerd(work, run)?;
    let start = Instant::now();
    let ctr = Command::new("ctr")
        .arg("--address")
        .arg(&c.socket)
        .args([
            "-n",
            "berth-bench",
            "images",
            "pull",
            "--plain-http",
            reference,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let ctr_pid = ctr.id();
    let mut ctr_rss = 0;
    let out = {
        let mut ctr = ctr;
        loop {
            ctr_rss = ctr_rss.max(peak_rss(ctr_pid));
            if let Some(_status) = ctr.try_wait()? {
                break ctr.wait_with_output()?;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!("ctr pull failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rss = peak_rss(c.child.id());
    Ok((elapsed, rss, ctr_rss))
}
