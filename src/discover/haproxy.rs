//! HAProxy's haproxy.cfg: `bind ADDR ssl crt PATH` and `crt-list FILE` in `frontend` and
//! `listen` sections, where PATH is a PEM with key, leaf and chain (certagent's
//! `bundle_file`) or a directory of them; `crt-base`, `pidfile` and the runtime API's
//! `stats socket PATH level admin` in `global`.

use super::*;

/// Companion files HAProxy skips when it loads a `crt` directory.
const SKIPPED_IN_DIR: [&str; 4] = [".key", ".ocsp", ".issuer", ".sctl"];

/// Lines in a `crt-list` at most (a list longer than this is not read further).
const MAX_CRT_LIST_LINES: usize = 10_000;

/// The HAProxy configuration, when it is a target.
pub(super) fn server_scan(targets: &Targets) -> Option<ServerScan> {
    let conf = targets.haproxy_conf.as_ref()?;
    let mut scan = Scan::default();
    read(conf, &mut scan);
    let test_command = targets.explicit.then(|| {
        let mut a = argv(&["haproxy", "-c", "-q", "-f"]);
        a.push(conf.display().to_string());
        a
    });
    Some(ServerScan {
        name: "haproxy",
        kind: ServerKind::Haproxy,
        conf: conf.clone(),
        test_command,
        reload_command: None,
        scan,
    })
}

/// A line's words, without its comment; quotes removed.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') => break,
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    any = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (_, c) => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

const SECTIONS: [&str; 13] = [
    "global",
    "defaults",
    "frontend",
    "listen",
    "backend",
    "peers",
    "resolvers",
    "userlist",
    "program",
    "http-errors",
    "ring",
    "cache",
    "mailers",
];

/// One `bind` with TLS: where, and the `crt`/`crt-list` arguments in order.
struct Bind {
    source: Source,
    addresses: Vec<String>,
    crts: Vec<String>,
    crt_lists: Vec<String>,
}

/// Read haproxy.cfg into `scan`: one site per PEM a TLS bind serves.
pub(super) fn read(conf: &Path, scan: &mut Scan) {
    let text = match read_text(conf) {
        Ok(t) => t,
        Err(e) => return scan.problem(format!("haproxy: {e}")),
    };
    scan.files.push(conf.to_path_buf());
    let conf_dir = conf.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut section = String::new();
    let mut crt_base: Option<PathBuf> = None;
    let mut binds = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let w = words(line);
        let Some(first) = w.first() else { continue };
        let source = Source::new(conf, i + 1);
        if SECTIONS.contains(&first.as_str()) {
            section = first.clone();
            continue;
        }
        match (section.as_str(), first.as_str()) {
            ("global", "crt-base") => crt_base = w.get(1).map(|d| conf_dir.join(d)),
            ("global", "pidfile") => scan.pid_file = w.get(1).map(|p| conf_dir.join(p)),
            ("global", "stats") if w.get(1).map(String::as_str) == Some("socket") => {
                let admin = w.windows(2).any(|p| p[0] == "level" && p[1] == "admin");
                let path = w.get(2).map(|p| p.strip_prefix("unix@").unwrap_or(p));
                if let (true, Some(p)) = (admin, path)
                    && p.starts_with('/')
                {
                    scan.runtime_socket = Some(PathBuf::from(p));
                }
            }
            ("frontend" | "listen", "bind") => {
                if let Some(b) = read_bind(&w, source) {
                    binds.push(b);
                }
            }
            _ => {}
        }
    }
    let base = crt_base.unwrap_or(conf_dir);
    for b in binds {
        for crt in &b.crts {
            let path = normalize(&base.join(crt));
            if path.is_dir() {
                for pem in pems_in(&path) {
                    scan.sites.push(site(&pem, true, &b, Vec::new()));
                }
            } else {
                scan.sites.push(site(&path, false, &b, Vec::new()));
            }
        }
        for list in &b.crt_lists {
            let list = normalize(&base.join(list));
            read_crt_list(&list, &base, &b, scan);
        }
    }
}

/// A `bind` line's addresses and certificates; `None` unless it has `ssl`.
fn read_bind(w: &[String], source: Source) -> Option<Bind> {
    if !w.iter().any(|x| x == "ssl") {
        return None;
    }
    let addresses = w
        .get(1)?
        .split(',')
        .filter_map(|a| {
            let a = a
                .strip_prefix("ipv4@")
                .or_else(|| a.strip_prefix("ipv6@"))
                .or_else(|| a.strip_prefix("tcp@"))
                .unwrap_or(a);
            if a.contains('@') || a.starts_with('/') {
                return None;
            }
            probe_address(a, 443)
        })
        .collect();
    let mut crts = Vec::new();
    let mut crt_lists = Vec::new();
    for p in w.windows(2) {
        match p[0].as_str() {
            "crt" => crts.push(p[1].clone()),
            "crt-list" => crt_lists.push(p[1].clone()),
            _ => {}
        }
    }
    Some(Bind {
        source,
        addresses,
        crts,
        crt_lists,
    })
}

/// The certificate files HAProxy loads from a `crt` directory, sorted.
fn pems_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        // HAProxy loads a link to a PEM (certbot's live/ files) like the PEM.
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            !name.starts_with('.') && !SKIPPED_IN_DIR.iter().any(|s| name.ends_with(s))
        })
        .collect();
    out.sort();
    out
}

/// Each line of a crt-list: `PATH [options] [sni filters]`.
fn read_crt_list(list: &Path, base: &Path, b: &Bind, scan: &mut Scan) {
    let text = match read_text(list) {
        Ok(t) => t,
        Err(e) => return scan.problem(format!("haproxy: {}: crt-list: {e}", b.source)),
    };
    scan.files.push(list.to_path_buf());
    for (i, line) in text.lines().take(MAX_CRT_LIST_LINES).enumerate() {
        let w = words(line);
        let Some(path) = w.first() else { continue };
        let mut rest = w[1..].iter();
        let mut filters = Vec::new();
        let mut in_options = false;
        for x in rest.by_ref() {
            if x.starts_with('[') {
                in_options = true;
            }
            if in_options {
                in_options = !x.ends_with(']');
                continue;
            }
            if !x.starts_with('!') {
                filters.push(x.clone());
            }
        }
        let source = Source::new(list, i + 1);
        let bind = Bind {
            source,
            addresses: b.addresses.clone(),
            crts: Vec::new(),
            crt_lists: Vec::new(),
        };
        let pem = normalize(&base.join(path));
        scan.sites.push(site(&pem, false, &bind, filters));
    }
}

/// The site a PEM is: the bundle HAProxy reads, and beside it (for a `crt` directory, in the
/// directory above, where HAProxy does not load them) the separate leaf+chain and key files
/// certagent writes too: `NAME.crt` and `NAME.key` for `NAME.pem`.
fn site(pem: &Path, in_dir: bool, b: &Bind, server_names: Vec<String>) -> Site {
    let mut s = Site::new(b.source.clone());
    let dir = pem.parent().unwrap_or(Path::new("/"));
    let dir = if in_dir {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let name = pem.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".pem").unwrap_or(&name);
    s.cert_file = dir.join(format!("{stem}.crt"));
    s.key_file = Some(dir.join(format!("{stem}.key")));
    s.bundle_file = Some(pem.to_path_buf());
    s.addresses = b.addresses.clone();
    s.server_names = server_names;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_crt_directories_crt_lists_and_the_admin_socket_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("certs/dir")).unwrap();
        for f in ["dir/a.pem", "dir/a.pem.key", "dir/b.pem", "dir/.hidden.pem"] {
            std::fs::write(d.join("certs").join(f), "").unwrap();
        }
        // A link to a PEM elsewhere (certbot's live/) is loaded like the PEM.
        std::fs::write(d.join("elsewhere.pem"), "").unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere.pem"), d.join("certs/dir/link.pem")).unwrap();
        std::fs::write(
            d.join("list.txt"),
            "# comment\nlisted.pem [alpn h2 ocsp-update off] shop.test !*.other.test\n\n",
        )
        .unwrap();
        let conf = d.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n    crt-base {base}\n    stats socket /run/h/operator.sock level operator\n    stats socket unix@/run/h/admin.sock mode 600 level admin # runtime API\n\
                 defaults\n    mode http\n\
                 frontend web\n    bind :8443,127.0.0.2:9443 ssl crt one.pem crt dir\n    bind :80\n    bind \"[::]:443\" ssl crt-list {list}\n\
                 backend b\n    bind :1 ssl crt nope.pem\n",
                base = d.join("certs").display(),
                list = d.join("list.txt").display(),
            ),
        )
        .unwrap();
        let mut scan = Scan::default();
        read(&conf, &mut scan);
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(
            scan.runtime_socket,
            Some(PathBuf::from("/run/h/admin.sock"))
        );
        assert_eq!(scan.files, [conf.clone(), d.join("list.txt")]);
        type Row = (String, String, String, Vec<String>, Vec<String>);
        let got: Vec<Row> = scan
            .sites
            .iter()
            .map(|s| {
                (
                    s.bundle_file.as_ref().unwrap().display().to_string(),
                    s.cert_file.display().to_string(),
                    s.key_file.as_ref().unwrap().display().to_string(),
                    s.addresses.clone(),
                    s.server_names.clone(),
                )
            })
            .collect();
        let c = |p: &str| d.join(p).display().to_string();
        let front = vec!["127.0.0.1:8443".to_string(), "127.0.0.2:9443".into()];
        assert_eq!(
            got,
            [
                (
                    c("certs/one.pem"),
                    c("certs/one.crt"),
                    c("certs/one.key"),
                    front.clone(),
                    vec![]
                ),
                (
                    c("certs/dir/a.pem"),
                    c("certs/a.crt"),
                    c("certs/a.key"),
                    front.clone(),
                    vec![]
                ),
                (
                    c("certs/dir/b.pem"),
                    c("certs/b.crt"),
                    c("certs/b.key"),
                    front.clone(),
                    vec![]
                ),
                (
                    c("certs/dir/link.pem"),
                    c("certs/link.crt"),
                    c("certs/link.key"),
                    front,
                    vec![]
                ),
                (
                    c("certs/listed.pem"),
                    c("certs/listed.crt"),
                    c("certs/listed.key"),
                    vec!["[::1]:443".to_string()],
                    vec!["shop.test".to_string()]
                ),
            ]
        );
        assert_eq!(scan.sites[4].directive, Source::new(&d.join("list.txt"), 2));
    }
}
