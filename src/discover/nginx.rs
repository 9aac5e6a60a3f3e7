//! Reading an nginx configuration the way nginx does: tokens, blocks, `include` with glob
//! patterns relative to the directory of the main file (nginx's conf prefix), `http`-level
//! certificates inherited by `server` blocks. Only what `discover` needs is interpreted:
//! `server_name`, `listen`, `ssl_certificate`, `ssl_certificate_key`, `ssl`, `pid`.

use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::str::Chars;

use super::{Scan, Site, Source, expand_glob, normalize, probe_address};

/// Configs nest includes a few levels deep; more means a loop.
const MAX_DEPTH: usize = 16;

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    End,
}

/// Split nginx config text into tokens with their line numbers.
fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut word = String::new();
    let mut word_line = 1;
    let flush = |word: &mut String, out: &mut Vec<(Token, usize)>, at: usize| {
        if !word.is_empty() {
            out.push((Token::Word(std::mem::take(word)), at));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                flush(&mut word, &mut out, word_line);
                line += 1;
            }
            c if c.is_whitespace() => flush(&mut word, &mut out, word_line),
            '#' if word.is_empty() => skip_comment(&mut chars, &mut line),
            '{' | '}' | ';' => {
                flush(&mut word, &mut out, word_line);
                let t = match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    _ => Token::End,
                };
                out.push((t, line));
            }
            '"' | '\'' if word.is_empty() => {
                word_line = line;
                let Some(quoted) = read_quoted(&mut chars, c, &mut line) else {
                    return Err(format!("unterminated quote starting on line {word_line}"));
                };
                // An empty quoted word ("") is still a word.
                out.push((Token::Word(quoted), word_line));
            }
            '\\' => {
                if word.is_empty() {
                    word_line = line;
                }
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c => {
                if word.is_empty() {
                    word_line = line;
                }
                word.push(c);
            }
        }
    }
    flush(&mut word, &mut out, word_line);
    Ok(out)
}

/// Skip the rest of a `#` comment, through its newline.
fn skip_comment(chars: &mut Peekable<Chars>, line: &mut usize) {
    for c in chars.by_ref() {
        if c == '\n' {
            *line += 1;
            break;
        }
    }
}

/// The rest of a word quoted with `quote`, backslash escapes resolved; `None` when the
/// text ends before the closing quote.
fn read_quoted(chars: &mut Peekable<Chars>, quote: char, line: &mut usize) -> Option<String> {
    let mut word = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if n == '\n' {
                        *line += 1;
                    }
                    word.push(n);
                }
            }
            c if c == quote => return Some(word),
            '\n' => {
                *line += 1;
                word.push('\n');
            }
            c => word.push(c),
        }
    }
    None
}

/// One directive: its words, and its block if it has one.
#[derive(Debug)]
struct Directive {
    args: Vec<String>,
    source: Source,
    block: Option<Vec<Directive>>,
}

fn parse(tokens: &[(Token, usize)], file: &Path) -> Result<Vec<Directive>, String> {
    parse_block(tokens, &mut 0, file, false)
}

/// Directives from the tokens at `pos` to the end of the block (`nested`) or the file.
fn parse_block(
    tokens: &[(Token, usize)],
    pos: &mut usize,
    file: &Path,
    nested: bool,
) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    let mut args = Vec::new();
    let mut first_line = 0;
    while *pos < tokens.len() {
        let (token, line) = &tokens[*pos];
        *pos += 1;
        match token {
            Token::Word(w) => {
                if args.is_empty() {
                    first_line = *line;
                }
                args.push(w.clone());
            }
            Token::End => {
                if !args.is_empty() {
                    out.push(Directive {
                        args: std::mem::take(&mut args),
                        source: Source::new(file, first_line),
                        block: None,
                    });
                }
            }
            Token::Open => {
                let inner = parse_block(tokens, pos, file, true)?;
                out.push(Directive {
                    args: std::mem::take(&mut args),
                    source: Source::new(file, first_line),
                    block: Some(inner),
                });
            }
            Token::Close if nested => return Ok(out),
            Token::Close => return Err(format!("unexpected \"}}\" on line {line}")),
        }
    }
    if nested {
        return Err("unexpected end of file, expecting \"}\"".into());
    }
    Ok(out)
}

/// Read `file` and splice every `include` in place, recursively.
fn load(file: &Path, conf_dir: &Path, depth: usize, scan: &mut Scan) -> Vec<Directive> {
    if depth > MAX_DEPTH {
        scan.problem(format!(
            "nginx: {:?}: includes nest deeper than {MAX_DEPTH} levels; not followed",
            file.display().to_string()
        ));
        return Vec::new();
    }
    let text = match super::read_text(file) {
        Ok(t) => t,
        Err(e) => {
            scan.problem(format!("nginx: {e}"));
            return Vec::new();
        }
    };
    if let Err(cycle) = scan.enter(file) {
        scan.problem(format!("nginx: {cycle}"));
        return Vec::new();
    }
    scan.files.push(file.to_path_buf());
    let parsed = tokenize(&text).and_then(|t| parse(&t, file));
    let out = match parsed {
        Ok(directives) => expand(directives, conf_dir, depth, scan),
        Err(e) => {
            scan.problem(format!(
                "nginx: failed to parse {:?}: {e}",
                file.display().to_string()
            ));
            Vec::new()
        }
    };
    scan.leave();
    out
}

fn expand(
    directives: Vec<Directive>,
    conf_dir: &Path,
    depth: usize,
    scan: &mut Scan,
) -> Vec<Directive> {
    let mut out = Vec::new();
    for mut d in directives {
        if d.args.first().map(String::as_str) == Some("include") && d.block.is_none() {
            let Some(pattern) = d.args.get(1) else {
                continue;
            };
            let pattern = normalize(&conf_dir.join(pattern));
            let files = expand_glob(&pattern);
            if files.is_empty() && !super::has_glob(&pattern) {
                scan.problem(format!(
                    "nginx: {}: include {:?} does not exist",
                    d.source,
                    pattern.display().to_string()
                ));
            }
            for f in files {
                out.extend(load(&f, conf_dir, depth + 1, scan));
            }
            continue;
        }
        if let Some(inner) = d.block.take() {
            d.block = Some(expand(inner, conf_dir, depth, scan));
        }
        out.push(d);
    }
    out
}

/// Certificates and keys given in one context, in order (nginx pairs the n-th certificate
/// with the n-th key: one RSA and one ECDSA pair is common).
#[derive(Clone, Default)]
struct Pairs {
    certs: Vec<(String, Source)>,
    keys: Vec<String>,
}

impl Pairs {
    fn read(directives: &[Directive]) -> Pairs {
        let mut p = Pairs::default();
        for d in directives {
            match (d.args.first().map(String::as_str), d.args.get(1)) {
                (Some("ssl_certificate"), Some(v)) => p.certs.push((v.clone(), d.source.clone())),
                (Some("ssl_certificate_key"), Some(v)) => p.keys.push(v.clone()),
                _ => {}
            }
        }
        p
    }
}

/// Scan the nginx configuration whose main file is `conf`.
pub(crate) fn scan(conf: &Path, scan: &mut Scan) {
    let conf_dir = conf.parent().unwrap_or(Path::new("/")).to_path_buf();
    let top = load(conf, &conf_dir, 0, scan);
    for d in &top {
        if d.args.first().map(String::as_str) == Some("pid")
            && let Some(p) = d.args.get(1)
        {
            // A relative pid path is relative to nginx's prefix (-p), not to the config.
            if Path::new(p).is_absolute() {
                scan.pid_file = Some(normalize(Path::new(p)));
            } else {
                scan.problem(format!(
                    "nginx: {}: pid {p:?} is relative to nginx's prefix; set pid_file in [server.nginx]",
                    d.source
                ));
            }
        }
    }
    for http in top
        .iter()
        .filter(|d| d.args.first().map(String::as_str) == Some("http"))
    {
        let Some(body) = &http.block else { continue };
        let inherited = Pairs::read(body);
        for server in body
            .iter()
            .filter(|d| d.args.first().map(String::as_str) == Some("server"))
        {
            if let Some(inner) = &server.block {
                read_server(inner, &server.source, &inherited, &conf_dir, scan);
            }
        }
    }
}

/// What a `server` block says about where it listens and under which names.
struct Listening {
    names: Vec<String>,
    /// Each `listen` address, and whether it has `ssl` (or `quic`).
    listens: Vec<(String, bool)>,
    /// `ssl on;` (the old way to turn TLS on for every listen).
    ssl_on: bool,
    /// Whether any `listen` has `ssl`.
    ssl_listen: bool,
}

impl Listening {
    fn read(body: &[Directive]) -> Listening {
        let mut l = Listening {
            names: Vec::new(),
            listens: Vec::new(),
            ssl_on: false,
            ssl_listen: false,
        };
        for d in body {
            let args = &d.args[1..];
            match d.args[0].as_str() {
                "server_name" => l.names.extend(
                    args.iter()
                        .filter(|n| !n.is_empty() && *n != "_" && !n.starts_with('~'))
                        .map(|n| n.trim_start_matches('.').to_ascii_lowercase()),
                ),
                "listen" => {
                    let ssl = args.iter().any(|a| a == "ssl" || a == "quic");
                    l.ssl_listen |= ssl;
                    if let Some(addr) = args.first() {
                        l.listens.push((addr.clone(), ssl));
                    }
                }
                "ssl" => l.ssl_on = args.first().is_some_and(|a| a == "on"),
                _ => {}
            }
        }
        l
    }
}

/// Why certagent cannot manage the files `cert` and `key` as written, if it cannot.
fn unmanageable(cert: &str, key: Option<&String>) -> Vec<String> {
    let mut problems = Vec::new();
    if cert.contains('$') || key.is_some_and(|k| k.contains('$')) {
        problems.push(format!(
            "ssl_certificate {cert:?} uses variables: nginx reads such files at every handshake; name the files directly to let certagent manage them"
        ));
    }
    if cert.starts_with("data:") || key.is_some_and(|k| k.starts_with("data:")) {
        problems.push("the certificate or key is inline (data:); nothing to manage".into());
    }
    problems
}

fn read_server(
    body: &[Directive],
    source: &Source,
    inherited: &Pairs,
    conf_dir: &Path,
    scan: &mut Scan,
) {
    let Listening {
        names,
        listens,
        ssl_on,
        ssl_listen,
    } = Listening::read(body);
    let own = Pairs::read(body);
    let pairs = if own.certs.is_empty() {
        if !ssl_listen {
            return; // a plain-HTTP server
        }
        inherited.clone()
    } else {
        own
    };
    if !ssl_listen && !ssl_on {
        return;
    }
    let addresses: Vec<String> = listens
        .iter()
        .filter(|(_, ssl)| *ssl || ssl_on)
        .filter_map(|(a, _)| probe_address(a, 443))
        .collect();
    for (i, (cert, cert_source)) in pairs.certs.iter().enumerate() {
        let key = pairs.keys.get(i);
        let mut site = Site::new(source.clone());
        site.server_names = names.clone();
        site.addresses = addresses.clone();
        site.directive = cert_source.clone();
        site.problems.extend(unmanageable(cert, key));
        site.cert_file = normalize(&conf_dir.join(cert));
        site.key_file = key.map(|k| normalize(&conf_dir.join(k)));
        if site.key_file.is_none() {
            site.problems
                .push("no ssl_certificate_key for this ssl_certificate".into());
        }
        scan.sites.push(site);
    }
}

/// The compiled-in configuration path of the nginx in PATH (`nginx -V`), if it says.
pub(crate) fn default_conf() -> Option<PathBuf> {
    let (_, stderr) =
        crate::child::stderr_tail(crate::child::std_command("nginx").arg("-V")).ok()?;
    let text = String::from_utf8_lossy(&stderr).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("--conf-path="))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_cycles_are_reported_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("nginx.conf");
        // Twice: before cycles were detected, each level doubled the work (2^16 reads).
        std::fs::write(
            &conf,
            "include nginx.conf;\ninclude a.conf;\ninclude nginx.conf;\n",
        )
        .unwrap();
        std::fs::write(tmp.path().join("a.conf"), "include b.conf;\n").unwrap();
        std::fs::write(tmp.path().join("b.conf"), "include ./a.conf;\n").unwrap();
        let mut s = Scan::default();
        scan(&conf, &mut s);
        let q = |name: &str| format!("{:?}", tmp.path().join(name).display().to_string());
        let main_cycle = format!(
            "nginx: include cycle {} -> {}; not followed",
            q("nginx.conf"),
            q("nginx.conf")
        );
        assert_eq!(
            s.problems,
            vec![
                main_cycle.clone(),
                format!(
                    "nginx: include cycle {} -> {} -> {}; not followed",
                    q("a.conf"),
                    q("b.conf"),
                    q("a.conf")
                ),
                main_cycle,
            ]
        );
        assert_eq!(s.files.len(), 3, "{:?}", s.files);
    }

    #[test]
    fn an_include_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("nginx.conf");
        std::fs::write(&conf, "include pipe.conf;\n").unwrap();
        let pipe = tmp.path().join("pipe.conf");
        nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut s = Scan::default();
            scan(&conf, &mut s);
            let _ = tx.send(s.problems);
        });
        // Generous: a hang (blocked in open(2) on the FIFO) is what this catches.
        let problems = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("discover blocked on a FIFO include");
        assert_eq!(
            problems,
            vec![format!(
                "nginx: failed to read {:?}: not a regular file (a FIFO)",
                pipe.display().to_string()
            )]
        );
    }

    #[test]
    fn tokens_keep_quotes_comments_and_lines_apart() {
        let t = tokenize("a 'b c' \"d;e\"; # x { y\nserver {\n  f\\ g;\n}\n").unwrap();
        let words: Vec<(String, usize)> = t
            .iter()
            .map(|(t, l)| {
                let s = match t {
                    Token::Word(w) => w.clone(),
                    Token::Open => "{".into(),
                    Token::Close => "}".into(),
                    Token::End => ";".into(),
                };
                (s, *l)
            })
            .collect();
        let want: Vec<(String, usize)> = [
            ("a", 1),
            ("b c", 1),
            ("d;e", 1),
            (";", 1),
            ("server", 2),
            ("{", 2),
            ("f g", 3),
            (";", 3),
            ("}", 4),
        ]
        .iter()
        .map(|(s, l)| (s.to_string(), *l))
        .collect();
        assert_eq!(words, want);
        assert_eq!(
            tokenize("a \"b;").unwrap_err(),
            "unterminated quote starting on line 1"
        );
    }

    #[test]
    fn unbalanced_braces_are_reported() {
        let file = Path::new("/x.conf");
        let e = parse(&tokenize("http {\n").unwrap(), file).unwrap_err();
        assert_eq!(e, "unexpected end of file, expecting \"}\"");
        let e = parse(&tokenize("}\n").unwrap(), file).unwrap_err();
        assert_eq!(e, "unexpected \"}\" on line 1");
    }
}
