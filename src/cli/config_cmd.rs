//! `certagent config validate`: every error at once, with file, line and key.

use std::path::{Path, PathBuf};

use std::io::Write as _;

use crate::config::{Config, shown};
use crate::error::{Result, exit};
use crate::output::{self, ValidateDoc};

/// `candidate`: validate with the content of `.1` in place of `.0` (see `Config::load_with`).
pub(crate) fn validate(
    config_path: &Path,
    json: bool,
    candidate: Option<(&Path, &Path)>,
) -> Result<u8> {
    let (files, loaded) = Config::load_files(config_path, candidate);
    let (valid, certificates, errors) = match loaded {
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
            files: files.iter().map(|f| f.display().to_string()).collect(),
            certificates,
            errors,
        });
    } else if valid {
        print_valid(config_path, &certificates);
        if let Some(read) = files_read(config_path, &files) {
            let _ = writeln!(std::io::stdout(), "  {read}");
        }
    } else {
        eprintln!("certagent: {} error(s) in the configuration:", errors.len());
        for e in &errors {
            eprintln!("  {e}");
        }
        if let Some(read) = files_read(config_path, &files) {
            eprintln!("  {read}");
        }
    }
    Ok(if valid { exit::OK } else { exit::CONFIG })
}

/// The files read, when they are more than the main file (drop-ins; or drop-ins alone, the
/// main file being absent), on one line.
fn files_read(config_path: &Path, files: &[PathBuf]) -> Option<String> {
    if files.is_empty() || files == [config_path] {
        return None;
    }
    let list: Vec<String> = files
        .iter()
        .map(|f| shown(&f.display().to_string()).into_owned())
        .collect();
    let absent = if files.first().is_some_and(|f| f == config_path) {
        String::new()
    } else {
        format!(
            " ({} is absent: the drop-ins alone are the configuration)",
            shown(&config_path.display().to_string())
        )
    };
    Some(format!("read: {}{absent}", list.join(", ")))
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
