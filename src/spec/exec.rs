//! The process of an exec (ExecSync, Exec): the container's own process with
//! other args, as containerd runs execs.

use oci_spec::runtime::{Process, Spec};

use super::SpecError;

/// The process spec of an exec in a container whose spec is `container`:
/// same user, env, cwd, capabilities, no_new_privs, AppArmor profile and
/// rlimits; the given command, and a terminal when `tty`.
pub fn exec_process(container: &Spec, cmd: &[String], tty: bool) -> Result<Process, SpecError> {
    if cmd.is_empty() || cmd[0].is_empty() {
        return Err(SpecError::field("cmd", "the exec command is empty"));
    }
    if cmd.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::field("cmd", "an argument holds a NUL byte"));
    }
    let mut process = container.process().clone().ok_or_else(|| {
        SpecError::field(
            "spec",
            "the container's spec has no process to base the exec on",
        )
    })?;
    process
        .set_args(Some(cmd.to_vec()))
        .set_terminal(Some(tty))
        .set_console_size(None)
        .set_oom_score_adj(None);
    Ok(process)
}
