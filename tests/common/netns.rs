//! A throw-away network namespace with loopback up, and a busybox httpd
//! listening inside it (for port-forward tests). Removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

pub struct TestNetns {
    pub name: String,
    pub path: PathBuf,
}

impl TestNetns {
    pub fn create(tag: &str) -> Result<Self> {
        let name = super::unique_tag(tag);
        run(&["ip", "netns", "add", &name])?;
        let ns = Self {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Starts `busybox httpd` on 127.0.0.1:`port` inside the namespace,
    /// serving `root`.
    pub fn httpd(&self, root: &std::path::Path, port: u16) -> Result<KillOnDrop> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "/bin/busybox", "httpd", "-f"])
            .arg("-p")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-h")
            .arg(root)
            .stdin(Stdio::null())
            .spawn()
            .context("starting busybox httpd")?;
        Ok(KillOnDrop(child))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) -> Result<()> {
    let st = Command::new(args[0]).args(&args[1..]).status()?;
    if !st.success() {
        bail!("{args:?} failed: {st}");
    }
    Ok(())
}
