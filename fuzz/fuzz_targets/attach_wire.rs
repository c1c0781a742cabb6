//! The shim's attach socket: the request line a client sends, the stdin
//! URI a container was created with, and the output frames the shim sends.
#![no_main]

use berth::attach_wire::{self, FRAME_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    if let Ok(req) = attach_wire::parse_request(line) {
        let json = serde_json::to_vec(&req).unwrap();
        assert_eq!(attach_wire::parse_request(&json).unwrap(), req);
    }
    if let Ok(s) = std::str::from_utf8(line)
        && let Some(once) = attach_wire::parse_stdin_uri(s)
    {
        assert_eq!(
            attach_wire::parse_stdin_uri(&attach_wire::stdin_uri(once)),
            Some(once)
        );
    }
    let mut rest = data;
    while rest.len() >= FRAME_HEADER {
        let header: [u8; FRAME_HEADER] = rest[..FRAME_HEADER].try_into().unwrap();
        let (stream, len) = attach_wire::parse_frame_header(&header);
        assert_eq!(attach_wire::frame_header(stream, len), header);
        rest = &rest[FRAME_HEADER..];
        rest = &rest[len.min(rest.len())..];
    }
});
