//! The check made before any re-issue: the web server's endpoints answer.

use crate::config::{Certificate, Config};
use crate::error::Result;
use crate::executor::{Signals, observe};

/// Before a re-issue is asked for (in-process or of the daemon): every `verify` endpoint of
/// each certificate accepts a connection, or the command fails at once, exit 78, having
/// changed nothing (`WebServer::preflight`).
pub(crate) async fn preflight(config: &Config, certs: &[&Certificate]) -> Result<()> {
    for cert in certs {
        let Some(server) = cert.server.as_ref().and_then(|s| config.servers.get(s)) else {
            continue;
        };
        let now = crate::clock::Clock::new().now();
        let in_service = observe(cert, now, &Signals::default()).leaf.is_some();
        crate::server::WebServer::new(server)
            .preflight(&cert.name, &cert.names, in_service)
            .await?;
    }
    Ok(())
}
