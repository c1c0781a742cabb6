//! What containerd passes to `start`, in either protocol, and the reply
//! each expects.
//!
//! - containerd 1.6 to 2.2: flags (`-namespace`, `-id`, `-address`,
//!   `-publish-binary`, `-debug`), `TTRPC_ADDRESS` in the environment, the
//!   runtime options (a protobuf `Any`) on stdin if any; the reply is the
//!   shim's address on stdout. 1.6 reads stdout as the bare address; 2.x
//!   takes a bare address for task API v2, which the shim serves too.
//! - containerd 2.3: a protobuf `BootstrapParams`
//!   (containerd/api/runtime/bootstrap/v1) on stdin, beside the same flags;
//!   the reply is a protobuf `BootstrapResult` (version 3, ttrpc, address).
//!
//! The detection is containerd's own (`pkg/shim`) and the containerd-shim
//! crate's (whose `run` this shim does not use, see `bootstrap.rs`): stdin
//! is `BootstrapParams` when it decodes as one naming this shim's id and
//! namespace. Runtime options decode as `BootstrapParams` too (type URL in
//! field 1, value in field 2, nothing else): those mean the legacy protocol.

use std::io::{IsTerminal, Read};

use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::{Flags, StartOpts};

/// Upper bound on what is read from stdin (containerd's own limit).
const MAX_INPUT: u64 = 10 << 20;
/// The task API version the shim answers a 2.3 bootstrap with (it serves v2 and v3).
pub const TASK_API_VERSION: i32 = 3;

/// How containerd invoked `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Flags and environment; reply: the bare address.
    Legacy,
    /// containerd 2.3: `BootstrapParams` in, `BootstrapResult` out.
    Bootstrap,
}

/// Reads stdin (nothing when it is a terminal: started by hand).
pub fn read_stdin() -> std::io::Result<Vec<u8>> {
    let stdin = std::io::stdin();
    let mut input = Vec::new();
    if !stdin.is_terminal() {
        stdin.lock().take(MAX_INPUT).read_to_end(&mut input)?;
    }
    Ok(input)
}

/// The start options from `input` (stdin) and the flags.
pub fn parse(
    input: &[u8],
    flags: &Flags,
    ttrpc_address_env: Option<String>,
) -> anyhow::Result<(StartOpts, Protocol)> {
    if let Some(params) = bootstrap_params(input, flags)? {
        if params.containerd_ttrpc_address.is_empty() {
            anyhow::bail!("bootstrap params carry no containerd ttrpc address");
        }
        let debug = flags.debug;
        let mut opts = StartOpts::from(params);
        opts.debug |= debug;
        return Ok((opts, Protocol::Bootstrap));
    }
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: ttrpc_address_env.unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    Ok((opts, Protocol::Legacy))
}

fn bootstrap_params(input: &[u8], flags: &Flags) -> anyhow::Result<Option<BootstrapParams>> {
    if input.is_empty() {
        return Ok(None);
    }
    let Ok(params) = BootstrapParams::parse_from_bytes(input) else {
        return Ok(None);
    };
    if params.instance_id == flags.id && params.namespace == flags.namespace {
        return Ok(Some(params));
    }
    let identity_only = BootstrapParams {
        instance_id: params.instance_id.clone(),
        namespace: params.namespace.clone(),
        ..Default::default()
    };
    if params == identity_only {
        return Ok(None);
    }
    anyhow::bail!(
        "bootstrap params for {}/{} do not match the command line's {}/{}",
        params.namespace,
        params.instance_id,
        flags.namespace,
        flags.id
    )
}

/// The reply `protocol` expects for a shim at `address`.
pub fn reply(address: &str, protocol: Protocol) -> anyhow::Result<Vec<u8>> {
    Ok(match protocol {
        Protocol::Legacy => address.as_bytes().to_vec(),
        Protocol::Bootstrap => BootstrapResult {
            version: TASK_API_VERSION,
            address: address.to_string(),
            protocol: "ttrpc".to_string(),
            ..Default::default()
        }
        .write_to_bytes()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::bootstrap::{Extension, LogLevel};
    use containerd_shim::protos::protobuf::EnumOrUnknown;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;

    fn flags() -> Flags {
        Flags {
            id: "pod1".into(),
            namespace: "k8s.io".into(),
            address: "/run/containerd/containerd.sock".into(),
            publish_binary: "/usr/bin/containerd".into(),
            ..Default::default()
        }
    }

    fn params() -> BootstrapParams {
        BootstrapParams {
            instance_id: "pod1".into(),
            namespace: "k8s.io".into(),
            log_level: EnumOrUnknown::new(LogLevel::LOG_LEVEL_DEBUG),
            containerd_version: "v2.3.0".into(),
            containerd_ttrpc_address: "/run/c/c.sock.ttrpc".into(),
            containerd_grpc_address: "/run/c/c.sock".into(),
            containerd_binary: "/usr/local/bin/containerd".into(),
            socket_dir: Some("/run/c/s".into()),
            extensions: vec![Extension {
                value: Some(Any {
                    type_url: "containerd.runc.v1.Options".into(),
                    value: vec![],
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn bootstrap_params_on_stdin() {
        let input = params().write_to_bytes().unwrap();
        let (opts, protocol) = parse(&input, &flags(), None).unwrap();
        assert_eq!(protocol, Protocol::Bootstrap);
        assert_eq!(opts.ttrpc_address, "/run/c/c.sock.ttrpc");
        assert_eq!(opts.address, "/run/c/c.sock");
        assert_eq!(opts.publish_binary, "/usr/local/bin/containerd");
        assert!(opts.debug);
        // The socket goes where containerd asked.
        assert!(opts.socket_address("pod1").starts_with("unix:///run/c/s/"));
        let reply = reply("unix:///run/c/s/x", protocol).unwrap();
        let r = BootstrapResult::parse_from_bytes(&reply).unwrap();
        assert_eq!((r.version, r.protocol.as_str()), (3, "ttrpc"));
        assert_eq!(r.address, "unix:///run/c/s/x");
    }

    #[test]
    fn legacy_flags_with_or_without_runtime_options() {
        let options = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0x0a, 0x01, b'x'],
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap();
        for input in [Vec::new(), options] {
            let (opts, protocol) = parse(&input, &flags(), Some("/t.sock".into())).unwrap();
            assert_eq!(protocol, Protocol::Legacy);
            assert_eq!(opts.ttrpc_address, "/t.sock");
            assert_eq!(opts.id, "pod1");
            assert_eq!(reply("unix:///a", protocol).unwrap(), b"unix:///a");
        }
    }

    #[test]
    fn params_for_another_shim_or_without_ttrpc_are_refused() {
        let mut other = params();
        other.instance_id = "pod2".into();
        assert!(parse(&other.write_to_bytes().unwrap(), &flags(), None).is_err());
        let mut no_ttrpc = params();
        no_ttrpc.containerd_ttrpc_address.clear();
        assert!(parse(&no_ttrpc.write_to_bytes().unwrap(), &flags(), None).is_err());
    }
}
