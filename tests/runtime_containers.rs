//! Root integration tests of the in-process runtime: real namespaces,
//! mounts, cgroups and processes, in a busybox rootfs built by the test.
//!
//! `harness = false`: the runtime starts this very binary again as its init
//! helper, so `main` must call `run_helper_if_requested()` before anything
//! else, and the test process must be a child subreaper (the containers are
//! its children and it reaps them). Tests run one after the other; pass
//! substrings as arguments to run only the matching ones.

#[path = "common/busybox_bundle.rs"]
mod busybox_bundle;

use std::io::Write;

use anyhow::{Context, Result, bail, ensure};
use berth::runtime::Stdio;
use busybox_bundle::*;

type Test = (&'static str, fn() -> Result<()>);

const TESTS: &[Test] = &[
    ("output_and_exit_codes", output_and_exit_codes),
    ("env_cwd_and_args", env_cwd_and_args),
];

fn output_and_exit_codes() -> Result<()> {
    let out = run_sh("echo hello; echo oops >&2; exit 3")?;
    ensure!(out.stdout == "hello\n", "stdout {:?}", out.stdout);
    ensure!(out.stderr == "oops\n", "stderr {:?}", out.stderr);
    ensure!(out.code == 3, "exit code {}", out.code);
    let out = run_sh("true")?;
    ensure!(out.code == 0, "exit code {}", out.code);
    Ok(())
}

fn env_cwd_and_args() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("env");
    let mut spec = spec(
        &bundle,
        &id,
        &["sh", "-c", "echo \"$FOO|$(pwd)|$0|$1\"", "zero", "one"],
    );
    let mut p = spec.process().clone().unwrap();
    let mut env = p.env().clone().unwrap();
    env.push("FOO=bar baz".into());
    p.set_env(Some(env));
    p.set_cwd("/tmp/work".into());
    spec.set_process(Some(p));
    let out = run(&bundle, &id, &spec)?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    ensure!(
        out.stdout == "bar baz|/tmp/work|zero|one\n",
        "stdout {:?}",
        out.stdout
    );
    Ok(())
}

fn main() {
    berth::runtime::run_helper_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return;
    }
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("runtime_containers: needs root (namespaces, mounts, cgroups)");
        std::process::exit(1);
    }
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in TESTS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        match std::panic::catch_unwind(test) {
            Ok(Ok(())) => println!("ok"),
            Ok(Err(e)) => {
                println!("FAILED\n    {e:#}");
                failed.push(*name);
            }
            Err(_) => {
                println!("FAILED (panic)");
                failed.push(*name);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

#[allow(dead_code)]
fn unused(_: Stdio) -> Result<()> {
    let _ = Context::context(Ok::<(), anyhow::Error>(()), "x");
    bail!("unused")
}
