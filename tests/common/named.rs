//! [`Named`]: a private BIND `named` on 127.0.0.1 (a reserved port, UDP and TCP), primary for
//! the zones it is given, accepting RFC 2136 updates of TXT records signed with one TSIG key.
//! Recursion is on for loopback only, so that a CNAME at a challenge name is answered with its
//! target's TXT from named's own zones (Pebble's resolver does not chase it itself).
//! Its own directory holds the config, the zone files and their journals; it runs in the
//! foreground (`-g`) and is ended by pid on drop. [`Named::txt`] asks it (over TCP, by hand:
//! no dig) which TXT values a name has.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;

use super::process::{Child, reserved_port, wait_until};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The TSIG key named accepts updates with.
pub const TSIG_KEY_NAME: &str = "acme-update";

pub struct Named {
    // Held for their drop, in declaration order: the process first, then the directory.
    _child: Child,
    port: u16,
    secret_b64: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Named {
    /// Start named as primary for `zones`, each `(origin, extra zone-file lines)`. Every zone
    /// gets an SOA, `NS ns.ORIGIN.` and `ns.ORIGIN. A 127.0.0.1`; the key may update TXT
    /// records anywhere in them. Waits until it answers an SOA query for the first zone.
    pub fn start(zones: &[(&str, &str)]) -> Named {
        let dir = tempfile::Builder::new()
            .prefix("named-")
            .tempdir()
            .expect("create named temp dir");
        let d = dir.path().display().to_string();
        let port = reserved_port();
        let secret: [u8; 32] = rand::random();
        let secret_b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let mut conf = format!(
            "options {{\n  directory \"{d}\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  pid-file none;\n  session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  recursion yes;\n  allow-recursion {{ 127.0.0.1; }};\n  dnssec-validation no;\n  notify no;\n}};\ncontrols {{ }};\nkey \"{TSIG_KEY_NAME}\" {{ algorithm hmac-sha256; secret \"{secret_b64}\"; }};\n"
        );
        for (origin, extra) in zones {
            let file = format!("{d}/{origin}.zone");
            std::fs::write(
                &file,
                format!(
                    "$TTL 60\n@ IN SOA ns.{origin}. hostmaster.{origin}. 1 60 60 600 60\n@ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{extra}\n"
                ),
            )
            .expect("write zone file");
            conf.push_str(&format!(
                "zone \"{origin}\" {{ type primary; file \"{file}\"; update-policy {{ grant {TSIG_KEY_NAME} zonesub TXT; }}; }};\n"
            ));
        }
        let conf_path = dir.path().join("named.conf");
        std::fs::write(&conf_path, conf).expect("write named.conf");
        let log = dir.path().join("named.log");
        let out = std::fs::File::create(&log).expect("create named.log");
        let err = out.try_clone().expect("dup named.log");
        let mut child = Child::spawn(
            "named",
            Command::new("/usr/sbin/named")
                .args(["-g", "-4", "-n", "1", "-c"])
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        let first = zones.first().expect("at least one zone").0.to_string();
        let mut named_up = false;
        let up = wait_until(STARTUP_TIMEOUT, || {
            if !child.is_running() {
                return true;
            }
            named_up = query(port, &first, 6).is_some_and(|a| answer_count(&a) > 0);
            named_up
        });
        let named = Named {
            _child: child,
            port,
            secret_b64,
            log,
            _dir: dir,
        };
        if !(up && named_up) {
            panic!(
                "named did not answer an SOA query for {first} on 127.0.0.1:{port}:\n{}",
                named.log()
            );
        }
        named
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The key file (BIND's format) named accepts, written into `path`.
    pub fn write_key_file(&self, path: &std::path::Path) {
        std::fs::write(
            path,
            format!(
                "key \"{TSIG_KEY_NAME}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
                self.secret_b64
            ),
        )
        .expect("write TSIG key file");
    }

    /// The TXT values named serves at `name` (none for NXDOMAIN).
    pub fn txt(&self, name: &str) -> Vec<String> {
        let answer = query(self.port, name, 16)
            .unwrap_or_else(|| panic!("named did not answer a TXT query:\n{}", self.log()));
        txt_values(&answer)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A plain query over TCP; the raw answer.
fn query(port: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut msg = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.extend_from_slice(&[0, 0, qtype as u8, 0, 1]);
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&msg);
    s.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).ok()?;
    Some(answer)
}

fn answer_count(m: &[u8]) -> u16 {
    u16::from_be_bytes([m[6], m[7]])
}

/// Skip a (possibly compressed) name at `i`; the index after it.
fn skip_name(m: &[u8], mut i: usize) -> usize {
    loop {
        let len = m[i];
        if len == 0 {
            return i + 1;
        }
        if len & 0xc0 == 0xc0 {
            return i + 2;
        }
        i += 1 + len as usize;
    }
}

/// The TXT values in the answer section (each value's character-strings joined).
fn txt_values(m: &[u8]) -> Vec<String> {
    let mut i = skip_name(m, 12) + 4;
    let mut out = Vec::new();
    for _ in 0..answer_count(m) {
        i = skip_name(m, i);
        let rtype = u16::from_be_bytes([m[i], m[i + 1]]);
        let rdlen = u16::from_be_bytes([m[i + 8], m[i + 9]]) as usize;
        let rdata = &m[i + 10..i + 10 + rdlen];
        if rtype == 16 {
            let mut value = String::new();
            let mut j = 0;
            while j < rdata.len() {
                let n = rdata[j] as usize;
                value.push_str(&String::from_utf8_lossy(&rdata[j + 1..j + 1 + n]));
                j += 1 + n;
            }
            out.push(value);
        }
        i += 10 + rdlen;
    }
    out
}
