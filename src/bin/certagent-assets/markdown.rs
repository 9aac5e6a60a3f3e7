//! The subset of Markdown the man-page sources in `packaging/man/` are written in, to roff.
//!
//! Those pages are read two ways: as Markdown in a checkout (or on a forge), and as man pages
//! from the packages. Supported: `#` (the title, skipped: the page header carries it), `##`
//! and `###` headings, paragraphs, `*` bullets and `1.` items (continued by indented lines),
//! fenced code blocks, tables (each row a tagged paragraph: the first cell, then the others),
//! and inline `` `code` ``, `**bold**` and `[text](target)`. Anything else is text.

use clap_mangen::roff::{Inline, Roff, bold, roman};

/// Appends `md`, converted, to `roff`.
pub(crate) fn to_roff(md: &str, roff: &mut Roff) {
    let mut lines = md.lines().peekable();
    let mut paragraph: Vec<&str> = Vec::new();
    let flush = |paragraph: &mut Vec<&str>, roff: &mut Roff| {
        if !paragraph.is_empty() {
            roff.control("PP", []);
            roff.text(inline(&paragraph.join(" ")));
            paragraph.clear();
        }
    };
    while let Some(line) = lines.next() {
        let trimmed = line.trim_end();
        if trimmed.starts_with("```") {
            flush(&mut paragraph, roff);
            roff.control("PP", [])
                .control("RS", ["4"])
                .control("nf", []);
            for code in lines.by_ref() {
                if code.trim_end().starts_with("```") {
                    break;
                }
                roff.text([roman(code)]);
            }
            roff.control("fi", []).control("RE", []);
        } else if trimmed.is_empty() || trimmed.starts_with("# ") {
            flush(&mut paragraph, roff);
        } else if let Some(title) = trimmed.strip_prefix("## ") {
            flush(&mut paragraph, roff);
            roff.control("SH", [plain(title).to_uppercase().as_str()]);
        } else if let Some(title) = trimmed.strip_prefix("### ") {
            flush(&mut paragraph, roff);
            roff.control("SS", [plain(title).as_str()]);
        } else if let Some((tag, first)) = item(trimmed) {
            flush(&mut paragraph, roff);
            let mut text = first.to_string();
            while let Some(next) = lines.peek()
                && next.starts_with("  ")
                && item(next.trim_start()).is_none()
            {
                text.push(' ');
                text.push_str(next.trim());
                lines.next();
            }
            let width = if tag == "\\(bu" { "2" } else { "4" };
            roff.control("IP", [tag.as_str(), width]);
            roff.text(inline(&text));
        } else if trimmed.starts_with('|') {
            flush(&mut paragraph, roff);
            table_row(trimmed, lines.peek().copied(), roff);
        } else {
            paragraph.push(trimmed);
        }
    }
    flush(&mut paragraph, roff);
}

/// A list item's tag (a bullet or `N.`) and its text.
fn item(line: &str) -> Option<(String, &str)> {
    if let Some(rest) = line.strip_prefix("* ") {
        return Some(("\\(bu".to_string(), rest));
    }
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = line[digits..].strip_prefix(". ")?;
    (digits > 0).then(|| (format!("{}.", &line[..digits]), rest))
}

/// One table row: the header row (followed by `|---|`) and the separator are dropped; a body
/// row becomes a tagged paragraph.
fn table_row(row: &str, next: Option<&str>, roff: &mut Roff) {
    let separator = |r: &str| r.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '));
    if separator(row) || next.is_some_and(|n| n.starts_with('|') && separator(n.trim_end())) {
        return;
    }
    let cells: Vec<&str> = split_cells(row);
    let Some((first, rest)) = cells.split_first() else {
        return;
    };
    roff.control("TP", []);
    roff.text([bold(plain(first))]);
    roff.text(inline(&rest.join(" \u{2014} ")));
}

/// The cells of `| a | b |`, where a `|` inside backticks is text.
fn split_cells(row: &str) -> Vec<&str> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = Vec::new();
    let (mut start, mut code) = (0, false);
    for (i, c) in inner.char_indices() {
        match c {
            '`' => code = !code,
            '|' if !code => {
                cells.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    cells.push(inner[start..].trim());
    cells
}

/// Inline markup to roff: code and strong text bold, links as their text (and the address,
/// when it leads off the page).
fn inline(text: &str) -> Vec<Inline> {
    let mut out = Vec::new();
    let mut plain_run = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let span = if c == '`' {
            rest[1..]
                .find('`')
                .map(|end| (bold(&rest[1..=end]), end + 2))
        } else if let Some(inner) = rest.strip_prefix("**") {
            inner.find("**").map(|end| (bold(&inner[..end]), end + 4))
        } else if c == '[' {
            link(rest).map(|(shown, len)| (roman(shown), len))
        } else {
            None
        };
        match span {
            Some((element, len)) => {
                if !plain_run.is_empty() {
                    out.push(roman(std::mem::take(&mut plain_run)));
                }
                out.push(element);
                rest = &rest[len..];
            }
            None => {
                plain_run.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if !plain_run.is_empty() {
        out.push(roman(plain_run));
    }
    out
}

/// `[text](target)` at the start of `s`: what to show, and the length of the markup.
fn link(s: &str) -> Option<(String, usize)> {
    let close = s.find("](")?;
    let end = close + s[close..].find(')')?;
    let text = plain(&s[1..close]);
    let target = &s[close + 2..end];
    let shown = if target.starts_with("http") {
        format!("{text} ({target})")
    } else {
        text
    };
    Some((shown, end + 1))
}

/// Text without its inline markup (headings, table tags).
fn plain(s: &str) -> String {
    inline(s)
        .into_iter()
        .map(|i| match i {
            Inline::Roman(t) | Inline::Bold(t) | Inline::Italic(t) => t,
            Inline::LineBreak => " ".to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(md: &str) -> String {
        let mut roff = Roff::new();
        to_roff(md, &mut roff);
        roff.to_roff()
    }

    #[test]
    fn headings_paragraphs_and_inline_markup() {
        let out = render(
            "# page\n\n## The daemon\n\nIt **wakes** for `inotify`\nevents; see [Files](#files) and [RFC](https://x.invalid/r).\n\n### Sub part\ntext\n",
        );
        assert_eq!(
            out,
            ".SH \"THE DAEMON\"\n.PP\nIt \\fBwakes\\fR for \\fBinotify\\fR events; see Files and RFC (https://x.invalid/r).\n.SS \"Sub part\"\n.PP\ntext\n"
        );
    }

    #[test]
    fn items_take_their_indented_continuations() {
        let out = render("* one\n  more\n* two\n\n1. first\n2. second\n   still\n");
        assert_eq!(
            out,
            ".IP \\(bu 2\none more\n.IP \\(bu 2\ntwo\n.IP 1. 4\nfirst\n.IP 2. 4\nsecond still\n"
        );
    }

    #[test]
    fn code_blocks_keep_their_lines_and_escape_leading_dots() {
        let out = render("```sh\n.ci/run\n  indented -x\n```\n");
        assert_eq!(
            out,
            ".PP\n.RS 4\n.nf\n\\&.ci/run\n  indented \\-x\n.fi\n.RE\n"
        );
    }

    #[test]
    fn table_rows_become_tagged_paragraphs_without_header() {
        let out = render("| key | what | more |\n|---|---|---|\n| `a` | x `p|q` | y |\n");
        assert_eq!(out, ".TP\n\\fBa\\fR\nx \\fBp|q\\fR \u{2014} y\n");
    }
}
