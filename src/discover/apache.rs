//! Reading an Apache configuration the way httpd does: one directive per line (a trailing
//! backslash continues it), `Include` / `IncludeOptional` with glob patterns and directories,
//! relative paths against `ServerRoot`, `Define` and `${VAR}`, `<VirtualHost>` sections.
//! Conditional sections (`<IfModule>`, `<IfDefine>`, ...) are read as if they applied:
//! `discover` reports what could be served, and says where each directive is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Scan, Site, Source, expand_glob, normalize, probe_address};

/// Configs nest includes a few levels deep; more means a loop.
const MAX_DEPTH: usize = 16;

/// The TLS directives of one context (the main server or a virtual host).
#[derive(Clone, Default)]
struct Tls {
    engine: Option<bool>,
    cert: Option<(String, Source)>,
    key: Option<String>,
}

struct VirtualHost {
    source: Source,
    addresses: Vec<String>,
    names: Vec<String>,
    tls: Tls,
}

struct Reader<'s> {
    scan: &'s mut Scan,
    root: PathBuf,
    defines: HashMap<String, String>,
    /// Debian's `envvars` (what apache2ctl exports before it runs apache2).
    envvars: HashMap<String, String>,
    main: Tls,
    vhost: Option<VirtualHost>,
    vhosts: Vec<VirtualHost>,
    pid_file: Option<String>,
    runtime_dir: Option<String>,
}

/// Split a directive line into words; double and single quotes group, backslash escapes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' || c == '\'' {
            chars.next();
            while let Some(c2) = chars.next() {
                match c2 {
                    '\\' => word.extend(chars.next()),
                    q if q == c => break,
                    other => word.push(other),
                }
            }
        } else {
            while let Some(&c2) = chars.peek() {
                if c2.is_whitespace() {
                    break;
                }
                word.push(c2);
                chars.next();
            }
        }
        out.push(word);
    }
    out
}

impl Reader<'_> {
    /// `${NAME}` from `Define`, else from the environment; unknown ones are left as they are.
    fn substitute(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    match self
                        .defines
                        .get(name)
                        .or_else(|| self.envvars.get(name))
                        .cloned()
                        .or_else(|| std::env::var(name).ok())
                    {
                        Some(v) => out.push_str(&v),
                        None => out.push_str(&rest[start..start + 3 + end]),
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn resolve(&self, p: &str) -> PathBuf {
        normalize(&self.root.join(p))
    }

    fn file(&mut self, path: &Path, depth: usize) {
        if depth > MAX_DEPTH {
            self.scan.problem(format!(
                "apache: {:?}: includes nest deeper than {MAX_DEPTH} levels; not followed",
                path.display().to_string()
            ));
            return;
        }
        let text = match super::read_text(path) {
            Ok(t) => t,
            Err(e) => {
                self.scan.problem(format!("apache: {e}"));
                return;
            }
        };
        if let Err(cycle) = self.scan.enter(path) {
            self.scan.problem(format!("apache: {cycle}"));
            return;
        }
        self.scan.files.push(path.to_path_buf());
        for (line, text) in logical_lines(&text) {
            self.directive(&text, Source::new(path, line), depth);
        }
        self.scan.leave();
    }

    fn directive(&mut self, line: &str, source: Source, depth: usize) {
        let line = self.substitute(line);
        if let Some(section) = line.strip_prefix('<') {
            self.section(section.trim_end_matches('>'), source);
            return;
        }
        let w = words(&line);
        let Some((name, args)) = w.split_first() else {
            return;
        };
        let first = args.first().cloned().unwrap_or_default();
        match name.to_ascii_lowercase().as_str() {
            "serverroot" if !first.is_empty() => self.root = PathBuf::from(&first),
            "define" if !first.is_empty() => {
                let value = args.get(1).cloned().unwrap_or_default();
                self.defines.insert(first, value);
            }
            "include" | "includeoptional" => {
                let optional = name.eq_ignore_ascii_case("includeoptional");
                self.include(&first, optional, &source, depth);
            }
            "servername" => {
                if let Some(v) = self.vhost.as_mut() {
                    v.names
                        .insert(0, server_name_host(&first).to_ascii_lowercase());
                }
            }
            "serveralias" => {
                if let Some(v) = self.vhost.as_mut() {
                    v.names.extend(args.iter().map(|a| a.to_ascii_lowercase()));
                }
            }
            "pidfile" if !first.is_empty() => self.pid_file = Some(first),
            "defaultruntimedir" if !first.is_empty() => self.runtime_dir = Some(first),
            "sslengine" | "sslcertificatefile" | "sslcertificatekeyfile" => {
                self.tls(name, first, source)
            }
            _ => {}
        }
    }

    /// A `<Section ...>` line: `<VirtualHost>` opens a virtual host, `</VirtualHost>` closes
    /// it; other sections are read through.
    fn section(&mut self, section: &str, source: Source) {
        let mut w = words(section);
        if w.is_empty() {
            return;
        }
        let name = w.remove(0).to_ascii_lowercase();
        match name.as_str() {
            "virtualhost" => {
                self.vhost = Some(VirtualHost {
                    source,
                    addresses: w,
                    names: Vec::new(),
                    tls: Tls::default(),
                });
            }
            "/virtualhost" => {
                if let Some(v) = self.vhost.take() {
                    self.vhosts.push(v);
                }
            }
            _ => {} // conditional and location sections: read through
        }
    }

    /// `Include` (or `IncludeOptional`) `pattern`: a file, a directory or a glob, read in
    /// place.
    fn include(&mut self, pattern: &str, optional: bool, source: &Source, depth: usize) {
        let pattern = self.resolve(pattern);
        let mut files = expand_glob(&pattern);
        if files.len() == 1 && files[0].is_dir() {
            files = super::files_under(&files[0]);
        }
        if files.is_empty() && !optional && !super::has_glob(&pattern) {
            self.scan.problem(format!(
                "apache: {source}: Include {:?} does not exist",
                pattern.display().to_string()
            ));
        }
        for f in files {
            self.file(&f, depth + 1);
        }
    }

    /// `SSLEngine`, `SSLCertificateFile` or `SSLCertificateKeyFile` (`name`), for the open
    /// virtual host or else the main server.
    fn tls(&mut self, name: &str, first: String, source: Source) {
        let tls = match self.vhost.as_mut() {
            Some(v) => &mut v.tls,
            None => &mut self.main,
        };
        match name.to_ascii_lowercase().as_str() {
            "sslengine" => tls.engine = Some(first.eq_ignore_ascii_case("on")),
            "sslcertificatefile" => tls.cert = Some((first, source)),
            _ => tls.key = Some(first),
        }
    }

    /// Where the PidFile is, once every file is read; a problem when only the binary knows.
    fn settle_pid_file(&mut self) {
        // A relative PidFile is relative to DefaultRuntimeDir, itself relative to ServerRoot;
        // without one the compiled-in default applies, which only the binary knows.
        match (self.pid_file.clone(), self.runtime_dir.clone()) {
            (Some(p), _) if p.contains("${") => self.scan.problem(format!(
                "apache: PidFile {p:?} uses a variable that is not defined here; set pid_file in [server.apache]"
            )),
            (Some(p), _) if Path::new(&p).is_absolute() => self.scan.pid_file = Some(normalize(Path::new(&p))),
            (Some(p), Some(dir)) => self.scan.pid_file = Some(self.resolve(&dir).join(p)),
            (Some(p), None) => self.scan.problem(format!(
                "apache: PidFile {p:?} is relative and there is no DefaultRuntimeDir; set pid_file in [server.apache]"
            )),
            (None, _) => {}
        }
    }

    /// A site for each virtual host with TLS on, with the main server's TLS settings as
    /// defaults.
    fn add_sites(&mut self) {
        let main = self.main.clone();
        let vhosts = std::mem::take(&mut self.vhosts);
        for v in vhosts {
            let engine = v.tls.engine.or(main.engine).unwrap_or(false);
            if !engine {
                continue;
            }
            let Some((cert, directive)) = v.tls.cert.clone().or(main.cert.clone()) else {
                self.scan.problem(format!(
                    "apache: {}: SSLEngine on without SSLCertificateFile",
                    v.source
                ));
                continue;
            };
            let key = v.tls.key.clone().or(main.key.clone());
            let mut site = Site::new(v.source.clone());
            site.directive = directive;
            site.server_names = v.names.clone();
            site.addresses = v
                .addresses
                .iter()
                .filter_map(|a| probe_address(a, 443))
                .collect();
            site.cert_file = self.resolve(&cert);
            site.key_file = key.as_deref().map(|k| self.resolve(k));
            if cert.contains("${") || key.as_deref().is_some_and(|k| k.contains("${")) {
                site.problems.push(format!(
                    "SSLCertificateFile {cert:?} uses a variable that is not defined here"
                ));
            }
            if site.key_file.is_none() {
                site.problems.push(
                    "no SSLCertificateKeyFile: the key is in the certificate file; certagent needs them in separate files"
                        .into(),
                );
            }
            self.scan.sites.push(site);
        }
    }
}

/// The directives of a file with the line each starts on: continuation lines (`\\` at the
/// end) joined, blank lines and comments left out.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    let mut first_line = 0;
    for (i, raw) in text.lines().enumerate() {
        if pending.is_empty() {
            first_line = i + 1;
        }
        if let Some(cont) = raw.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(raw);
        let line = std::mem::take(&mut pending);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push((first_line, line.to_string()));
    }
    out
}

/// The `export NAME=VALUE` lines of Debian's `envvars` shell fragment, with `$NAME` and
/// `${NAME}` expanded from earlier lines (anything else, like `$SUFFIX` of a secondary
/// instance, expands to nothing, as it does for the default instance).
fn read_envvars(text: &str) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let Some((name, value)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|l| l.split_once('='))
        else {
            continue;
        };
        let value = value.trim().trim_matches(['"', '\'']);
        let mut out = String::new();
        let mut chars = value.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '$' {
                out.push(c);
                continue;
            }
            let braced = chars.peek() == Some(&'{');
            if braced {
                chars.next();
            }
            let mut var = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    var.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if braced && chars.peek() == Some(&'}') {
                chars.next();
            }
            out.push_str(vars.get(&var).map(String::as_str).unwrap_or(""));
        }
        vars.insert(name.trim().to_string(), out);
    }
    vars
}

/// Scan the Apache configuration whose main file is `conf`, with `root` as ServerRoot.
pub(crate) fn scan(root: &Path, conf: &Path, scan: &mut Scan) {
    let envvars = super::read_text(&root.join("envvars"))
        .map(|t| read_envvars(&t))
        .unwrap_or_default();
    let mut r = Reader {
        scan,
        root: root.to_path_buf(),
        defines: HashMap::new(),
        envvars,
        main: Tls::default(),
        vhost: None,
        vhosts: Vec::new(),
        pid_file: None,
        runtime_dir: None,
    };
    r.file(conf, 0);
    r.settle_pid_file();
    if let Some(open) = r.vhost.take() {
        r.scan.problem(format!(
            "apache: {}: <VirtualHost> is never closed",
            open.source
        ));
    }
    r.add_sites();
}

/// The host of a `ServerName`, which may name scheme and port too
/// ("https://www.example.com:443"); an IPv6 address is bare or in brackets ("[2001:db8::1]:443").
fn server_name_host(arg: &str) -> &str {
    let host = arg.rsplit("://").next().unwrap_or(arg);
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return host;
    }
    host.split(':').next().unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_hosts_drop_scheme_and_port_but_keep_ipv6_addresses_whole() {
        for (arg, host) in [
            ("www.example.com", "www.example.com"),
            ("https://www.example.com:443", "www.example.com"),
            ("192.0.2.10:443", "192.0.2.10"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("https://[::1]", "::1"),
        ] {
            assert_eq!(server_name_host(arg), host, "{arg}");
        }
    }

    #[test]
    fn a_file_that_includes_itself_is_reported_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("httpd.conf");
        std::fs::write(
            &conf,
            "Include httpd.conf\nIncludeOptional conf.d/*.conf\nInclude httpd.conf\n",
        )
        .unwrap();
        std::fs::create_dir(tmp.path().join("conf.d")).unwrap();
        std::fs::write(tmp.path().join("conf.d/x.conf"), "Include conf.d\n").unwrap();
        let mut s = Scan::default();
        scan(tmp.path(), &conf, &mut s);
        let q = |name: &str| format!("{:?}", tmp.path().join(name).display().to_string());
        let main_cycle = format!(
            "apache: include cycle {} -> {}; not followed",
            q("httpd.conf"),
            q("httpd.conf")
        );
        assert_eq!(
            s.problems,
            vec![
                main_cycle.clone(),
                format!(
                    "apache: include cycle {} -> {}; not followed",
                    q("conf.d/x.conf"),
                    q("conf.d/x.conf")
                ),
                main_cycle,
            ]
        );
    }

    #[test]
    fn debian_envvars_are_read_like_the_shell_would() {
        let vars = read_envvars(
            "unset HOME\nexport APACHE_RUN_DIR=/var/run/apache2$SUFFIX\nexport APACHE_PID_FILE=${APACHE_RUN_DIR}/apache2.pid\nexport LANG=C\n",
        );
        assert_eq!(vars["APACHE_PID_FILE"], "/var/run/apache2/apache2.pid");
        assert_eq!(vars.len(), 3);
    }

    #[test]
    fn words_group_quotes() {
        assert_eq!(
            words(r#"SSLCertificateFile "/etc/ssl/a b.pem"  'x' y\"z"#),
            ["SSLCertificateFile", "/etc/ssl/a b.pem", "x", "y\\\"z"]
        );
    }
}
