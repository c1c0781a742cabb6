//! The runner of the test binaries that have no libtest harness (their
//! `main()` must run first: they re-execute themselves as the runtime's init
//! helper or as a seccomp probe). Understands what `cargo test` passes: test
//! name filters, `--list`; other flags are ignored.

use std::io::Write;

/// A named test.
pub type Test = (&'static str, fn() -> anyhow::Result<()>);

/// Runs the tests `args` select, as root, optionally as a child subreaper
/// (tests that create containers reap them). Prints libtest-style lines and
/// exits 1 when a test failed.
pub fn run(binary: &str, needs: &str, subreaper: bool, args: &[String], tests: &[Test]) {
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("{binary}: needs root ({needs})");
        std::process::exit(1);
    }
    if subreaper {
        nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
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
