//! The process to run: args (CRI command/args vs image Entrypoint/Cmd),
//! environment and working directory.

use k8s_cri::v1::ContainerConfig;
use oci_spec::image::Config as ImageConfig;

use super::SpecError;

/// The PATH a container gets when neither the image nor the CRI sets one.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments, as containerd (and Docker) compute them:
/// a CRI `command` replaces the image's Entrypoint and drops its Cmd;
/// CRI `args` replace the image's Cmd.
pub fn process_args(
    config: &ContainerConfig,
    image: Option<&ImageConfig>,
) -> Result<Vec<String>, SpecError> {
    let empty = Vec::new();
    let (entrypoint, cmd) = match image {
        Some(img) => (
            img.entrypoint().as_ref().unwrap_or(&empty),
            img.cmd().as_ref().unwrap_or(&empty),
        ),
        None => (&empty, &empty),
    };
    let mut command = config.command.clone();
    let mut args = config.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = cmd.clone();
        }
        // `ENTRYPOINT [""]` means "no entrypoint".
        if !(entrypoint.len() == 1 && entrypoint[0].is_empty()) {
            command = entrypoint.clone();
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(SpecError::NoCommand);
    }
    if command[0].is_empty() {
        return Err(SpecError::field(
            "command",
            "the program to run (the first argument) is empty",
        ));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::field("command", "an argument holds a NUL byte"));
    }
    Ok(command)
}

/// Sets `KEY=value` in `env`, replacing an earlier value of the same key in
/// place. A bare `KEY` (no `=`) removes the key, as containerd's `WithEnv` does.
fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split_once('=').map_or(entry, |(k, _)| k);
    let has_value = entry.contains('=');
    if let Some(pos) = env
        .iter()
        .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    {
        if has_value {
            env[pos] = entry.to_string();
        } else {
            env.remove(pos);
        }
    } else if has_value {
        env.push(entry.to_string());
    }
}

/// The environment: default PATH, `HOSTNAME`, the image's Env, then the CRI
/// envs (later ones override earlier ones by key).
pub fn process_env(
    config: &ContainerConfig,
    image: Option<&ImageConfig>,
    hostname: &str,
) -> Result<Vec<String>, SpecError> {
    let mut env = vec![DEFAULT_PATH_ENV.to_string()];
    set_env(&mut env, &format!("HOSTNAME={hostname}"));
    if let Some(image_env) = image.and_then(|i| i.env().as_ref()) {
        for e in image_env {
            if e.is_empty() {
                continue;
            }
            set_env(&mut env, e);
        }
    }
    for kv in &config.envs {
        if kv.key.is_empty() {
            return Err(SpecError::field(
                "envs",
                format!("an env var has an empty name (value {:?})", kv.value),
            ));
        }
        if kv.key.contains('=') || kv.key.contains('\0') || kv.value.contains('\0') {
            return Err(SpecError::field(
                "envs",
                format!(
                    "env var {:?} has '=' or a NUL byte in its name, or a NUL in its value",
                    kv.key
                ),
            ));
        }
        set_env(&mut env, &format!("{}={}", kv.key, kv.value));
    }
    Ok(env)
}

/// The working directory: the CRI's, else the image's, else `/`.
/// A relative image WorkingDir is taken relative to `/` (as Docker does).
pub fn process_cwd(
    config: &ContainerConfig,
    image: Option<&ImageConfig>,
) -> Result<String, SpecError> {
    if !config.working_dir.is_empty() {
        if !config.working_dir.starts_with('/') {
            return Err(SpecError::field(
                "working_dir",
                format!("{:?} is not an absolute path", config.working_dir),
            ));
        }
        return Ok(config.working_dir.clone());
    }
    match image.and_then(|i| i.working_dir().as_deref()) {
        Some(dir) if !dir.is_empty() => {
            if dir.starts_with('/') {
                Ok(dir.to_string())
            } else {
                Ok(format!("/{dir}"))
            }
        }
        _ => Ok("/".to_string()),
    }
}
