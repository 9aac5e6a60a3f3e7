//! sd_notify: READY after the first evaluation, STATUS with a one-line summary, RELOADING on
//! SIGHUP, STOPPING on shutdown, WATCHDOG pings. Does nothing when not run by systemd.
//! Also where secrets come from under the unit: systemd credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;

pub(crate) fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub(crate) fn notifying() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

pub(crate) fn notify_status(status: &str) {
    if notifying() {
        let _ = sd_notify::notify(&[NotifyState::Status(status)]);
    }
}

pub(crate) fn notify_reloading() {
    let _ = sd_notify::notify(&[
        NotifyState::Reloading,
        NotifyState::Status("reloading configuration"),
    ]);
}

pub(crate) fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub(crate) fn notify_watchdog() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when systemd set it for us.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Secret files the unit hands over as credentials: `LoadCredential=certagent:DIR` loads
/// each file `DIR/NAME` as the credential `certagent_NAME`, and `InaccessiblePaths=DIR`
/// hides the originals from the service.
pub(crate) const CREDENTIALS_DIR: &str = "/etc/certagent/credentials";
const CREDENTIAL_PREFIX: &str = "certagent_";

/// Where to read a configured secret file: under the unit (`$CREDENTIALS_DIRECTORY` set), a
/// path in [`CREDENTIALS_DIR`] is read from its credential; everywhere else, the path itself.
pub(crate) fn secret_path(configured: &Path) -> PathBuf {
    credential_for(
        configured,
        std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
    )
}

fn credential_for(configured: &Path, credentials: Option<PathBuf>) -> PathBuf {
    let (Some(dir), Ok(rest)) = (credentials, configured.strip_prefix(CREDENTIALS_DIR)) else {
        return configured.to_path_buf();
    };
    // systemd names a file in a subdirectory "certagent_SUB_NAME".
    let mut name = std::ffi::OsString::from(CREDENTIAL_PREFIX);
    for (i, part) in rest.iter().enumerate() {
        if i > 0 {
            name.push("_");
        }
        name.push(part);
    }
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_the_credentials_dir_are_read_from_systemd_credentials() {
        let creds = Some(PathBuf::from("/run/credentials/certagent.service"));
        assert_eq!(
            credential_for(
                Path::new("/etc/certagent/credentials/eab.key"),
                creds.clone()
            ),
            Path::new("/run/credentials/certagent.service/certagent_eab.key")
        );
        assert_eq!(
            credential_for(
                Path::new("/etc/certagent/credentials/ca/eab"),
                creds.clone()
            ),
            Path::new("/run/credentials/certagent.service/certagent_ca_eab")
        );
        assert_eq!(
            credential_for(Path::new("/etc/certagent/eab.key"), creds),
            Path::new("/etc/certagent/eab.key"),
            "outside the credentials directory the path is used as it is"
        );
        assert_eq!(
            credential_for(Path::new("/etc/certagent/credentials/eab.key"), None),
            Path::new("/etc/certagent/credentials/eab.key"),
            "without systemd credentials the path is used as it is"
        );
    }
}
