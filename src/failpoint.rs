//! Crash points for the fault-injection tests. Compiled in only with the `failpoints`
//! feature; `CERTAGENT_FAILPOINT=NAME` makes the process kill itself with SIGKILL when it
//! reaches `failpoint!("NAME")`, exactly like a power cut or an OOM kill would stop it.

/// Die here (SIGKILL, no destructors, no flush) when `CERTAGENT_FAILPOINT` names this point.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if std::env::var("CERTAGENT_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("certagent: failpoint {name}: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
