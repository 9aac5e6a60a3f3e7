//! The control socket (`RUNTIME_DIR/control.sock`, root only): how `reissue`, `status` and
//! `check` talk to a running daemon. One JSON request line, one JSON response line. The
//! response carries the same document the command prints with `--json`, and its exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::core::{Reason, Requested};
use crate::error::{Error, Result};

/// A request is a few names, or one certificate chain; anything larger is not a request.
pub(crate) const MAX_REQUEST_BYTES: usize = 1 << 20;
/// A status document for 10,000 certificates is a few MiB.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Distinct names one request may list (`--all` covers any number of certificates).
pub(crate) const MAX_NAMES: usize = 10_000;
/// How long a client has to take its response; one that reads nothing is dropped rather
/// than holding the daemon's buffer for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Check {
        names: Vec<String>,
    },
    Status {
        names: Vec<String>,
    },
    Reissue {
        names: Vec<String>,
        all: bool,
        reason: Reason,
        wait: bool,
        /// The operator's reason in their words (`reason` is what certagent acts on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested: Option<Requested>,
    },
    /// A certificate (PEM) for a pending manual re-issue.
    Import {
        name: String,
        certificate: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Response {
    pub(crate) exit: u8,
    /// The `--json` document of the command, or null with `error` set.
    pub(crate) document: serde_json::Value,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) hint: Option<String>,
}

impl Request {
    /// Each name once, in the order first given, and no more than `MAX_NAMES` of them: a name
    /// repeated 100,000 times is one certificate's work and one entry in the answer.
    pub(crate) fn dedup_names(mut self) -> Result<Request> {
        let names = match &mut self {
            Request::Check { names } | Request::Status { names } => names,
            Request::Reissue { names, .. } => names,
            Request::Import { .. } => return Ok(self),
        };
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names.shrink_to_fit();
        if names.len() > MAX_NAMES {
            return Err(Error::msg(format!(
                "the request names {} certificates, more than {MAX_NAMES}",
                names.len()
            ))
            .with_hint("use --all, or ask in several runs"));
        }
        Ok(self)
    }
}

impl Response {
    /// The daemon's answer as the command's `--json` document and exit code; an error it
    /// reported becomes the command's error, with its hint.
    pub(crate) fn into_document<T: serde::de::DeserializeOwned>(self) -> Result<(T, u8)> {
        if let Some(e) = self.error {
            // The daemon's exit code is kept where it means something of its own.
            let err = match self.exit {
                crate::error::exit::CONFIG => Error::Mismatch {
                    message: e,
                    hint: None,
                },
                _ => Error::msg(e),
            };
            return Err(match self.hint {
                Some(h) => err.with_hint(h),
                None => err,
            });
        }
        let doc = serde_json::from_value(self.document)
            .map_err(|e| Error::msg(format!("the daemon's document does not parse: {e}")))?;
        Ok((doc, self.exit))
    }

    pub(crate) fn error(e: &Error) -> Response {
        Response {
            exit: e.exit_code(),
            document: serde_json::Value::Null,
            error: Some(e.to_string()),
            hint: e.hint().map(str::to_string),
        }
    }
}

pub(crate) fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("control.sock")
}

/// Ask the daemon. `Ok(None)` when no daemon listens (the caller then works in-process).
pub(crate) async fn request(runtime_dir: &Path, req: &Request) -> Result<Option<Response>> {
    let path = socket_path(runtime_dir);
    let Some(stream) = connect(&path).await? else {
        return Ok(None);
    };
    // Whoever answers must be root or certagent's own user: a socket planted by anyone else
    // would capture the request and answer with text of their choosing. Checked before a byte
    // is sent.
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| {
            Error::msg(format!(
                "failed to identify the process behind {:?}: {e}",
                path.display().to_string()
            ))
        })?;
    check_peer(&path, peer.uid(), nix::unistd::geteuid().as_raw())?;
    exchange(stream, req).await.map(Some)
}

/// The daemon's socket at `path`; `None` when no daemon listens there.
async fn connect(path: &Path) -> Result<Option<UnixStream>> {
    match UnixStream::connect(path).await {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::msg(format!(
            "failed to reach the daemon at {:?}: {e}",
            path.display().to_string()
        ))
        .with_hint("the control socket is for root only")),
    }
}

/// Send `req` as one line on `stream` and read the one-line answer.
async fn exchange(stream: UnixStream, req: &Request) -> Result<Response> {
    let (read, mut write) = stream.into_split();
    let req = req.clone().dedup_names()?;
    let mut line = serde_json::to_vec(&req)
        .map_err(|e| Error::msg(format!("failed to encode request: {e}")))?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| Error::msg(format!("failed to talk to the daemon: {e}")))?;
    let mut reader = BufReader::new(read.take(MAX_RESPONSE_BYTES as u64));
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .await
        .map_err(|e| Error::msg(format!("failed to read the daemon's answer: {e}")))?;
    if answer.is_empty() {
        return Err(
            Error::msg("the daemon closed the connection without answering")
                .with_hint("see `journalctl -u certagent`"),
        );
    }
    serde_json::from_str(&answer)
        .map_err(|e| Error::msg(format!("the daemon's answer does not parse: {e}")))
}

/// The daemon runs as root; a peer of any other user (but the one we run as) is not it.
fn check_peer(path: &Path, peer_uid: u32, own_uid: u32) -> Result<()> {
    if peer_uid == 0 || peer_uid == own_uid {
        return Ok(());
    }
    let who = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer_uid)) {
        Ok(Some(u)) => format!("uid {peer_uid} ({})", u.name),
        _ => format!("uid {peer_uid}"),
    };
    Err(Error::msg(format!(
        "refusing to talk to {:?}: the process listening on it runs as {who}, not root; nothing was sent",
        path.display().to_string()
    ))
    .with_hint(format!(
        "that is not certagent's daemon: find it with `ss -xlp src {}`, stop it, and check who can write {:?}",
        path.display(),
        path.parent().unwrap_or(Path::new("/")).display().to_string()
    )))
}

/// Read one request line from a client, bounded in size and time.
pub(crate) async fn read_request(stream: &mut UnixStream) -> Result<Request> {
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| Error::msg("control client sent no request within 10s"))?
        .map_err(|e| Error::msg(format!("failed to read request: {e}")))?;
    if line.len() > MAX_REQUEST_BYTES {
        return Err(Error::msg("control request too large"));
    }
    let req: Request = serde_json::from_str(&line)
        .map_err(|e| Error::msg(format!("invalid control request: {e}")))?;
    req.dedup_names()
}

/// Send the response line; a client that does not take it within `WRITE_TIMEOUT` is given up
/// (the buffer is freed with the connection).
pub(crate) async fn write_response(stream: &mut UnixStream, resp: &Response) -> Result<()> {
    let mut line = serde_json::to_vec(resp)
        .map_err(|e| Error::msg(format!("failed to encode response: {e}")))?;
    line.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&line))
        .await
        .map_err(|_| {
            Error::msg(format!(
                "control client did not read its response within {}s; dropped it",
                WRITE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| Error::msg(format!("failed to answer control client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send `req` as one line while the caller reads it (it is larger than the socket buffer).
    fn send_line(mut client: UnixStream, req: serde_json::Value) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut line = req.to_string().into_bytes();
            line.push(b'\n');
            let _ = client.write_all(&line).await;
        })
    }

    #[tokio::test]
    async fn repeated_names_are_asked_once_and_their_number_is_capped() {
        let (client, mut daemon) = UnixStream::pair().unwrap();
        let mut names = vec!["www"; 100_000];
        names.insert(1, "api");
        let _sender = send_line(
            client,
            serde_json::json!({"command": "status", "names": names}),
        );
        assert_eq!(
            read_request(&mut daemon).await.unwrap(),
            Request::Status {
                names: vec!["www".into(), "api".into()]
            }
        );

        let (client, mut daemon) = UnixStream::pair().unwrap();
        let names: Vec<String> = (0..=MAX_NAMES).map(|i| format!("c{i}")).collect();
        let req = serde_json::json!({
            "command": "reissue", "names": names, "all": false, "reason": "forced", "wait": true
        });
        let _sender = send_line(client, req);
        let err = read_request(&mut daemon).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the request names 10001 certificates, more than 10000"
        );
        assert_eq!(err.hint(), Some("use --all, or ask in several runs"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_its_response_is_dropped() {
        let (_client, mut daemon) = UnixStream::pair().unwrap();
        // Far more than the socket buffer holds: the write can only finish if the client reads.
        let resp = Response {
            exit: 0,
            document: serde_json::Value::String("x".repeat(16 << 20)),
            error: None,
            hint: None,
        };
        // Time is paused and advances when every task waits: a write without a timeout of its
        // own would be cut by this outer one, an hour later.
        let written = tokio::time::timeout(
            Duration::from_secs(3600),
            write_response(&mut daemon, &resp),
        )
        .await
        .expect("the daemon waited an hour for a client that reads nothing");
        assert_eq!(
            written.unwrap_err().to_string(),
            "control client did not read its response within 10s; dropped it"
        );
    }

    #[test]
    fn only_root_or_our_own_user_is_taken_for_the_daemon() {
        let sock = Path::new("/run/certagent/control.sock");
        check_peer(sock, 0, 0).unwrap();
        check_peer(sock, 0, 1000).unwrap();
        check_peer(sock, 1000, 1000).unwrap();
        let e = check_peer(sock, 4242, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "refusing to talk to \"/run/certagent/control.sock\": the process listening on it runs as uid 4242, not root; nothing was sent"
        );
        assert!(
            e.hint().unwrap().contains("\"/run/certagent\""),
            "{:?}",
            e.hint()
        );
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::Reissue {
            names: vec!["www".into()],
            all: false,
            reason: Reason::KeyMissing,
            wait: true,
            requested: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"command":"reissue","names":["www"],"all":false,"reason":"key-missing","wait":true}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        // The operator's own word travels beside the reason certagent acts on.
        let asked = Request::Reissue {
            names: vec!["www".into()],
            all: false,
            reason: Reason::KeyMissing,
            wait: true,
            requested: Some(Requested::KeyLost),
        };
        let text = serde_json::to_string(&asked).unwrap();
        assert!(
            text.ends_with(r#""wait":true,"requested":"key-lost"}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), asked);
        let err = serde_json::from_str::<Request>(r#"{"command":"status","names":[],"x":1}"#)
            .unwrap_err();
        assert!(err.to_string().starts_with("unknown field `x`"), "{err}");
        assert!(serde_json::from_str::<Request>(r#"{"command":"rm -rf"}"#).is_err());
    }
}
