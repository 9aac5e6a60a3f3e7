//! A private Pebble ACME server (plus `pebble-challtestsrv` as its DNS
//! server) on loopback ports, for one test.
//!
//! `pebble-challtestsrv` runs with only its DNS server and management API
//! enabled and answers every A query with 127.0.0.1 and no AAAA records, so
//! every name validates against 127.0.0.1 over IPv4. Pebble's validation
//! authority connects to [`Pebble::http_port`] for http-01 challenges.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::http::https_get;
use super::process::{Child, reserved_port, wait_until};
use super::tls::TlsCa;

/// How long to wait for the servers to come up: a bound on a positive signal: generous, since a busy machine (CI beside other load) can
/// take many seconds to start a server, and a server that is up returns at once.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The line Pebble 2.4.0's in-memory store logs for every new order
/// (`log.Printf("Added order %q to the db\n", ...)` in `db/memorystore.go`).
const ORDER_ADDED_MARKER: &str = "Added order \"";

/// Options for [`Pebble::start`]. `PebbleOpts::default()` is a strict server
/// (real challenge validation, no EAB, Pebble's default validity period).
#[derive(Clone, Debug, Default)]
pub struct PebbleOpts {
    /// Set `PEBBLE_VA_ALWAYS_VALID=1`: every challenge is valid without
    /// Pebble contacting anything.
    pub always_valid: bool,
    /// `certificateValidityPeriod` in seconds (Pebble's default is 5 years).
    pub validity_period_secs: Option<u64>,
    /// `externalAccountMACKeys`: `(key id, base64url HMAC key)` pairs.
    pub eab_keys: Vec<(String, String)>,
    /// `externalAccountBindingRequired`.
    pub eab_required: bool,
    /// Port Pebble's VA connects to for http-01 (default: a free port). Put
    /// the web server's plain-HTTP listener here.
    pub http_port: Option<u16>,
    /// Port Pebble's VA connects to for tls-alpn-01 (default: a free port).
    pub tls_port: Option<u16>,
    /// Extra environment variables for `pebble` (e.g. `PEBBLE_CHAIN_LENGTH`).
    pub extra_env: Vec<(String, String)>,
    /// The DNS server Pebble's VA asks (`-dnsserver`, e.g. a [`super::Named`]); default:
    /// its own pebble-challtestsrv.
    pub dns_server: Option<String>,
}

/// A running Pebble + pebble-challtestsrv pair. Both processes are killed
/// (by pid) when this is dropped; the temporary directory with the config,
/// TLS files and logs is removed afterwards.
pub struct Pebble {
    // Fields drop in declaration order: processes first, then the directory.
    pebble: Child,
    challtestsrv: Child,
    tls: TlsCa,
    listen_port: u16,
    mgmt_port: u16,
    http_port: u16,
    dns_port: u16,
    challtestsrv_mgmt_port: u16,
    pebble_log: PathBuf,
    challtestsrv_log: PathBuf,
    dir: tempfile::TempDir,
}

/// Opens `path` for a child's stdout and stderr (both append to one file).
fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let err = file
        .try_clone()
        .unwrap_or_else(|e| panic!("dup {}: {e}", path.display()));
    (Stdio::from(file), Stdio::from(err))
}

fn tcp_accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

impl Pebble {
    /// Starts pebble-challtestsrv and Pebble and waits (up to 10 s) until
    /// `GET /dir` answers 200. Panics with both logs if it does not.
    pub fn start(opts: PebbleOpts) -> Pebble {
        let dir = tempfile::Builder::new()
            .prefix("pebble-")
            .tempdir()
            .expect("create Pebble temp dir");
        let tls = TlsCa::new(&dir.path().join("tls"));

        let listen_port = reserved_port();
        let mgmt_port = reserved_port();
        let http_port = opts.http_port.unwrap_or_else(reserved_port);
        let tls_port = opts.tls_port.unwrap_or_else(reserved_port);
        let dns_port = reserved_port();
        let challtestsrv_mgmt_port = reserved_port();

        // DNS for the VA: every A query answers 127.0.0.1, no AAAA answers,
        // and no challenge-response servers of its own.
        let challtestsrv_log = dir.path().join("challtestsrv.log");
        let (out, err) = log_stdio(&challtestsrv_log);
        let mut challtestsrv = Child::spawn(
            "pebble-challtestsrv",
            Command::new("pebble-challtestsrv")
                .arg("-management")
                .arg(format!("127.0.0.1:{challtestsrv_mgmt_port}"))
                .arg("-dns01")
                .arg(format!("127.0.0.1:{dns_port}"))
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        let up = wait_until(STARTUP_TIMEOUT, || {
            challtestsrv.is_running() && tcp_accepts(challtestsrv_mgmt_port)
        });
        if !up {
            panic!(
                "pebble-challtestsrv did not come up on 127.0.0.1:{challtestsrv_mgmt_port}:\n{}",
                read_log(&challtestsrv_log)
            );
        }

        let mut pebble_cfg = json!({
            "listenAddress": format!("127.0.0.1:{listen_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": tls.cert_path(),
            "privateKey": tls.key_path(),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": opts.eab_required,
        });
        if let Some(secs) = opts.validity_period_secs {
            pebble_cfg["certificateValidityPeriod"] = json!(secs);
        }
        if !opts.eab_keys.is_empty() {
            let keys: serde_json::Map<String, serde_json::Value> = opts
                .eab_keys
                .iter()
                .map(|(kid, key)| (kid.clone(), json!(key)))
                .collect();
            pebble_cfg["externalAccountMACKeys"] = serde_json::Value::Object(keys);
        }
        let config_path = dir.path().join("pebble.json");
        let config = serde_json::to_string_pretty(&json!({ "pebble": pebble_cfg }))
            .expect("serialize Pebble config");
        std::fs::write(&config_path, config).expect("write pebble.json");

        let pebble_log = dir.path().join("pebble.log");
        let (out, err) = log_stdio(&pebble_log);
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(
                opts.dns_server
                    .clone()
                    .unwrap_or_else(|| format!("127.0.0.1:{dns_port}")),
            )
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if opts.always_valid {
            cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
        }
        cmd.envs(opts.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let pebble = Child::spawn("pebble", &mut cmd);

        let mut server = Pebble {
            pebble,
            challtestsrv,
            tls,
            listen_port,
            mgmt_port,
            http_port,
            dns_port,
            challtestsrv_mgmt_port,
            pebble_log,
            challtestsrv_log,
            dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let url = self.directory_url();
        let ca = self.tls.ca_pem_path().to_owned();
        let mut last = String::from("not tried");
        let mut exited = None;
        let up = wait_until(STARTUP_TIMEOUT, || {
            if let Some(status) = self.pebble.try_wait() {
                exited = Some(status);
                return true;
            }
            match https_get(&url, &ca) {
                Ok(r) if r.status == 200 => true,
                Ok(r) => {
                    last = format!("HTTP {}: {}", r.status, r.body);
                    false
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        if let Some(status) = exited {
            panic!("pebble exited during startup ({status}):\n{}", self.log());
        }
        if !up {
            panic!(
                "pebble did not answer {url} within {STARTUP_TIMEOUT:?} (last: {last}):\n{}",
                self.log()
            );
        }
    }

    /// ACME directory URL, `https://127.0.0.1:A/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen_port)
    }

    /// Path of the PEM file that trusts Pebble's HTTPS listeners (ACME API
    /// and management API). Not the root of the certificates Pebble issues:
    /// see [`Pebble::root_pem`] for that.
    pub fn ca_bundle(&self) -> &Path {
        self.tls.ca_pem_path()
    }

    /// `[issuer.pebble]` for certagent's config: this Pebble's directory and trust, http-01
    /// answered by certagent's built-in responder on the port Pebble's VA connects to.
    pub fn issuer_table(&self) -> String {
        format!(
            "[issuer.pebble]\nkind = \"acme\"\ndirectory = \"{}\"\nca_bundle = \"{}\"\nlisten = \"127.0.0.1:{}\"\ntimeout = \"60s\"\n",
            self.directory_url(),
            self.ca_bundle().display(),
            self.http_port()
        )
    }

    /// Port Pebble's VA connects to (on 127.0.0.1) for http-01 challenges.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Base URL of Pebble's management API, `https://127.0.0.1:B`.
    pub fn mgmt_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.mgmt_port)
    }

    /// `127.0.0.1:D`, the DNS server (pebble-challtestsrv) Pebble's VA uses.
    pub fn dns_addr(&self) -> String {
        format!("127.0.0.1:{}", self.dns_port)
    }

    /// Base URL of pebble-challtestsrv's plain-HTTP management API (e.g.
    /// `POST /set-txt` for dns-01 tests).
    pub fn challtestsrv_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.challtestsrv_mgmt_port)
    }

    /// Temporary directory holding `pebble.json`, TLS files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pids of `(pebble, pebble-challtestsrv)`.
    pub fn pids(&self) -> (u32, u32) {
        (self.pebble.pid(), self.challtestsrv.pid())
    }

    /// Both servers' combined stdout+stderr so far, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "===== pebble log =====\n{}\n===== pebble-challtestsrv log =====\n{}",
            read_log(&self.pebble_log),
            read_log(&self.challtestsrv_log)
        )
    }

    /// Pebble's own log so far.
    pub fn pebble_log(&self) -> String {
        read_log(&self.pebble_log)
    }

    /// Number of orders Pebble has created so far: the count of
    /// `Added order "<id>" to the db` lines in its log.
    pub fn orders_created(&self) -> usize {
        read_log(&self.pebble_log)
            .lines()
            .filter(|l| l.contains(ORDER_ADDED_MARKER))
            .count()
    }

    /// `GET {mgmt}/cert-status-by-serial/<serial>`: `None` on 404, else the
    /// JSON object (`Certificate`, `Serial`, `Status` = `"Valid"` /
    /// `"Revoked"`, `Reason`, `RevokedAt`). `serial_hex` may contain colons
    /// and leading zeros. Panics on any other answer.
    pub fn cert_status(&self, serial_hex: &str) -> Option<serde_json::Value> {
        let serial: String = serial_hex
            .trim()
            .trim_start_matches("0x")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let url = format!("{}/cert-status-by-serial/{serial}", self.mgmt_url());
        let resp =
            https_get(&url, self.ca_bundle()).unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        match resp.status {
            404 => None,
            200 => Some(
                serde_json::from_str(&resp.body)
                    .unwrap_or_else(|e| panic!("{url}: bad JSON ({e}): {}", resp.body)),
            ),
            s => panic!("{url}: HTTP {s}: {}", resp.body),
        }
    }

    /// PEM of the root certificate that issued (via an intermediate) every
    /// certificate this Pebble instance signs, from `GET {mgmt}/roots/0`.
    pub fn root_pem(&self) -> String {
        self.mgmt_get("/roots/0")
    }

    /// PEM of Pebble's issuing intermediate, from `GET {mgmt}/intermediates/0`.
    pub fn intermediate_pem(&self) -> String {
        self.mgmt_get("/intermediates/0")
    }

    fn mgmt_get(&self, path: &str) -> String {
        let url = format!("{}{path}", self.mgmt_url());
        let resp =
            https_get(&url, self.ca_bundle()).unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        assert_eq!(resp.status, 200, "{url}: {}", resp.body);
        resp.body
    }
}

fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
