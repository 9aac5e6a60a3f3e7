//! `certagent-assets DIR`: the man pages and shell completions, generated from certagent's
//! command-line definitions so they never drift from them. Built only with the `assets`
//! feature; the package builds run it before `cargo deb` / `cargo generate-rpm`.
//!
//! Writes `DIR/man/certagent.8` (and `certagent-SUBCOMMAND.8` for each visible subcommand),
//! `DIR/man/certagent.toml.5` (the configuration: `packaging/man/certagent.toml.5.md` around
//! the key reference made from `config.example.toml`), `DIR/man/certagent-concepts.7` (from
//! `packaging/man/certagent-concepts.7.md`) and
//! `DIR/completions/{certagent.bash,_certagent,certagent.fish}`.

mod config_page;
mod markdown;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{Roff, bold, roman};

use certagent::cli::{Cli, EXAMPLES, EXIT_CODES, FILES};

/// Section 8: system administration commands (certagent runs as a root service).
const SECTION: &str = "8";

const EXAMPLE_CONFIG: &str = include_str!("../../../config.example.toml");
const CONFIG_PAGE: &str = include_str!("../../../packaging/man/certagent.toml.5.md");
const CONCEPTS_PAGE: &str = include_str!("../../../packaging/man/certagent-concepts.7.md");
/// Where the key reference goes in `CONFIG_PAGE`.
const KEYS_MARKER: &str = "<!-- keys -->";

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
    std::fs::write(man.join("certagent.toml.5"), ascii(&config_page().render()))?;
    std::fs::write(
        man.join("certagent-concepts.7"),
        ascii(&concepts_page().render()),
    )?;
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

/// certagent.toml(5): the prose of `CONFIG_PAGE` with the key reference at its marker.
fn config_page() -> Roff {
    let mut roff = page_head(
        "certagent.toml",
        "5",
        "certagent's configuration: config.toml and conf.d/*.toml",
    );
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([bold("/etc/certagent/config.toml")]);
    roff.control("br", []);
    roff.text([bold("/etc/certagent/conf.d/*.toml")]);
    let (before, after) = CONFIG_PAGE
        .split_once(KEYS_MARKER)
        .unwrap_or((CONFIG_PAGE, ""));
    markdown::to_roff(before, &mut roff);
    roff.control("SH", ["KEYS"]);
    config_page::to_roff(EXAMPLE_CONFIG, &mut roff);
    markdown::to_roff(after, &mut roff);
    see_also(
        &mut roff,
        "certagent(8), certagent-concepts(7), certagent-config-validate(8)",
    );
    roff
}

/// certagent-concepts(7): how a re-issue works, the daemon, compromise, slow CAs, installing,
/// security, JSON and files.
fn concepts_page() -> Roff {
    let mut roff = page_head(
        "certagent-concepts",
        "7",
        "how certagent re-issues, installs and proves a certificate",
    );
    markdown::to_roff(CONCEPTS_PAGE, &mut roff);
    see_also(
        &mut roff,
        "certagent(8), certagent.toml(5), systemd.exec(5)",
    );
    roff
}

/// Characters beyond ASCII as groff's `\[uXXXX]` escapes: troff reads bytes, and without
/// preconv (which man-db runs, but not every reader does) they would come out garbled.
fn ascii(page: &str) -> String {
    page.chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\[u{:04X}]", u32::from(c))
            }
        })
        .collect()
}

fn page_head(name: &str, section: &str, what: &str) -> Roff {
    let mut roff = Roff::new();
    let version = format!("certagent {}", env!("CARGO_PKG_VERSION"));
    roff.control("TH", [name, section, "", version.as_str(), "certagent"]);
    roff.control("SH", ["NAME"]);
    roff.text([roman(format!("{name} - {what}"))]);
    roff
}

fn see_also(roff: &mut Roff, pages: &str) {
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(pages)]);
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
    see_also(
        &mut roff,
        "certagent.toml(5), certagent-concepts(7), systemd.exec(5); the README in /usr/share/doc/certagent",
    );
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
                "certagent-concepts.7",
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
                "certagent.toml.5",
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

    #[test]
    fn the_configuration_page_lists_every_key_of_the_example_and_the_concepts_page_its_sections() {
        let config = config_page().render();
        let keys = config_page::keys(EXAMPLE_CONFIG);
        assert!(keys.len() > 60, "{keys:?}");
        for key in &keys {
            assert!(
                config.contains(&format!("\\fB{key} = ")),
                "no {key} in:\n{config}"
            );
        }
        for want in [
            ".TH certagent.toml 5",
            ".SH KEYS",
            ".SS [certificate.www]",
            ".SS [issuer.letsencrypt]",
            ".SH \"WEB SERVERS\"",
            ".SH HOOKS",
            "certagent\\-concepts(7)",
        ] {
            assert!(config.contains(want), "no {want:?} in:\n{config}");
        }
        let concepts = concepts_page().render();
        for want in [
            ".TH certagent-concepts 7",
            ".SH \"HOW A RE-ISSUE WORKS\"",
            ".SH \"THE DAEMON\"",
            ".SH \"CAS THAT TAKE DAYS\"",
            ".SS \"Exit codes\"",
            ".SH FILES",
        ] {
            assert!(concepts.contains(want), "no {want:?} in:\n{concepts}");
        }
        assert_eq!(ascii("a \u{2014} b"), "a \\[u2014] b");
        for page in [&config, &concepts] {
            for markup in ["<!--", "](", "**", "```"] {
                assert!(!page.contains(markup), "{markup:?} left in:\n{page}");
            }
        }
    }
}
