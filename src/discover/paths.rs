//! Paths the way the web servers read them: relative to their root, globs in `include`,
//! `listen` addresses turned into the loopback address certagent probes.

use super::*;

/// Read a configuration file (capped), with an error that names it.
pub(super) fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let shown = path.display().to_string();
    let f = crate::store::fsutil::open_regular(path)
        .map_err(|e| format!("failed to read {shown:?}: {e}"))?;
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("failed to read {shown:?}: {e}"))?;
    if text.len() > MAX_CONFIG_BYTES {
        return Err(format!("failed to read {shown:?}: larger than 8 MiB"));
    }
    Ok(text)
}

/// `a/./b/../c` -> `a/c`, lexically (what the servers do with a joined relative path).
pub(super) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

pub(super) fn has_glob(p: &Path) -> bool {
    p.to_string_lossy().contains(['*', '?', '['])
}

/// Expand a glob pattern (`*`, `?`, `[...]` in any component) to the existing paths it
/// matches, sorted like glob(3). A pattern without wildcards is returned if it exists.
pub(super) fn expand_glob(pattern: &Path) -> Vec<PathBuf> {
    let mut current = vec![PathBuf::new()];
    for c in pattern.components() {
        let part = c.as_os_str().to_string_lossy().into_owned();
        let mut next = Vec::new();
        if !matches!(c, Component::Normal(_)) || !part.contains(['*', '?', '[']) {
            for base in current {
                next.push(base.join(c.as_os_str()));
            }
        } else {
            for base in current {
                let Ok(entries) = std::fs::read_dir(&base) else {
                    continue;
                };
                let mut found: Vec<PathBuf> = entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let hidden_ok = !name.starts_with('.') || part.starts_with('.');
                        (hidden_ok && fnmatch(&part, &name)).then(|| base.join(name))
                    })
                    .collect();
                found.sort();
                next.extend(found);
            }
        }
        current = next;
    }
    current.into_iter().filter(|p| p.exists()).collect()
}

/// Files in a directory and its subdirectories, sorted (Apache's `Include DIR`).
pub(super) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Shell-style match of one file name: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
pub(super) fn fnmatch(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some(('[', rest)) => {
                let Some(close) = rest.iter().skip(1).position(|&c| c == ']').map(|i| i + 1) else {
                    return n.first() == Some(&'[') && go(rest, &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let (negate, set) = match rest[..close].split_first() {
                    Some(('!' | '^', set)) => (true, set),
                    _ => (false, &rest[..close]),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&rest[close + 1..], &n[1..])
            }
            Some((&c, rest)) => n.first() == Some(&c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// The address to probe a listen address at: `443`, `*:443`, `0.0.0.0:443` and
/// `_default_:443` become `127.0.0.1:443`, `[::]:443` becomes `[::1]:443`, an IP is kept, a
/// host name becomes loopback; unix sockets and addresses without a port give `None`.
pub(super) fn probe_address(listen: &str, default_port: u16) -> Option<String> {
    if listen.starts_with("unix:") {
        return None;
    }
    if let Ok(port) = listen.parse::<u16>() {
        return Some(format!("127.0.0.1:{port}"));
    }
    if let Ok(a) = listen.parse::<SocketAddr>() {
        let ip = match a.ip() {
            ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        return Some(format!("{ip}:{}", a.port()));
    }
    if let Ok(ip) = listen.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return probe_address(&SocketAddr::new(ip, default_port).to_string(), default_port);
    }
    let (host, port) = listen.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    match host {
        "*" | "_default_" | "" => Some(format!("127.0.0.1:{port}")),
        _ => Some(format!("127.0.0.1:{port}")),
    }
}
