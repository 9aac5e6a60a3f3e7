//! The control-socket protocol: one JSON request line, `serde_json::from_slice::<Request>`.
#![no_main]

use certagent::control::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<Request>(data) else {
        return;
    };
    // Property: a request survives the wire (what the CLI sends is what the daemon reads).
    let line = serde_json::to_vec(&req).expect("a parsed request serializes");
    let back: Request = serde_json::from_slice(&line).expect("a serialized request parses");
    assert_eq!(back, req);
});
