//! `containerd-shim-berth-v2 -info`: what containerd 2.x asks a runtime
//! about itself (at start-up for CRI's runtime handler features, and from
//! 2.2 at every task create). As containerd's runc shim: the runtime
//! options containerd sends on stdin (a protobuf `Any`) come back in
//! `options`; `features` is the OCI features document as JSON in an `Any`
//! of containerd's typeurl for runtime-spec's `features.Features`.
//!
//! The JSON is written as Go's `encoding/json` writes runtime-spec's
//! `features.Features` (every optional field `omitempty`): an absent field
//! is left out, never `null`, so the bytes have the shape of
//! `containerd-shim-runc-v2 -info`'s (tests/shim_info.rs compares them).
//!
//! containerd 2.1's CRI asks only runtimes of type `io.containerd.runc.v2`
//! (`introspectRuntimeFeatures`; containerd#13504 lifts that in 2.2.x and
//! 2.3): to get berth's features there, declare the handler with
//! `runtime_type = "io.containerd.runc.v2"` and `runtime_path` set to this
//! binary (docs/ARCHITECTURE.md, "The shim").

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};

/// containerd's typeurl for runtime-spec's `features.Features`.
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The encoded `RuntimeInfo` for runtime options `input` (stdin, may be empty).
pub fn runtime_info(runtime_id: &str, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let options = if input.is_empty() {
        None
    } else {
        Some(Any::parse_from_bytes(input).map_err(|e| anyhow::anyhow!("runtime options: {e}"))?)
    };
    let mut features = serde_json::to_value(berth::runtime::features::features())?;
    drop_nulls(&mut features);
    let features = serde_json::to_vec(&features)?;
    let info = RuntimeInfo {
        name: runtime_id.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: berth::VERSION.to_string(),
            ..Default::default()
        }),
        options: MessageField::from_option(options),
        features: MessageField::some(Any {
            type_url: FEATURES_TYPE_URL.to_string(),
            value: features,
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(info.write_to_bytes()?)
}

/// Removes the `null` members of every object in `v`, recursively: what
/// `omitempty` leaves out.
fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_carries_features_json_and_options() {
        let opts = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0x0a, 0x01, b'x'],
            ..Default::default()
        };
        let out = runtime_info("io.containerd.berth.v2", &opts.write_to_bytes().unwrap()).unwrap();
        let info = RuntimeInfo::parse_from_bytes(&out).unwrap();
        assert_eq!(info.name, "io.containerd.berth.v2");
        assert_eq!(info.version.version, berth::VERSION);
        assert_eq!(info.options.type_url, "containerd.runc.v1.Options");
        assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
        let json: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert_eq!(json["linux"]["mountExtensions"]["idmap"]["enabled"], true);
        assert!(
            !String::from_utf8_lossy(&info.features.value).contains("null"),
            "absent fields are left out, as Go's omitempty does"
        );
        let empty = RuntimeInfo::parse_from_bytes(&runtime_info("x", &[]).unwrap()).unwrap();
        assert!(empty.options.is_none());
    }
}
