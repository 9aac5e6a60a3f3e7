//! The key reference of certagent.toml(5), from `config.example.toml`: the one file that
//! documents every key (a unit test of the config module keeps it complete, and valid), so the
//! man page cannot drift from it.
//!
//! The example's shape: comment paragraphs, `[table]` headers, `key = value   # what it does`
//! lines (also commented out, `# key = value   # ...`, for keys not set by default), and
//! comments continued on the next lines far to the right.

use clap_mangen::roff::{Roff, bold, roman};

/// Appends the example's header comment (a paragraph) and one subsection per table.
pub(crate) fn to_roff(example: &str, roff: &mut Roff) {
    let mut prose: Vec<String> = Vec::new();
    let mut key: Option<(String, String)> = None;
    let flush_key = |key: &mut Option<(String, String)>, roff: &mut Roff| {
        if let Some((tag, text)) = key.take() {
            roff.control("TP", []);
            roff.text([bold(tag)]);
            if !text.is_empty() {
                roff.text([roman(text)]);
            }
        }
    };
    let flush_prose = |prose: &mut Vec<String>, roff: &mut Roff| {
        if !prose.is_empty() {
            roff.control("PP", []);
            roff.text([roman(prose.join(" "))]);
            prose.clear();
        }
    };
    for line in example.lines() {
        let trimmed = line.trim();
        if let Some(more) = continuation(line)
            && let Some((_, text)) = key.as_mut()
        {
            push_words(text, more);
            continue;
        }
        if trimmed.is_empty() {
            flush_key(&mut key, roff);
            flush_prose(&mut prose, roff);
        } else if let Some(header) = table_header(trimmed) {
            flush_key(&mut key, roff);
            let (table, comment) = split_comment(header);
            roff.control("SS", [table.as_str()]);
            flush_prose(&mut prose, roff);
            if !comment.is_empty() {
                prose.push(comment);
            }
        } else if let Some((tag, comment)) = key_line(trimmed) {
            flush_key(&mut key, roff);
            flush_prose(&mut prose, roff);
            key = Some((tag, comment));
        } else if let Some(text) = trimmed.strip_prefix('#') {
            flush_key(&mut key, roff);
            if !text.trim().is_empty() {
                prose.push(text.trim().to_string());
            }
        }
    }
    flush_key(&mut key, roff);
    flush_prose(&mut prose, roff);
}

/// The keys the example documents (set or commented out), in order.
#[cfg(test)]
pub(crate) fn keys(example: &str) -> Vec<String> {
    example
        .lines()
        .filter(|l| continuation(l).is_none())
        .filter_map(|l| key_line(l.trim()))
        .map(|(tag, _)| tag.split(" = ").next().unwrap_or_default().to_string())
        .collect()
}

/// `[table]`, set or commented out (a table the example leaves unset, like `[cluster]`).
fn table_header(line: &str) -> Option<&str> {
    let line = line.strip_prefix("# ").unwrap_or(line);
    line.starts_with('[').then_some(line)
}

/// `key = value   # comment`, set or commented out: the tag (`key = value`) and the comment.
fn key_line(line: &str) -> Option<(String, String)> {
    let line = line.strip_prefix("# ").unwrap_or(line);
    let (name, _) = line.split_once(" = ")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return None;
    }
    let (tag, comment) = split_comment(line);
    Some((tag, comment))
}

/// A comment continuing the previous line's: `#` far to the right, or `#`, spaces, `#`.
fn continuation(line: &str) -> Option<&str> {
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start().strip_prefix('#')?;
    if indent >= 20 {
        return Some(rest.trim());
    }
    let inner = rest.trim_start();
    (indent == 0 && rest.len() - inner.len() >= 20)
        .then(|| inner.strip_prefix('#'))
        .flatten()
        .map(str::trim)
}

/// A line split at its first `#` outside a quoted string: (code, comment), both trimmed.
fn split_comment(line: &str) -> (String, String) {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => {
                return (
                    line[..i].trim().to_string(),
                    line[i + 1..].trim().to_string(),
                );
            }
            _ => {}
        }
    }
    (line.trim().to_string(), String::new())
}

fn push_words(text: &mut String, more: &str) {
    if !text.is_empty() && !more.is_empty() {
        text.push(' ');
    }
    text.push_str(more);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_keys_comments_and_continuations() {
        let example = "\
# The header.
# Second line.

# Issuers: some prose.
[issuer.x]                               # its own note
kind = \"acme\"                            # acme | internal
timeout = \"10m\"                          # how long, with a # inside \"quotes #\"
                                         # continued here
# webroot = \"/var/www/acme\"              # http-01
#                                        # and on
";
        let mut roff = Roff::new();
        to_roff(example, &mut roff);
        assert_eq!(
            roff.to_roff(),
            ".PP\nThe header. Second line.\n.SS [issuer.x]\n.PP\nIssuers: some prose.\n.PP\nits own note\n.TP\n\\fBkind = \"acme\"\\fR\nacme | internal\n.TP\n\\fBtimeout = \"10m\"\\fR\nhow long, with a # inside \"quotes #\" continued here\n.TP\n\\fBwebroot = \"/var/www/acme\"\\fR\nhttp\\-01 and on\n"
        );
        assert_eq!(keys(example), ["kind", "timeout", "webroot"]);
    }
}
