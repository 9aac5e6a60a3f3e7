//! `certagent config validate`: every error at once, with file, line and key.

use std::path::Path;

use std::io::Write as _;

use crate::config::Config;
use crate::error::{Result, exit};
use crate::output::{self, ValidateDoc};

/// `candidate`: validate with the content of `.1` in place of `.0` (see `Config::load_with`).
pub(crate) fn validate(
    config_path: &Path,
    json: bool,
    candidate: Option<(&Path, &Path)>,
) -> Result<u8> {
    let (valid, certificates, errors) = match Config::load_with(config_path, candidate) {
        Ok(c) => (
            true,
            c.certificates.keys().cloned().collect::<Vec<_>>(),
            Vec::new(),
        ),
        Err(e) => (false, Vec::new(), e.0),
    };
    if json {
        output::print_json(&ValidateDoc {
            schema: output::SCHEMA,
            changed: false,
            valid,
            files: vec![config_path.display().to_string()],
            certificates,
            errors,
        });
    } else if valid {
        print_valid(config_path, &certificates);
    } else {
        eprintln!("certagent: {} error(s) in the configuration:", errors.len());
        for e in &errors {
            eprintln!("  {e}");
        }
    }
    Ok(if valid { exit::OK } else { exit::CONFIG })
}

/// One line for a valid configuration: its file and the first few certificates.
fn print_valid(config_path: &Path, certificates: &[String]) {
    // A line, not a page: name the first few; --json lists them all.
    const SHOWN: usize = 10;
    let mut names = certificates
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if certificates.len() > SHOWN {
        names.push_str(&format!(
            " and {} more (--json lists all)",
            certificates.len() - SHOWN
        ));
    }
    let _ = writeln!(
        std::io::stdout(),
        "{}: valid, {} certificate(s): {names}",
        config_path.display(),
        certificates.len(),
    );
}
