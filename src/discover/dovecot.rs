//! Dovecot's dovecot.conf with its `!include` and `!include_try` files (globs, relative to
//! the including file): `ssl_cert = </path` and `ssl_key = </path` (2.4:
//! `ssl_server_cert_file`, `ssl_server_key_file`) at the top level and in `local_name NAME`
//! blocks, `ssl = no`, and `protocols` for the endpoints: IMAP 143 (STARTTLS) and 993, POP3
//! 110 (STARTTLS) and 995.

use super::*;

/// Include nesting deeper than this is not followed.
const MAX_DEPTH: usize = 16;

/// The Dovecot configuration, when it is a target.
pub(super) fn server_scan(targets: &Targets) -> Option<ServerScan> {
    let conf = targets.dovecot_conf.as_ref()?;
    let mut scan = Scan::default();
    read(conf, &mut scan);
    let shown = conf.display().to_string();
    let (test, reload) = match targets.explicit {
        true => (
            argv(&["doveconf", "-c", &shown, "-n"]),
            argv(&["doveadm", "-c", &shown, "reload"]),
        ),
        false => (argv(&["doveconf", "-n"]), argv(&["doveadm", "reload"])),
    };
    Some(ServerScan {
        name: "dovecot",
        kind: ServerKind::Command,
        conf: conf.clone(),
        test_command: Some(test),
        reload_command: Some(reload),
        scan,
    })
}

/// What the files say, in order.
#[derive(Default)]
struct Settings {
    /// `ssl = no`.
    ssl_off: bool,
    /// The protocols, when `protocols` is set.
    protocols: Option<Vec<String>>,
    /// The top level's certificate and key, with where the certificate was set.
    main: Pair,
    /// `local_name NAME { ... }` blocks with their own certificate.
    local: Vec<(String, Pair)>,
    /// `port` of `inet_listener imap|imaps|pop3|pop3s` in a `service` (0: off).
    ports: Vec<(String, u16)>,
}

#[derive(Default, Clone)]
struct Pair {
    cert: Option<(PathBuf, Source)>,
    key: Option<PathBuf>,
}

/// Read dovecot.conf and its includes into `scan`: a site for the top-level certificate and
/// one for each `local_name` with its own.
pub(super) fn read(conf: &Path, scan: &mut Scan) {
    let mut settings = Settings::default();
    let mut blocks: Vec<String> = Vec::new();
    load(conf, 0, &mut blocks, &mut settings, scan);
    if settings.ssl_off {
        return;
    }
    let protocols = settings
        .protocols
        .unwrap_or_else(|| vec!["imap".into(), "pop3".into()]);
    let port = |listener: &str, default: u16| {
        settings
            .ports
            .iter()
            .rev()
            .find(|(l, _)| l == listener)
            .map_or(default, |(_, p)| *p)
    };
    let mut starttls = Vec::new();
    let mut addresses = Vec::new();
    for p in &protocols {
        let (plain, tls, upgrade) = match p.as_str() {
            "imap" => (port("imap", 143), port("imaps", 993), Starttls::Imap),
            "pop3" => (port("pop3", 110), port("pop3s", 995), Starttls::Pop3),
            _ => continue,
        };
        if plain != 0 {
            starttls.push((format!("127.0.0.1:{plain}"), upgrade));
        }
        if tls != 0 {
            addresses.push(format!("127.0.0.1:{tls}"));
        }
    }
    let pairs = [(None, settings.main)]
        .into_iter()
        .chain(settings.local.into_iter().map(|(n, p)| (Some(n), p)));
    for (name, pair) in pairs {
        let Some((cert, source)) = pair.cert else {
            continue;
        };
        let mut s = Site::new(source);
        s.cert_file = cert;
        s.key_file = pair.key;
        if s.key_file.is_none() {
            s.problems
                .push("no ssl_key next to the ssl_cert: name the key file".into());
        }
        s.server_names.extend(name);
        s.starttls = starttls.clone();
        s.addresses = addresses.clone();
        scan.sites.push(s);
    }
}

/// One file's settings, its includes read where they stand.
fn load(file: &Path, depth: usize, blocks: &mut Vec<String>, set: &mut Settings, scan: &mut Scan) {
    if depth > MAX_DEPTH {
        return scan.problem(format!(
            "dovecot: {:?}: includes nested deeper than {MAX_DEPTH}; not followed",
            file.display().to_string()
        ));
    }
    let text = match read_text(file) {
        Ok(t) => t,
        Err(e) => return scan.problem(format!("dovecot: {e}")),
    };
    if let Err(cycle) = scan.enter(file) {
        return scan.problem(format!("dovecot: {cycle}"));
    }
    scan.files.push(file.to_path_buf());
    let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        let source = Source::new(file, i + 1);
        if let Some(rest) = line
            .strip_prefix("!include_try ")
            .map(|r| (r, true))
            .or_else(|| line.strip_prefix("!include ").map(|r| (r, false)))
        {
            include(&dir, rest, &source, depth, blocks, set, scan);
        } else if line == "}" {
            blocks.pop();
        } else if let Some(head) = line.strip_suffix('{') {
            blocks.push(head.trim().to_string());
        } else if let Some((k, v)) = line.split_once('=') {
            setting(k.trim(), v.trim(), &dir, source, blocks, set);
        }
    }
    scan.leave();
}

/// `!include[_try] PATTERN`, relative to the including file's directory.
fn include(
    dir: &Path,
    (pattern, optional): (&str, bool),
    source: &Source,
    depth: usize,
    blocks: &mut Vec<String>,
    set: &mut Settings,
    scan: &mut Scan,
) {
    let pattern = normalize(&dir.join(pattern.trim().trim_matches('"')));
    let files = if has_glob(&pattern) {
        expand_glob(&pattern)
    } else {
        vec![pattern.clone()]
            .into_iter()
            .filter(|p| p.exists())
            .collect()
    };
    if files.is_empty() && !optional && !has_glob(&pattern) {
        scan.problem(format!(
            "dovecot: {source}: include {:?} does not exist",
            pattern.display().to_string()
        ));
    }
    for f in files {
        load(&f, depth + 1, blocks, set, scan);
    }
}

/// A line without its `#` comment (outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// One `key = value` inside the current blocks.
fn setting(k: &str, v: &str, dir: &Path, source: Source, blocks: &[String], set: &mut Settings) {
    let v = v.trim_matches('"');
    if let [service, listener] = blocks
        && service.starts_with("service ")
        && k == "port"
        && let Some(name) = listener.strip_prefix("inet_listener ")
        && let Ok(port) = v.parse::<u16>()
    {
        set.ports.push((name.trim().to_string(), port));
        return;
    }
    let file = || normalize(&dir.join(v.strip_prefix('<').unwrap_or(v).trim()));
    let pair = match blocks {
        [] => &mut set.main,
        [b] if b.starts_with("local_name ") => {
            let name = b["local_name ".len()..].trim().to_string();
            let i = match set.local.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    set.local.push((name, Pair::default()));
                    set.local.len() - 1
                }
            };
            &mut set.local[i].1
        }
        _ => return,
    };
    match k {
        "ssl_cert" | "ssl_server_cert_file" => pair.cert = Some((file(), source)),
        "ssl_key" | "ssl_server_key_file" => pair.key = Some(file()),
        "ssl" if blocks.is_empty() => set.ssl_off = v == "no",
        "protocols" if blocks.is_empty() => {
            let before = set.protocols.take().unwrap_or_default();
            let mut now = Vec::new();
            for p in v.split_whitespace() {
                match p {
                    "$protocols" | "${protocols}" => now.extend(before.iter().cloned()),
                    p => now.push(p.to_string()),
                }
            }
            set.protocols = Some(now);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_and_protocols_are_read_through_includes() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("conf.d")).unwrap();
        let conf = d.join("dovecot.conf");
        std::fs::write(
            &conf,
            "protocols = imap # no pop3\n!include conf.d/*.conf\n!include_try missing.conf\n",
        )
        .unwrap();
        std::fs::write(
            d.join("conf.d/10-ssl.conf"),
            "ssl = required\nssl_cert = </etc/dovecot/private/mail.pem\nssl_key = </etc/dovecot/private/mail.key\nprotocol imap {\n  ssl_cert = </ignored.pem\n}\nlocal_name other.test {\n  ssl_cert = <other.pem\n  ssl_key = <other.key\n}\n",
        )
        .unwrap();
        std::fs::write(
            d.join("conf.d/20-lmtp.conf"),
            "protocols = $protocols lmtp\n",
        )
        .unwrap();
        let mut scan = Scan::default();
        read(&conf, &mut scan);
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(
            scan.files,
            [
                conf.clone(),
                d.join("conf.d/10-ssl.conf"),
                d.join("conf.d/20-lmtp.conf")
            ]
        );
        let [main, other] = scan.sites.as_slice() else {
            panic!("{:?}", scan.sites)
        };
        assert_eq!(main.cert_file, Path::new("/etc/dovecot/private/mail.pem"));
        assert_eq!(
            main.key_file.as_deref(),
            Some(Path::new("/etc/dovecot/private/mail.key"))
        );
        assert_eq!(
            main.directive,
            Source::new(&d.join("conf.d/10-ssl.conf"), 2)
        );
        assert_eq!(
            main.starttls,
            [("127.0.0.1:143".to_string(), Starttls::Imap)]
        );
        assert_eq!(main.addresses, ["127.0.0.1:993"]);
        assert_eq!(other.cert_file, d.join("conf.d/other.pem"));
        assert_eq!(other.server_names, ["other.test"]);

        // ssl = no: nothing is served over TLS.
        std::fs::write(d.join("conf.d/30-off.conf"), "ssl = no\n").unwrap();
        let mut scan = Scan::default();
        read(&conf, &mut scan);
        assert!(scan.sites.is_empty());
    }

    #[test]
    fn without_protocols_imap_and_pop3_are_probed_and_a_missing_include_is_a_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("dovecot.conf");
        std::fs::write(
            &conf,
            "!include nope.conf\nssl_cert = </c.pem\nssl_key = </c.key\n",
        )
        .unwrap();
        let mut scan = Scan::default();
        read(&conf, &mut scan);
        assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
        assert!(scan.problems[0].ends_with("nope.conf\" does not exist"));
        let [s] = scan.sites.as_slice() else {
            panic!("{:?}", scan.sites)
        };
        assert_eq!(
            s.starttls,
            [
                ("127.0.0.1:143".to_string(), Starttls::Imap),
                ("127.0.0.1:110".to_string(), Starttls::Pop3)
            ]
        );
        assert_eq!(s.addresses, ["127.0.0.1:993", "127.0.0.1:995"]);
    }
}
