//! Postfix's main.cf (`smtpd_tls_chain_files`, else `smtpd_tls_cert_file` and
//! `smtpd_tls_key_file`; simple `$name` references expanded) and the listeners of master.cf
//! beside it: `smtp` (25) and `submission` (587) speak STARTTLS, `smtps`/`submissions` (465)
//! TLS from the first byte, and so does any other `smtpd` on a numbered port with
//! `-o smtpd_tls_wrappermode=yes` (STARTTLS without). Other services are not read.

use std::collections::BTreeMap;

use super::*;

/// The Postfix configuration, when it is a target.
pub(super) fn server_scan(targets: &Targets) -> Option<ServerScan> {
    let conf = targets.postfix_conf.as_ref()?;
    let mut scan = Scan::default();
    read(conf, &mut scan);
    let dir = conf
        .parent()
        .unwrap_or(Path::new("/"))
        .display()
        .to_string();
    let postfix = |cmd: &str| match targets.explicit {
        true => argv(&["postfix", "-c", &dir, cmd]),
        false => argv(&["postfix", cmd]),
    };
    Some(ServerScan {
        name: "postfix",
        kind: ServerKind::Command,
        conf: conf.clone(),
        test_command: Some(postfix("check")),
        reload_command: Some(postfix("reload")),
        scan,
    })
}

/// Logical lines of a Postfix file: a line that starts with white space continues the one
/// before; `#` lines are comments. Each with the number of its first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match out.last_mut() {
            Some((_, last)) if line.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(trimmed);
            }
            _ => out.push((i + 1, trimmed.to_string())),
        }
    }
    out
}

/// main.cf's parameters with their line.
fn parameters(text: &str) -> BTreeMap<String, (String, usize)> {
    logical_lines(text)
        .into_iter()
        .filter_map(|(line, l)| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), (v.trim().to_string(), line)))
        })
        .collect()
}

/// `$name` and `${name}` replaced by the parameters' values (a few levels deep); unknown
/// names are left as they are.
fn expand(value: &str, params: &BTreeMap<String, (String, usize)>, depth: usize) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(b) => match b.find('}') {
                Some(j) => (&b[..j], &b[j + 1..]),
                None => ("", after),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        match params.get(name) {
            Some((v, _)) if depth < 8 && !name.is_empty() => {
                out.push_str(&expand(v, params, depth + 1))
            }
            _ => out.push_str(&rest[i..rest.len() - tail.len()]),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Read main.cf and master.cf beside it into `scan`: one site, the certificate smtpd serves.
pub(super) fn read(conf: &Path, scan: &mut Scan) {
    let text = match read_text(conf) {
        Ok(t) => t,
        Err(e) => return scan.problem(format!("postfix: {e}")),
    };
    scan.files.push(conf.to_path_buf());
    let dir = conf.parent().unwrap_or(Path::new("/"));
    let mut params = parameters(&text);
    params
        .entry("config_directory".into())
        .or_insert((dir.display().to_string(), 0));
    let get = |k: &str| {
        params
            .get(k)
            .map(|(v, line)| (expand(v, &params, 0), Source::new(conf, *line)))
            .filter(|(v, _)| !v.is_empty() && v != "none")
    };
    let list = |v: &str| -> Vec<PathBuf> {
        v.split([',', ' ', '\t'])
            .filter(|f| !f.is_empty())
            .map(|f| normalize(&dir.join(f)))
            .collect()
    };
    let mut site = if let Some((chain, source)) = get("smtpd_tls_chain_files") {
        let files = list(&chain);
        let mut s = Site::new(source.clone());
        match files.as_slice() {
            [bundle] => {
                let name = bundle.file_name().unwrap_or_default().to_string_lossy();
                let stem = name.strip_suffix(".pem").unwrap_or(&name);
                let parent = bundle.parent().unwrap_or(dir);
                s.cert_file = parent.join(format!("{stem}.crt"));
                s.key_file = Some(parent.join(format!("{stem}.key")));
                s.bundle_file = Some(bundle.clone());
            }
            [key, cert, more @ ..] => {
                s.cert_file = cert.clone();
                s.key_file = Some(key.clone());
                if !more.is_empty() {
                    scan.problem(format!("postfix: {source}: smtpd_tls_chain_files has more than one key and chain; only the first pair is managed"));
                }
            }
            [] => return,
        }
        s
    } else if let Some((cert, source)) = get("smtpd_tls_cert_file") {
        let mut s = Site::new(source);
        s.cert_file = normalize(&dir.join(&cert));
        let key = get("smtpd_tls_key_file")
            .map(|(k, _)| normalize(&dir.join(k)))
            .unwrap_or_else(|| s.cert_file.clone());
        if key == s.cert_file {
            s.problems.push(format!("smtpd_tls_key_file is the certificate file {:?}: certagent writes the key and the certificate to separate files; set smtpd_tls_key_file, or smtpd_tls_chain_files = key, certificate", cert));
        }
        s.key_file = Some(key);
        s
    } else {
        return;
    };
    let mut files: Vec<&PathBuf> = vec![&site.cert_file];
    files.extend(site.key_file.iter().chain(site.bundle_file.iter()));
    files.dedup();
    for p in files {
        if p.to_string_lossy().contains('$') {
            site.problems.push(format!("{:?} names a parameter discover cannot expand; name the file directly to let certagent manage it", p.display().to_string()));
        }
    }
    if let Some((host, _)) = get("myhostname") {
        site.server_names.push(host);
    }
    listeners(&dir.join("master.cf"), &mut site, scan);
    scan.sites.push(site);
}

/// The standard TLS listeners of master.cf: `smtp` and `submission` with STARTTLS, `smtps`
/// and `submissions` with TLS from the first byte.
fn listeners(master: &Path, site: &mut Site, scan: &mut Scan) {
    let text = match read_text(master) {
        Ok(t) => t,
        Err(e) => {
            scan.problem(format!(
                "postfix: {e}; assumed the default smtp service on port 25"
            ));
            site.starttls.push(("127.0.0.1:25".into(), Starttls::Smtp));
            return;
        }
    };
    scan.files.push(master.to_path_buf());
    for (_, line) in logical_lines(&text) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (Some(service), Some("inet"), Some(command)) =
            (w.first(), w.get(1).copied(), w.get(7).copied())
        else {
            continue;
        };
        let (host, port) = match service.rsplit_once(':') {
            Some((h, p)) => (h.trim_matches(['[', ']']), p),
            None => ("", *service),
        };
        // smtpd with -o smtpd_tls_wrappermode=yes speaks TLS from the first byte.
        let wrapper = w[8..]
            .windows(2)
            .any(|o| o[0] == "-o" && o[1].replace(' ', "") == "smtpd_tls_wrappermode=yes")
            || w[8..].contains(&"-osmtpd_tls_wrappermode=yes");
        let (number, starttls) = match (port, command) {
            ("smtp" | "25", "smtpd" | "postscreen") => (25, !wrapper),
            ("submission" | "587", "smtpd") => (587, !wrapper),
            ("smtps" | "submissions" | "465", "smtpd") => (465, false),
            (n, "smtpd") => match n.parse::<u16>() {
                Ok(n) => (n, !wrapper),
                Err(_) => continue,
            },
            _ => continue,
        };
        let listen = match host {
            "" => number.to_string(),
            h if h.contains(':') => format!("[{h}]:{number}"),
            h => format!("{h}:{number}"),
        };
        let Some(address) = probe_address(&listen, number) else {
            continue;
        };
        match starttls {
            true if !site.starttls.iter().any(|(a, _)| *a == address) => {
                site.starttls.push((address, Starttls::Smtp))
            }
            false if !site.addresses.contains(&address) => site.addresses.push(address),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_cf_files_and_master_cf_listeners_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let conf = d.join("main.cf");
        std::fs::write(
            &conf,
            "# TLS\ntls_dir = /etc/mail/tls\nmyhostname = mx.example.test\nsmtpd_tls_chain_files =\n    ${tls_dir}/mx.key,\n    $tls_dir/mx.pem\nsmtpd_tls_cert_file = /ignored.pem\n",
        )
        .unwrap();
        std::fs::write(
            d.join("master.cf"),
            "# service type private unpriv chroot wakeup maxproc command\nsmtp      inet  n       -       y       -       -       smtpd\nsubmission inet n       -       y       -       -       smtpd\n  -o smtpd_tls_security_level=encrypt\n127.0.0.1:submissions inet n - y - - smtpd\n  -o smtpd_tls_wrappermode=yes\npickup    unix  n       -       y       60      1       pickup\n2525      inet  n       -       y       -       -       smtpd\n127.0.0.1:4465 inet n - y - - smtpd -o smtpd_tls_wrappermode=yes\nrelay     inet  n       -       y       -       -       smtpd\n",
        )
        .unwrap();
        let mut scan = Scan::default();
        read(&conf, &mut scan);
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(scan.files, [conf.clone(), d.join("master.cf")]);
        let [s] = scan.sites.as_slice() else {
            panic!("{:?}", scan.sites)
        };
        assert_eq!(s.cert_file, Path::new("/etc/mail/tls/mx.pem"));
        assert_eq!(
            s.key_file.as_deref(),
            Some(Path::new("/etc/mail/tls/mx.key"))
        );
        assert_eq!(s.directive, Source::new(&conf, 4));
        assert_eq!(s.server_names, ["mx.example.test"]);
        assert_eq!(
            s.starttls,
            [
                ("127.0.0.1:25".to_string(), Starttls::Smtp),
                ("127.0.0.1:587".to_string(), Starttls::Smtp),
                ("127.0.0.1:2525".to_string(), Starttls::Smtp)
            ]
        );
        assert_eq!(s.addresses, ["127.0.0.1:465", "127.0.0.1:4465"]);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
    }

    #[test]
    fn a_key_in_the_certificate_file_is_a_problem_and_a_missing_master_cf_assumes_port_25() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("main.cf");
        std::fs::write(&conf, "smtpd_tls_cert_file = $nowhere/both.pem\n").unwrap();
        let mut scan = Scan::default();
        read(&conf, &mut scan);
        let [s] = scan.sites.as_slice() else {
            panic!("{:?}", scan.sites)
        };
        assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
        assert!(s.problems[0].starts_with("smtpd_tls_key_file is the certificate file"));
        assert!(s.problems[1].contains("names a parameter discover cannot expand"));
        assert_eq!(s.starttls, [("127.0.0.1:25".to_string(), Starttls::Smtp)]);
        assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
    }

    #[test]
    fn one_chain_file_is_a_bundle_with_separate_files_beside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("main.cf");
        std::fs::write(&conf, "smtpd_tls_chain_files = /etc/mail/all.pem\n").unwrap();
        std::fs::write(tmp.path().join("master.cf"), "").unwrap();
        let mut scan = Scan::default();
        read(&conf, &mut scan);
        let [s] = scan.sites.as_slice() else {
            panic!("{:?}", scan.sites)
        };
        assert_eq!(
            s.bundle_file.as_deref(),
            Some(Path::new("/etc/mail/all.pem"))
        );
        assert_eq!(s.cert_file, Path::new("/etc/mail/all.crt"));
        assert_eq!(s.key_file.as_deref(), Some(Path::new("/etc/mail/all.key")));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        // A master.cf without TLS listeners: no endpoint.
        assert!(s.starttls.is_empty() && s.addresses.is_empty());
    }
}
