//! The config loader: `Config::parse_sources` on arbitrary text (a NUL byte starts a conf.d
//! drop-in, so cross-file checks are reached too).
#![no_main]

use std::path::PathBuf;

use certagent::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut sources = Vec::new();
    for (i, part) in text.split('\0').take(3).enumerate() {
        let path = if i == 0 {
            PathBuf::from("/etc/certagent/config.toml")
        } else {
            PathBuf::from(format!("/etc/certagent/conf.d/{i:02}-fuzz.toml"))
        };
        sources.push((path, part.to_string()));
    }
    let mut errors = Vec::new();
    let config = Config::parse_sources(&sources, &mut errors);
    for e in &errors {
        // Every error points at a line of the file it names.
        let src = sources
            .iter()
            .find(|(p, _)| *p == e.file)
            .map(|(_, t)| t.as_str());
        if let Some(src) = src {
            let lines = src.bytes().filter(|&b| b == b'\n').count() + 1;
            assert!(
                (1..=lines).contains(&e.line),
                "error at line {} of a {lines}-line file: {e}",
                e.line
            );
        }
        let _ = e.to_string();
    }
    let _ = format!("{config:?}");
});
