//! SPDY/3.1 frames from a client of the streaming server (kubectl exec /
//! attach / port-forward): every frame of the input is read, header blocks
//! inflated, and what parses is written back and read again.
#![no_main]

use berth::stream::spdy::frame::{Frame, FrameReader, FrameWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        let mut input = data;
        let mut reader = FrameReader::default();
        let mut frames = Vec::new();
        // A reader keeps its zlib stream across frames, as on a connection.
        while let Ok(Some(frame)) = reader.read(&mut input).await {
            frames.push(frame);
            if frames.len() > 64 {
                break;
            }
        }
        let mut writer = FrameWriter::default();
        let mut wire = bytes::BytesMut::new();
        let mut encoded = 0;
        // A control frame of a type berth does not know is read (to be
        // ignored, as the spec says) but never written: it has no bytes.
        for f in frames.iter().filter(|f| !matches!(f, Frame::Unknown)) {
            if writer.encode(f, &mut wire).is_ok() {
                encoded += 1;
            }
        }
        let mut again = FrameReader::default();
        let mut slice = &wire[..];
        for _ in 0..encoded {
            match again.read(&mut slice).await {
                Ok(Some(_)) => {}
                r => panic!("a frame berth wrote does not read back: {r:?}"),
            }
        }
    });
});
