//! Before the CA is told to look: every authoritative server of the zone serves the new TXT
//! value. The zone's NS records and their addresses are asked of the resolvers
//! (`dns_resolvers`); each name server is then asked directly, without recursion. A name server at the primary's
//! own IP address is asked at the primary's port (a primary on a non-standard port lists
//! itself); the others at port 53.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use super::{Added, Updater, query_at, txt_values};
use crate::error::{Error, Result};

impl Updater {
    /// Wait, at most `timeout`, until every name server of `added.zone` serves `added`.
    pub(crate) async fn wait_served(&self, added: &Added, timeout: Duration) -> Result<()> {
        let servers = self.name_servers(&added.zone).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        for (ns, addr) in &servers {
            loop {
                let why = match query_at(*addr, &added.name, RecordType::TXT, false).await {
                    Ok(m) if serves(&m, added) => break,
                    Ok(m) => format!("answers {}", answer_summary(&m)),
                    Err(e) => e.to_string(),
                };
                if tokio::time::Instant::now() + delay > deadline {
                    return Err(Error::msg(format!(
                        "the TXT record {} is not served by the name server {ns} ({addr}) within {}s: it {why}",
                        added.name,
                        timeout.as_secs()
                    ))
                    .with_hint(format!(
                        "check that {ns} is a secondary of {:?} that receives NOTIFY and transfers from the primary, or raise propagation_timeout",
                        added.zone
                    )));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        log::info!(record = added.name.as_str(), servers = servers.len(); "dns-01 TXT record served by every name server of the zone");
        Ok(())
    }

    /// The zone's NS names with one address each, looked up at the resolvers.
    async fn name_servers(&self, zone: &str) -> Result<Vec<(String, SocketAddr)>> {
        let (answer, asked) = self.lookup(zone, RecordType::NS).await?;
        let names: Vec<String> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(ns) => Some(ns.0.to_ascii().trim_end_matches('.').to_string()),
                _ => None,
            })
            .take(16)
            .collect();
        if names.is_empty() {
            return Err(Error::msg(format!(
                "the DNS resolver {asked} lists no NS records for the zone {zone:?}"
            ))
            .with_hint("set dns_zone to the zone's apex"));
        }
        let mut out = Vec::new();
        for ns in names {
            let ip = self.address_of(&ns).await.map_err(|e| {
                e.context(format!(
                    "failed to find the address of the name server {ns}"
                ))
            })?;
            let port = if ip == self.server.ip() {
                self.server.port()
            } else {
                53
            };
            out.push((ns, SocketAddr::new(ip, port)));
        }
        Ok(out)
    }

    async fn address_of(&self, host: &str) -> Result<IpAddr> {
        for rtype in [RecordType::A, RecordType::AAAA] {
            let (m, _) = self.lookup(host, rtype).await?;
            let ip = m.answers.iter().find_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            });
            if let Some(ip) = ip {
                return Ok(ip);
            }
        }
        Err(Error::msg(format!(
            "the DNS resolvers have no address for {host}"
        )))
    }
}

fn serves(m: &Message, added: &Added) -> bool {
    m.response_code == ResponseCode::NoError && txt_values(m, &added.name).contains(&added.value)
}

fn answer_summary(m: &Message) -> String {
    match m.response_code {
        ResponseCode::NoError => format!("{} other TXT value(s)", m.answers.len()),
        code => super::rcode_name(code),
    }
}
