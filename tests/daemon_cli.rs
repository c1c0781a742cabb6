//! berthd's command line: --version, --help, `config default`/`config dump`,
//! and config errors, run against the built binary.

mod common;

use anyhow::Result;
use common::berthd::{BerthdDirs, run_cli};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_prints_name_version_and_commit() -> Result<()> {
    let out = run_cli(&["--version"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    // build.rs gives the package's tests the same BERTH_GIT_COMMIT as berthd.
    let commit = env!("BERTH_GIT_COMMIT");
    assert_eq!(
        stdout(&out).trim(),
        format!("berthd {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
    // Built from a git checkout without an override: the checkout's HEAD.
    let head = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output();
    match head {
        Ok(h) if h.status.success() && std::env::var_os("BERTH_GIT_COMMIT").is_none() => {
            let head = String::from_utf8_lossy(&h.stdout).trim().to_owned();
            assert_eq!(commit, head, "berthd --version names HEAD");
        }
        _ => println!("skipped: the HEAD check needs a git checkout and no BERTH_GIT_COMMIT"),
    }
    Ok(())
}

#[test]
fn help_lists_the_flags() -> Result<()> {
    let out = run_cli(&["--help"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for flag in [
        "--config",
        "--address",
        "--root",
        "--state",
        "--log-level",
        "--help",
        "--version",
        "config",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    assert!(text.contains("/run/berth/berth.sock"), "{text}");
    assert!(text.contains("/var/lib/berth"), "{text}");
    Ok(())
}

#[test]
fn config_default_is_the_shipped_file_and_parses() -> Result<()> {
    let out = run_cli(&["config", "default"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/berthd.toml"))?;
    assert_eq!(
        text, shipped,
        "deploy/berthd.toml differs from `berthd config default`"
    );
    let value: toml::Value = toml::from_str(&text)?;
    assert_eq!(value["address"].as_str(), Some("/run/berth/berth.sock"));
    assert_eq!(value["root"].as_str(), Some("/var/lib/berth"));
    assert_eq!(value["state"].as_str(), Some("/run/berth"));
    assert!(value["image"].is_table());
    Ok(())
}

#[test]
fn config_dump_applies_file_then_flags() -> Result<()> {
    let dirs = BerthdDirs::new("cli-dump")?;
    let file = dirs.tmp.path().join("berthd.toml");
    std::fs::write(
        &file,
        "root = \"/tmp/from-file\"\nstate = \"/tmp/state-from-file\"\n[image]\nmax_concurrent_downloads = 7\n",
    )?;
    let file_arg = file.display().to_string();
    let out = run_cli(&[
        "--config",
        &file_arg,
        "--state",
        "/tmp/state-from-flag",
        "config",
        "dump",
    ])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let value: toml::Value = toml::from_str(&stdout(&out))?;
    assert_eq!(value["root"].as_str(), Some("/tmp/from-file"));
    assert_eq!(value["state"].as_str(), Some("/tmp/state-from-flag"));
    assert_eq!(
        value["image"]["max_concurrent_downloads"].as_integer(),
        Some(7)
    );
    Ok(())
}

#[test]
fn unknown_config_key_is_a_clear_error() -> Result<()> {
    let dirs = BerthdDirs::new("cli-badkey")?;
    let file = dirs.tmp.path().join("berthd.toml");
    std::fs::write(&file, "[image]\nmax_parallel_pulls = 3\n")?;
    let mut args = vec!["--config".to_owned(), file.display().to_string()];
    args.extend(dirs.args());
    let out = std::process::Command::new(common::berthd::berthd_bin())
        .args(&args)
        .output()?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("max_parallel_pulls"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(
        !dirs.socket.exists(),
        "berthd must not serve with a bad config"
    );
    Ok(())
}

#[test]
fn unusable_stream_address_fails_the_start_before_the_socket_is_served() -> Result<()> {
    let dirs = BerthdDirs::new("cli-stream")?;
    // A port this test holds: berthd's streaming server cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let file = dirs.tmp.path().join("berthd.toml");
    std::fs::write(
        &file,
        format!("[stream]\naddress = \"{}\"\n", taken.local_addr()?),
    )?;
    let mut args = vec!["--config".to_owned(), file.display().to_string()];
    args.extend(dirs.args());
    let out = std::process::Command::new(common::berthd::berthd_bin())
        .args(&args)
        .output()?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("streaming server"), "{err}");
    assert!(
        !err.contains("berthd serving CRI"),
        "the CRI socket was served before the failure: {err}"
    );
    assert!(!dirs.socket.exists());
    Ok(())
}

#[test]
fn missing_explicit_config_is_an_error() -> Result<()> {
    let dirs = BerthdDirs::new("cli-nofile")?;
    let file = dirs.tmp.path().join("absent.toml");
    let mut args = vec!["--config".to_owned(), file.display().to_string()];
    args.extend(dirs.args());
    let out = std::process::Command::new(common::berthd::berthd_bin())
        .args(&args)
        .output()?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("absent.toml"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn bad_log_level_is_an_error() -> Result<()> {
    let dirs = BerthdDirs::new("cli-loglevel")?;
    let mut args = dirs.args();
    args.extend(["--log-level".to_owned(), "berth=loud".to_owned()]);
    let out = std::process::Command::new(common::berthd::berthd_bin())
        .args(&args)
        .output()?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("berth=loud"), "{}", stderr(&out));
    Ok(())
}
