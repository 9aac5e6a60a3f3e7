//! Child processes: every command certagent runs (hooks, notification commands, server test
//! and reload commands, `nginx -V`, `systemctl`) is built here, so that none inherits
//! certagent's credentials and none can make certagent keep unbounded output. Nothing here
//! chooses what to run or decides what a failure means.

use std::ffi::OsStr;
use std::io;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Environment variables a child must not inherit: where systemd put certagent's secrets
/// (the DNSimple token, the ACME EAB key), and certagent's own channel to systemd (a child
/// must not speak to the service manager as the daemon).
pub(crate) const SCRUBBED_ENV: &[&str] = &[
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// How much of each output stream of a child is kept: the tail, which is what explains a
/// failure. The rest is read and dropped, so the child never blocks on a full pipe.
pub(crate) const OUTPUT_TAIL: usize = 64 << 10;

/// Output shown in an error message (the tail of what was kept).
const MESSAGE_TAIL: usize = 4096;

/// An async command for `program`: scrubbed environment, stdin from /dev/null, killed when
/// dropped (a timeout drops it).
pub(crate) fn command(program: impl AsRef<OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// A blocking command for `program`, for the CLI's short system tools: scrubbed environment,
/// stdin from /dev/null.
pub(crate) fn std_command(program: impl AsRef<OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// What a finished child printed: the last `OUTPUT_TAIL` bytes of each stream.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

impl Output {
    /// The stderr then stdout tail as one line (`|` for newlines), at most `MESSAGE_TAIL`
    /// bytes, cut at a character boundary; empty when the child printed nothing.
    pub(crate) fn message_tail(&self, with_stdout: bool) -> String {
        let mut text = String::from_utf8_lossy(&self.stderr).into_owned();
        if with_stdout {
            text.push_str(&String::from_utf8_lossy(&self.stdout));
        }
        let text = text.trim();
        // Slicing inside a multi-byte character would panic.
        let mut start = text.len().saturating_sub(MESSAGE_TAIL);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].replace('\n', " | ")
    }
}

/// Run `cmd` to the end with stdout and stderr piped, reading both as they come and keeping
/// the tail of each. Wrap it in a timeout: dropping the future kills the child.
pub(crate) async fn output(cmd: &mut tokio::process::Command) -> io::Result<Output> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let (stdout, stderr) = tokio::join!(
        drain_tail(child.stdout.take()),
        drain_tail(child.stderr.take())
    );
    let status = child.wait().await?;
    Ok(Output {
        status,
        stdout: stdout?,
        stderr: stderr?,
    })
}

/// Read `from` to its end, keeping the last `OUTPUT_TAIL` bytes.
async fn drain_tail(from: Option<impl AsyncRead + Unpin>) -> io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let Some(mut from) = from else {
        return Ok(kept);
    };
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        keep_tail(&mut kept, &chunk[..n]);
    }
    trim_front(&mut kept);
    Ok(kept)
}

/// Append `data` to `kept`, dropping from the front past `OUTPUT_TAIL` bytes. Drops in
/// batches (when twice the cap is reached), so the cost stays linear in what is read.
fn keep_tail(kept: &mut Vec<u8>, data: &[u8]) {
    kept.extend_from_slice(data);
    if kept.len() >= 2 * OUTPUT_TAIL {
        kept.drain(..kept.len() - OUTPUT_TAIL);
    }
}

/// Run a blocking `cmd` to the end with stdout discarded and stderr piped, keeping the tail
/// of stderr.
pub(crate) fn stderr_tail(cmd: &mut std::process::Command) -> io::Result<(ExitStatus, Vec<u8>)> {
    use std::io::Read;
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut kept = Vec::new();
    if let Some(mut from) = child.stderr.take() {
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            match from.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => keep_tail(&mut kept, &chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            }
        }
    }
    let status = child.wait()?;
    trim_front(&mut kept);
    Ok((status, kept))
}

/// Keep the last `OUTPUT_TAIL` bytes, and no more capacity than that.
fn trim_front(kept: &mut Vec<u8>) {
    if kept.len() > OUTPUT_TAIL {
        kept.drain(..kept.len() - OUTPUT_TAIL);
    }
    kept.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_childs_output_is_drained_and_only_its_tail_kept() {
        // 3 MB on each stream, far past the pipe's 64 KiB: the child finishes (its exit
        // status is seen) only if both pipes are read while it runs.
        let mut cmd = command("sh");
        cmd.args([
            "-c",
            "head -c 3000000 /dev/zero; printf OUT; head -c 3000000 /dev/zero >&2; printf ERR >&2; exit 3",
        ]);
        let out = output(&mut cmd).await.unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout.len(), OUTPUT_TAIL);
        assert!(out.stdout.ends_with(b"\0OUT"));
        assert_eq!(out.stderr.len(), OUTPUT_TAIL);
        assert!(out.stderr.ends_with(b"\0ERR"));

        let mut cmd = std_command("sh");
        cmd.args(["-c", "head -c 3000000 /dev/zero >&2; printf ERR >&2"]);
        let (status, stderr) = stderr_tail(&mut cmd).unwrap();
        assert!(status.success());
        assert_eq!(stderr.len(), OUTPUT_TAIL);
        assert!(stderr.ends_with(b"\0ERR"));
    }

    #[tokio::test]
    async fn short_output_is_kept_whole() {
        let mut cmd = command("sh");
        cmd.args(["-c", "printf 'a\\nb'; printf 'boom\\n' >&2"]);
        let out = output(&mut cmd).await.unwrap();
        assert_eq!(out.stdout, b"a\nb");
        assert_eq!(out.message_tail(true), "boom | a | b");
        assert_eq!(out.message_tail(false), "boom");
    }

    #[test]
    fn children_do_not_inherit_certagents_credentials() {
        // This test binary, re-run with the environment the daemon has under systemd, stands
        // in for certagent: `print_a_childs_environment` builds children the way it does.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child::tests::print_a_childs_environment"])
            .args(["--nocapture", "--test-threads=1"])
            .env("CREDENTIALS_DIRECTORY", "/run/credentials/certagent.service")
            .env("NOTIFY_SOCKET", "/run/systemd/notify")
            .env("WATCHDOG_USEC", "1000")
            .env("CERTAGENT_TEST_KEPT", "kept")
            .env(
                "CHILD_SCRIPT",
                "echo ${CREDENTIALS_DIRECTORY-unset} ${NOTIFY_SOCKET-unset} ${WATCHDOG_USEC-unset} ${CERTAGENT_TEST_KEPT-unset}",
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.matches("child saw: unset unset unset kept\n").count(),
            2,
            "{text}"
        );
    }

    /// Runs only as the child of the test above (which sets `CHILD_SCRIPT`): certagent's
    /// environment is this process's, and the child is built the way certagent builds it.
    #[tokio::test]
    async fn print_a_childs_environment() {
        let Ok(script) = std::env::var("CHILD_SCRIPT") else {
            return;
        };
        let mut cmd = command("sh");
        cmd.args(["-c", &script]);
        let out = output(&mut cmd).await.unwrap();
        println!("child saw: {}", String::from_utf8_lossy(&out.stdout).trim());
        let mut cmd = std_command("sh");
        cmd.args(["-c", &format!("({script}) >&2")]);
        let (_, stderr) = stderr_tail(&mut cmd).unwrap();
        println!("child saw: {}", String::from_utf8_lossy(&stderr).trim());
    }
}
