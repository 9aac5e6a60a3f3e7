//! Having the server load what `current` points at: a reload, or for HAProxy with a
//! `runtime_socket` and a certificate with a `bundle_file`, a hot swap of the bundle through
//! the runtime API (no reload; a rollback swaps the previous bundle back the same way).

use crate::config::Certificate;
use crate::error::{Error, Result};
use crate::keys;
use crate::server::WebServer;
use crate::store::{BUNDLE, fsutil};

use super::Executor;

impl Executor {
    /// Reload `server`, or swap `cert`'s current bundle into it through its runtime API.
    pub(super) async fn load_current(&self, server: &WebServer, cert: &Certificate) -> Result<()> {
        let (Some(_), Some(crt)) = (server.runtime_socket(), cert.bundle_file.as_ref()) else {
            return server.reload().await;
        };
        let path = self.store.current_link(&cert.name).join(BUNDLE);
        let pem = fsutil::read_capped(&path, 2 * keys::MAX_PEM_BYTES)?.ok_or_else(|| {
            Error::msg(format!(
                "the current generation of {:?} has no {BUNDLE}",
                cert.name
            ))
        })?;
        let pem = zeroize::Zeroizing::new(String::from_utf8_lossy(&pem).into_owned());
        #[cfg(feature = "failpoints")]
        let pem = foreign_key_if_asked(pem);
        server.hot_swap(crt, &pem).await
    }
}

/// Failpoint `haproxy-foreign-key`: the bundle's key replaced by another one (the first swap
/// only: the rollback's swap back is left alone), as a broken pair would reach HAProxy.
#[cfg(feature = "failpoints")]
fn foreign_key_if_asked(pem: zeroize::Zeroizing<String>) -> zeroize::Zeroizing<String> {
    static USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    const END: &str = "-----END PRIVATE KEY-----\n";
    if !crate::failpoint::active("haproxy-foreign-key")
        || USED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return pem;
    }
    let Some(at) = pem.find(END) else {
        return pem;
    };
    let Ok(other) = keys::PrivateKey::generate(crate::core::KeySpec::EcdsaP256) else {
        return pem;
    };
    eprintln!("certagent: failpoint haproxy-foreign-key: swapping in another key");
    zeroize::Zeroizing::new(format!(
        "{}{}",
        other.to_pem().as_str(),
        &pem[at + END.len()..]
    ))
}
