//! One ACME account for the fleet, per issuer: an order belongs to the account that placed
//! it, so a successor can resume its predecessor's order only with the same account. The
//! first host that has one offers it (its credentials sealed with the fleet key) under
//! `PREFIX/accounts/ISSUER`; every holder takes that account before it orders.

use crate::cluster::{Fleet, FleetKey, seal};
use crate::config::Certificate;
use crate::error::Result;
use crate::executor::Executor;

/// What the account is sealed for (the associated data names the issuer, not a certificate).
fn sealed_name(issuer: &str) -> String {
    format!("account:{issuer}")
}

fn account_file(executor: &Executor, cert: &Certificate) -> Result<std::path::PathBuf> {
    Ok(executor
        .store
        .issuer_dir("acme", &cert.issuer)?
        .join("account.json"))
}

/// Before ordering: take the fleet's account for the certificate's issuer, if there is one.
/// Returns whether the fleet has one.
pub(super) async fn take(
    executor: &Executor,
    fleet: &Fleet,
    key: &FleetKey,
    cert: &Certificate,
) -> Result<bool> {
    let Some(sealed) = fleet.shared_account(&cert.issuer).await? else {
        return Ok(false);
    };
    let credentials = seal::open(key, &sealed_name(&cert.issuer), 0, &sealed)?;
    let path = account_file(executor, cert)?;
    let ours = crate::files::read_capped(&path, 64 << 10)?;
    if ours.as_deref() != Some(credentials.as_slice()) {
        crate::files::replace_file(&path, &credentials, crate::files::Perms::mode(0o600))?;
        log::info!(cert = cert.name.as_str(), issuer = cert.issuer.as_str(); "using the fleet's ACME account");
    }
    Ok(true)
}

/// After ordering without a fleet account: offer this host's (a race between two first
/// holders is won by one; the other takes it next time).
pub(super) async fn offer(
    executor: &Executor,
    fleet: &Fleet,
    key: &FleetKey,
    cert: &Certificate,
) -> Result<()> {
    let path = account_file(executor, cert)?;
    let Some(credentials) = crate::files::read_capped(&path, 64 << 10)? else {
        return Ok(());
    };
    let credentials = zeroize::Zeroizing::new(credentials);
    let sealed = seal::seal(key, &sealed_name(&cert.issuer), 0, &credentials)?;
    if fleet.offer_account(&cert.issuer, sealed).await? {
        log::info!(cert = cert.name.as_str(), issuer = cert.issuer.as_str(); "this host's ACME account is now the fleet's");
    }
    Ok(())
}
