//! HAProxy: the default config test and unit, the master's pid check, and the hot swap of a
//! certificate through the runtime API (`set ssl cert` + `commit ssl cert`, HAProxy ≥ 2.2),
//! which loads the new key and chain into the running process with no reload at all.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// Debian's and RHEL's configuration file.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/haproxy/haproxy.cfg";

/// Most bytes read from one runtime API answer.
const MAX_ANSWER: u64 = 64 * 1024;

/// `haproxy -c -q -f /etc/haproxy/haproxy.cfg`.
pub(crate) fn test_command() -> Vec<String> {
    ["haproxy", "-c", "-q", "-f", DEFAULT_CONFIG]
        .map(String::from)
        .to_vec()
}

/// Whether `pid` runs HAProxy, by the name of its executable (as for nginx).
pub(crate) fn is_haproxy(pid: nix::unistd::Pid) -> bool {
    let name = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Err(_) => std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default(),
    };
    let name = name.trim_end_matches('\n');
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    name == "haproxy" || name.starts_with("haproxy-")
}

/// One command on the runtime API (one connection, non-interactive mode): its answer, which
/// HAProxy ends by closing the connection.
async fn command(socket: &Path, line: &str, within: Duration) -> Result<String> {
    let shown = socket.display().to_string();
    let verb: String = line
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let talk = async {
        let mut stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("failed to connect to HAProxy's runtime API {shown:?}: {e}"))?;
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("failed to send `{verb}` to {shown:?}: {e}"))?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("failed to read the answer to `{verb}` from {shown:?}: {e}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&answer).trim().to_string())
    };
    match tokio::time::timeout(within, talk).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(Error::msg(e)),
        Err(_) => Err(Error::msg(format!(
            "HAProxy's runtime API {shown:?} did not answer `{verb}` within {}s",
            within.as_secs()
        ))),
    }
}

/// Load `pem` (key + leaf + chain) as the certificate HAProxy knows by `crt_path` (the path
/// its configuration loaded it from), then commit it: new handshakes present it at once. A
/// refusal aborts the transaction (the old certificate stays) and says what HAProxy said.
pub(crate) async fn swap(
    socket: &Path,
    crt_path: &Path,
    pem: &str,
    within: Duration,
) -> Result<()> {
    let path = crt_path.display().to_string();
    let refused = |step: &str, answer: &str| {
        Error::msg(format!(
            "HAProxy refused `{step} ssl cert {path}` through {:?}: {}",
            socket.display().to_string(),
            shown(answer)
        ))
    };
    // The payload ends at the first empty line; PEM has none.
    let body = pem.replace("\r\n", "\n");
    let body: Vec<&str> = body.lines().filter(|l| !l.trim().is_empty()).collect();
    let set = format!("set ssl cert {path} <<\n{}\n\n", body.join("\n"));
    let answer = command(socket, &set, within).await?;
    if !answer.contains("Transaction created") && !answer.contains("Transaction updated") {
        let _ = command(socket, &format!("abort ssl cert {path}\n"), within).await;
        return Err(refused("set", &answer).with_hint(
            "HAProxy still serves the certificate it had; `crt` in haproxy.cfg must name bundle_file exactly, and the runtime_socket must have `level admin`",
        ));
    }
    let answer = command(socket, &format!("commit ssl cert {path}\n"), within).await?;
    if !answer.contains("Success!") {
        let _ = command(socket, &format!("abort ssl cert {path}\n"), within).await;
        return Err(refused("commit", &answer));
    }
    Ok(())
}

/// HAProxy's answer in an error: one line, control characters escaped, at most 300 chars.
fn shown(answer: &str) -> String {
    let one: String = answer
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    let cut: String = one.chars().take(300).collect();
    format!("{cut:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake runtime API answering each connection with the next canned answer, recording
    /// what it was sent.
    async fn fake(
        answers: Vec<&'static str>,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        tokio::task::JoinHandle<Vec<String>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                // Commands end with a newline; `set` with its payload's empty line.
                let mut buf = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).await.unwrap_or(0) == 1 {
                    buf.push(b[0]);
                    let text = String::from_utf8_lossy(&buf);
                    let done = if text.contains("<<\n") {
                        text.ends_with("\n\n")
                    } else {
                        text.ends_with('\n')
                    };
                    if done {
                        break;
                    }
                }
                got.push(String::from_utf8_lossy(&buf).into_owned());
                s.write_all(answer.as_bytes()).await.unwrap();
            }
            got
        });
        (dir, path, task)
    }

    #[tokio::test]
    async fn a_swap_is_set_then_committed() {
        let (_dir, sock, server) = fake(vec![
            "Transaction created for certificate /etc/haproxy/site.pem!\n\n",
            "Committing /etc/haproxy/site.pem.\nSuccess!\n\n",
        ])
        .await;
        let pem = "-----BEGIN PRIVATE KEY-----\r\nAAA\r\n-----END PRIVATE KEY-----\r\n\r\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        swap(
            &sock,
            Path::new("/etc/haproxy/site.pem"),
            pem,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(
            server.await.unwrap(),
            vec![
                "set ssl cert /etc/haproxy/site.pem <<\n-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n\n".to_string(),
                "commit ssl cert /etc/haproxy/site.pem\n".to_string(),
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_swap_is_aborted_and_reported() {
        let (_dir, sock, server) = fake(vec![
            "unable to load certificate chain from '/etc/haproxy/site.pem': inconsistencies between private key and certificate loaded.\n\n",
            "Transaction aborted for certificate '/etc/haproxy/site.pem'!\n\n",
        ])
        .await;
        let err = swap(
            &sock,
            Path::new("/etc/haproxy/site.pem"),
            "x",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "HAProxy refused `set ssl cert /etc/haproxy/site.pem` through {:?}: \"unable to load certificate chain from '/etc/haproxy/site.pem': inconsistencies between private key and certificate loaded.\"",
                sock.display().to_string()
            )
        );
        assert_eq!(
            server.await.unwrap()[1],
            "abort ssl cert /etc/haproxy/site.pem\n"
        );
    }

    #[test]
    fn only_a_process_whose_executable_is_haproxy_is_taken_for_haproxy() {
        let tmp = tempfile::tempdir().unwrap();
        let binary = tmp.path().join("haproxy");
        std::fs::copy("/bin/sleep", &binary).unwrap();
        let spawn = |bin: &Path| loop {
            match std::process::Command::new(bin).arg("30").spawn() {
                // Another test thread may hold a copy's write descriptor across its fork.
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => continue,
                other => break other.unwrap(),
            }
        };
        let mut real = spawn(&binary);
        let mut other = spawn(Path::new("/bin/sleep"));
        let pid = |c: &std::process::Child| nix::unistd::Pid::from_raw(c.id() as i32);
        assert!(is_haproxy(pid(&real)));
        assert!(!is_haproxy(pid(&other)));
        for c in [&mut real, &mut other] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
