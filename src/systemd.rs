//! sd_notify: READY after the first evaluation, STATUS with a one-line summary, RELOADING on
//! SIGHUP, STOPPING on shutdown, WATCHDOG pings. Does nothing when not run by systemd.

use std::time::Duration;

use sd_notify::NotifyState;

pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn notify_status(status: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(&[NotifyState::Status(status)]);
    }
}

pub fn notify_reloading() {
    let _ = sd_notify::notify(&[
        NotifyState::Reloading,
        NotifyState::Status("reloading configuration"),
    ]);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn notify_watchdog() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when systemd set it for us.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
