//! Where the updater looks things up (the zone's SOA, a CNAME at the challenge name, the
//! zone's NS records and their addresses): `dns_resolvers`, by default the system's (the
//! `nameserver` lines of /etc/resolv.conf), asked with recursion desired, in turn until one
//! answers. The primary (`dns_server`) only takes the updates; the propagation check then asks
//! every authoritative server directly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

use super::{Updater, query_at};
use crate::error::{Error, Result};

/// glibc reads at most three (`MAXNS`).
const MAX_SYSTEM_RESOLVERS: usize = 3;

/// The system's resolvers: `nameserver` lines of /etc/resolv.conf, port 53.
pub(super) fn system_resolvers() -> Vec<SocketAddr> {
    let text = crate::files::read_capped(Path::new("/etc/resolv.conf"), 64 * 1024)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    resolv_conf_servers(&text)
}

/// The name servers of a resolv.conf; with none, the local host (as glibc does). Addresses
/// with a zone index (`fe80::1%eth0`) are skipped: a socket address cannot carry its name.
fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .take(MAX_SYSTEM_RESOLVERS)
        .collect();
    if servers.is_empty() {
        vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)]
    } else {
        servers
    }
}

impl Updater {
    /// Ask the resolvers in turn; the first that answers (whatever its rcode) is believed.
    /// Also which one it was, for messages.
    pub(super) async fn lookup(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Message, SocketAddr)> {
        let mut last = None;
        for &resolver in &self.resolvers {
            match query_at(resolver, name, rtype, true).await {
                Ok(m) => return Ok((m, resolver)),
                Err(e) => last = Some(e),
            }
        }
        let e = last.unwrap_or_else(|| Error::msg("no DNS resolver to ask"));
        Err(e.with_hint(
            "check dns_resolvers (default: the nameserver lines of /etc/resolv.conf): they look up the zone, its name servers and their addresses",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_name_servers_and_the_local_default() {
        let text = "# generated\nsearch example.com\nnameserver 192.0.2.1\nnameserver  2001:db8::53 \n;nameserver 192.0.2.9\nnameserver fe80::1%eth0\noptions edns0\nnameserver 192.0.2.2\nnameserver 192.0.2.3\n";
        let got: Vec<String> = resolv_conf_servers(text)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["192.0.2.1:53", "[2001:db8::53]:53", "192.0.2.2:53"]);
        assert_eq!(
            resolv_conf_servers("search example.com\n")[0].to_string(),
            "127.0.0.1:53"
        );
    }
}
