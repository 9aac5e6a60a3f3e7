//! `certagent-assets DIR`: the man pages and shell completions, generated from certagent's
//! command-line definitions so they never drift from them. Built only with the `assets`
//! feature; the package builds run it before `cargo deb` / `cargo generate-rpm`.
//!
//! Writes `DIR/man/certagent.8` (and `certagent-SUBCOMMAND.8` for each visible subcommand)
//! and `DIR/completions/{certagent.bash,_certagent,certagent.fish}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{Roff, bold, roman};

use certagent::cli::{Cli, EXAMPLES, EXIT_CODES, FILES};

/// Section 8: system administration commands (certagent runs as a root service).
const SECTION: &str = "8";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: certagent-assets DIR");
        return ExitCode::from(2);
    };
    match generate(&PathBuf::from(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certagent-assets: {e}");
            ExitCode::from(2)
        }
    }
}

fn generate(dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub, &man)?;
    }
    main_page(&cmd, &man)?;
    for (shell, file) in [
        (Shell::Bash, "certagent.bash"),
        (Shell::Zsh, "_certagent"),
        (Shell::Fish, "certagent.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, "certagent", &mut out);
        std::fs::write(completions.join(file), out)?;
    }
    Ok(())
}

fn sub_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub, dir)?;
    }
    clap_mangen::Man::new(cmd.clone())
        .section(SECTION)
        .manual("certagent")
        .generate_to(dir)?;
    Ok(())
}

/// certagent(8): clap's sections, then exit status, examples and files as real man-page
/// sections (clap would put the `--help` epilogue, pre-formatted text, in one "EXTRA" blob).
fn main_page(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    let cmd = cmd
        .clone()
        .after_help(None::<&str>)
        .after_long_help(None::<&str>);
    let man = clap_mangen::Man::new(cmd)
        .section(SECTION)
        .manual("certagent");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    let roff = extra_sections();
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    std::fs::write(dir.join(man.get_filename()), out)
}

/// The sections clap does not write: exit status, examples, files, see also.
fn extra_sections() -> Roff {
    let mut roff = Roff::new();
    let mut section = |title: &str, rows: Vec<(String, &str)>| {
        roff.control("SH", [title]);
        for (term, text) in rows {
            roff.control("TP", []);
            roff.text([bold(term)]);
            roff.text([roman(text)]);
        }
    };
    section(
        "EXIT STATUS",
        EXIT_CODES
            .iter()
            .map(|(c, m)| (c.to_string(), *m))
            .collect(),
    );
    section(
        "EXAMPLES",
        EXAMPLES.iter().map(|(c, m)| (c.to_string(), *m)).collect(),
    );
    section(
        "FILES",
        FILES.iter().map(|(p, m)| (p.to_string(), *m)).collect(),
    );
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemd.exec(5), systemd-analyze(1); the README in /usr/share/doc/certagent",
    )]);
    roff
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn man_pages_and_completions_cover_the_visible_commands() {
        let tmp = tempfile::tempdir().unwrap();
        generate(tmp.path()).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(tmp.path().join("man"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        assert_eq!(
            pages,
            [
                "certagent-check.8",
                "certagent-config-validate.8",
                "certagent-config.8",
                "certagent-discover.8",
                "certagent-import.8",
                "certagent-install.8",
                "certagent-reissue.8",
                "certagent-run.8",
                "certagent-status.8",
                "certagent-uninstall.8",
                "certagent.8",
            ]
        );
        let main = std::fs::read_to_string(tmp.path().join("man/certagent.8")).unwrap();
        for want in [
            ".TH certagent 8",
            "certagent\\-reissue(8)",
            ".SH \"EXIT STATUS\"",
            "\\fB78\\fR",
            ".SH FILES",
            "/etc/certagent/credentials/",
        ] {
            assert!(main.contains(want), "no {want:?} in:\n{main}");
        }
        assert!(!main.contains("EXTRA"), "{main}");
        for file in ["certagent.bash", "_certagent", "certagent.fish"] {
            let text = std::fs::read_to_string(tmp.path().join("completions").join(file)).unwrap();
            assert!(
                text.contains("reissue") && text.contains("dry-run"),
                "{file}: {text}"
            );
        }
    }
}
