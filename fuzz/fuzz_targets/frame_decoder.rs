//! Feeds arbitrary bytes to the frame decoder: it must return frames or errors, never panic, and
//! every message it accepts must survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_net::frame;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((message, used))) = frame::decode_frame(rest) {
        if let Ok(again) = frame::encode(&message) {
            let back = frame::decode_frame(&again).ok().flatten().map(|(m, _)| m);
            assert_eq!(back.as_ref(), Some(&message));
        }
        rest = &rest[used..];
    }
    let _ = frame::decode_body(data);
});
