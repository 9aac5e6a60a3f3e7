//! ACME Renewal Information answers: `revocation::parse_renewal_info`.
#![no_main]

use certagent::revocation::parse_renewal_info;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The last byte picks a Retry-After (absent, or a wild number of seconds).
    let retry_after = match data.last() {
        Some(&b) if b & 1 == 1 => Some(i64::from(b as i8) * 1_000_000_000_000_000),
        _ => None,
    };
    for ra in [None, retry_after] {
        if let Ok(ri) = parse_renewal_info(data, ra) {
            assert!(ri.start < ri.end, "window ends before it starts: {ri:?}");
            assert!((60..=86_400).contains(&ri.retry_after), "unclamped: {ri:?}");
        }
    }
});
