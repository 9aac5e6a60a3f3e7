//! Crash points and injected faults for the fault-injection tests. Compiled in only with the
//! `failpoints` feature; `CERTAGENT_FAILPOINT=NAME` makes the process kill itself with
//! SIGKILL when it reaches `failpoint!("NAME")`, exactly like a power cut or an OOM kill would
//! stop it. A few named faults change behaviour instead: `issue-foreign-key` (the internal CA
//! signs a different key, like a broken CA), `truncate-staged-key` (the published key file
//! is cut short, like an unnoticed short write) and `haproxy-foreign-key` (the first bundle
//! swapped into HAProxy through its runtime API carries another key). `NAME=panic` panics
//! there instead.

/// Die here (SIGKILL, no destructors, no flush) when `CERTAGENT_FAILPOINT` names this point.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}

#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    let Ok(value) = std::env::var("CERTAGENT_FAILPOINT") else {
        return;
    };
    if value == name {
        eprintln!("certagent: failpoint {name}: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    // `NAME=panic`: a bug, as an overflow or an unexpected `None` would be one.
    #[allow(clippy::panic)]
    if value.strip_prefix(name) == Some("=panic") {
        panic!("failpoint {name}");
    }
}

/// Like `failpoint!`, and in async code also `CERTAGENT_FAILPOINT=NAME=sleep`: wait there for
/// a minute (cancellable), to hold the process at that step while a test sends it a signal;
/// `NAME=sleep:SECS` waits that many seconds instead.
#[macro_export]
macro_rules! failpoint_async {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit_async($name).await;
    };
}

#[cfg(feature = "failpoints")]
pub(crate) async fn hit_async(name: &str) {
    hit(name);
    let Ok(value) = std::env::var("CERTAGENT_FAILPOINT") else {
        return;
    };
    let Some(sleep) = value
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix("=sleep"))
    else {
        return;
    };
    let secs = match sleep.strip_prefix(':') {
        Some(n) => n.parse().unwrap_or(60),
        None if sleep.is_empty() => 60,
        None => return,
    };
    eprintln!("certagent: failpoint {name}: sleeping");
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
}

/// Whether `CERTAGENT_FAILPOINT` names `name` (for failpoints that change behaviour instead
/// of killing the process).
#[cfg(feature = "failpoints")]
pub(crate) fn active(name: &str) -> bool {
    std::env::var("CERTAGENT_FAILPOINT").is_ok_and(|v| v == name)
}

/// Cut the file at `path` to half its length when `CERTAGENT_FAILPOINT` names `name`: a
/// short write that went unnoticed, as a full disk or a power cut can leave one.
#[cfg(feature = "failpoints")]
pub(crate) fn truncate_if(name: &str, path: &std::path::Path) {
    if !active(name) {
        return;
    }
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    eprintln!("certagent: failpoint {name}: truncating {}", path.display());
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len / 2));
}
