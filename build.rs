//! Names the git commit berth is built from (`berthd --version`).
//!
//! `BERTH_GIT_COMMIT` in the environment wins (a build from a source
//! archive, which has no `.git`); else `git rev-parse HEAD`; else "unknown".

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=BERTH_GIT_COMMIT");
    let commit = match std::env::var("BERTH_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it points at,
            // and packed refs (a worktree's HEAD is in its own git dir).
            if let (Some(git_dir), Some(common)) = (
                git(&["rev-parse", "--absolute-git-dir"]),
                git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
            ) {
                let mut watch = vec![
                    PathBuf::from(&git_dir).join("HEAD"),
                    PathBuf::from(&common).join("packed-refs"),
                ];
                if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watch.push(PathBuf::from(&common).join(head_ref));
                }
                // Only files that exist: a missing one would rerun this
                // script (and rebuild berth) on every build.
                for path in watch.iter().filter(|p| p.exists()) {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={commit}");
}
