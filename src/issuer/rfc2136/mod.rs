//! dns-01 by RFC 2136 dynamic update: TXT records added to (and deleted from) a zone's primary
//! by TSIG-signed updates (RFC 8945), over TCP. Messages are built, signed and verified with
//! hickory-proto; every answer is one length-prefixed TCP message (at most 64 KiB) read within
//! a deadline. A CNAME at `_acme-challenge.NAME` is followed (asked of the resolvers, see
//! `lookup`) and the record written at its target. The zone is `dns_zone` or found by an SOA
//! query to the resolvers.

mod key;
mod lookup;
mod propagation;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, OpCode, Query, ResponseCode, update_message};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordSet, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Rfc2136;
use crate::error::{Error, Result};

use key::{Algorithm, read_key_file};

/// How long one exchange with the server may take (connect, send, answer).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The challenge record's TTL: short, it lives for one validation.
const TXT_TTL: u32 = 60;
/// TSIG's allowed clock difference (RFC 8945 §10 recommends 300 s).
const FUDGE: u16 = 300;

/// A signed-update client for one primary.
pub(crate) struct Updater {
    server: SocketAddr,
    /// Where SOA, NS, CNAME and address lookups go (`dns_resolvers`, else the system's).
    resolvers: Vec<SocketAddr>,
    signer: TSigner,
    key_name: String,
    zone: Option<String>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rfc2136::Updater({}, key {:?}, secret <redacted>)",
            self.server, self.key_name
        )
    }
}

/// Where a TXT record was added, to delete exactly it afterwards.
#[derive(Clone, Debug)]
pub(crate) struct Added {
    pub(crate) zone: String,
    pub(crate) name: String,
    pub(crate) value: String,
}

impl Updater {
    pub(crate) fn new(cfg: &Rfc2136) -> Result<Updater> {
        let key = read_key_file(&cfg.tsig_key_file)?;
        let algorithm = match key.algorithm {
            Algorithm::HmacSha256 => TsigAlgorithm::HmacSha256,
            Algorithm::HmacSha384 => TsigAlgorithm::HmacSha384,
            Algorithm::HmacSha512 => TsigAlgorithm::HmacSha512,
        };
        let name = Name::from_ascii(format!("{}.", key.name))
            .map_err(|e| Error::msg(format!("invalid TSIG key name {:?}: {e}", key.name)))?;
        // hickory keeps its own (non-zeroizing) copy of the secret for the signer's lifetime.
        let signer = TSigner::new(key.secret.to_vec(), algorithm, name, FUDGE)
            .map_err(|e| Error::msg(format!("failed to set up the TSIG key: {e}")))?;
        let resolvers = match &cfg.resolvers {
            Some(r) => r.clone(),
            None => lookup::system_resolvers(),
        };
        Ok(Updater {
            server: cfg.server,
            resolvers,
            signer,
            key_name: key.name,
            zone: cfg.zone.clone(),
        })
    }

    /// Where the TXT record `_acme-challenge.IDENT` = `value` goes: its name (after a CNAME
    /// chain) and zone. Nothing is changed yet.
    pub(crate) async fn locate(&self, ident: &str, value: &str) -> Result<Added> {
        let ident = ident.trim_start_matches("*.").trim_end_matches('.');
        let asked = format!("_acme-challenge.{ident}").to_ascii_lowercase();
        let name = self.follow_cname(&asked).await?;
        // A delegated record lives in its target's zone, which `dns_zone` does not name.
        let zone = match &self.zone {
            Some(z) if name == asked => z.clone(),
            _ => self.find_zone(&name).await?,
        };
        if !(name == zone || name.ends_with(&format!(".{zone}"))) {
            return Err(
                Error::msg(format!("{name:?} is not in the DNS zone {zone:?}"))
                    .with_hint("set dns_zone to the zone the names are in"),
            );
        }
        Ok(Added {
            zone,
            name,
            value: value.to_string(),
        })
    }

    /// Add the record `located` names to its zone.
    pub(crate) async fn add(&self, located: &Added) -> Result<()> {
        let msg = update_message::append(self.rrset(located)?, fqdn(&located.zone)?, false, false);
        self.update(msg, &located.zone).await
    }

    /// `locate` then `add`.
    #[cfg(test)]
    pub(crate) async fn add_challenge(&self, ident: &str, value: &str) -> Result<Added> {
        let added = self.locate(ident, value).await?;
        self.add(&added).await?;
        Ok(added)
    }

    /// Delete exactly the record `added` (other TXT values at the name stay).
    pub(crate) async fn delete(&self, added: &Added) -> Result<()> {
        let msg = update_message::delete_by_rdata(self.rrset(added)?, fqdn(&added.zone)?, false);
        self.update(msg, &added.zone).await
    }

    fn rrset(&self, added: &Added) -> Result<RecordSet> {
        let mut rrset = RecordSet::with_ttl(fqdn(&added.name)?, RecordType::TXT, TXT_TTL);
        rrset.set_dns_class(DNSClass::IN);
        rrset.add_rdata(RData::TXT(TXT::new(vec![added.value.clone()])));
        Ok(rrset)
    }

    /// Send a signed update; any answer but a verified NOERROR is an error naming the server
    /// and what it said.
    async fn update(&self, mut msg: Message, zone: &str) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut verifier = msg
            .finalize(&self.signer, now)
            .map_err(|e| Error::msg(format!("failed to sign the DNS update: {e}")))?
            .ok_or_else(|| Error::msg("failed to sign the DNS update"))?;
        let bytes = self.exchange(&msg).await?;
        let answer = decode(&bytes, self.server)?;
        if answer.id != msg.id || answer.op_code != OpCode::Update {
            return Err(Error::msg(format!(
                "the DNS server {} answered the update with another message",
                self.server
            )));
        }
        if answer.response_code != ResponseCode::NoError {
            let tsig = answer
                .signature
                .as_ref()
                .and_then(|s| s.data.error)
                .map(|e| format!(" (TSIG error {e:?})"))
                .unwrap_or_default();
            return Err(Error::msg(format!(
                "the DNS server {} refused the update of zone {zone:?}: {}{tsig}",
                self.server,
                rcode_name(answer.response_code)
            ))
            .with_hint(format!(
                "check tsig_key_file (key {:?}: its name, algorithm and secret must be the server's) and that the server's update-policy lets this key change TXT records in {zone:?}",
                self.key_name
            )));
        }
        verifier.verify(&bytes).map_err(|e| {
            Error::msg(format!(
                "the DNS server {}'s answer to the update is not signed by key {:?}: {e}",
                self.server, self.key_name
            ))
        })?;
        Ok(())
    }

    /// Where the record for `name` is written: `name`, or the end of the CNAME chain the
    /// resolvers find at it (dns-01 delegation, RFC 8555 §8.4 allows following CNAMEs).
    async fn follow_cname(&self, name: &str) -> Result<String> {
        let mut current = name.to_string();
        for _ in 0..8 {
            let (answer, _) = self.lookup(&current, RecordType::CNAME).await?;
            let target = answer.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c)
                    if r.name
                        .to_ascii()
                        .trim_end_matches('.')
                        .eq_ignore_ascii_case(&current) =>
                {
                    Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase())
                }
                _ => None,
            });
            match target {
                Some(t) => {
                    log::info!(record = current.as_str(), target = t.as_str(); "dns-01 record delegated by CNAME");
                    current = t;
                }
                None => return Ok(current),
            }
        }
        Err(Error::msg(format!(
            "the CNAME chain at {name:?} is longer than 8 links"
        )))
    }

    /// The zone `name` is in: the owner of the SOA record in the answer (or, for a name that
    /// does not exist, in the authority section) of an SOA query to the resolvers.
    async fn find_zone(&self, name: &str) -> Result<String> {
        let (answer, asked) = self.lookup(name, RecordType::SOA).await?;
        let soa = answer
            .answers
            .iter()
            .chain(answer.authorities.iter())
            .find(|r| r.record_type() == RecordType::SOA);
        match soa {
            Some(r)
                if matches!(
                    answer.response_code,
                    ResponseCode::NoError | ResponseCode::NXDomain
                ) =>
            {
                Ok(r.name.to_ascii().trim_end_matches('.').to_ascii_lowercase())
            }
            _ => Err(Error::msg(format!(
                "the DNS resolver {asked} named no zone for {name:?} ({})",
                rcode_name(answer.response_code)
            ))
            .with_hint("set dns_zone, or dns_resolvers to servers that resolve it")),
        }
    }

    async fn exchange(&self, msg: &Message) -> Result<Vec<u8>> {
        exchange(self.server, msg).await
    }
}

/// An unsigned query over TCP to `server`: to a resolver with recursion desired, to an
/// authoritative server without.
pub(crate) async fn query_at(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    recursion: bool,
) -> Result<Message> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = recursion;
    msg.add_query(Query::query(fqdn(name)?, rtype));
    let bytes = exchange(server, &msg).await?;
    let answer = decode(&bytes, server)?;
    if answer.id != msg.id {
        return Err(Error::msg(format!(
            "the DNS server {server} answered with another message"
        )));
    }
    Ok(answer)
}

/// One length-prefixed message out and one back over TCP (RFC 1035 §4.2.2), bounded in
/// time; the 16-bit length bounds the answer at 64 KiB.
async fn exchange(server: SocketAddr, msg: &Message) -> Result<Vec<u8>> {
    let out = msg
        .to_vec()
        .map_err(|e| Error::msg(format!("failed to encode a DNS message: {e}")))?;
    let len = u16::try_from(out.len()).map_err(|_| Error::msg("DNS message too long"))?;
    let io = async move {
        let mut s = tokio::net::TcpStream::connect(server).await?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&out);
        s.write_all(&framed).await?;
        let n = s.read_u16().await? as usize;
        let mut back = vec![0u8; n];
        s.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, io).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(Error::msg(format!(
            "failed to reach the DNS server {server} over TCP: {e}"
        ))
        .with_hint("check dns_server: the primary's address and port")
        .unavailable()),
        Err(_) => Err(Error::msg(format!(
            "the DNS server {server} did not answer within {}s",
            EXCHANGE_TIMEOUT.as_secs()
        ))
        .unavailable()),
    }
}

fn decode(bytes: &[u8], server: SocketAddr) -> Result<Message> {
    Message::from_vec(bytes).map_err(|e| {
        Error::msg(format!(
            "the DNS server {server} sent a malformed answer: {e}"
        ))
    })
}

fn fqdn(name: &str) -> Result<Name> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| Error::msg(format!("{name:?} is not a DNS name: {e}")))
}

/// The rcode as operators know it from dig and the RFCs.
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

/// The TXT values at `name` in `answer`.
pub(crate) fn txt_values(answer: &Message, name: &str) -> Vec<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    answer
        .answers
        .iter()
        .filter(|r| {
            r.name
                .to_ascii()
                .trim_end_matches('.')
                .eq_ignore_ascii_case(&name)
        })
        .filter_map(|r: &Record| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers every message with `code`, unsigned.
    async fn fake_server(code: ResponseCode) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let n = s.read_u16().await.unwrap() as usize;
                let mut buf = vec![0u8; n];
                s.read_exact(&mut buf).await.unwrap();
                let query = Message::from_vec(&buf).unwrap();
                let answer = Message::error_msg(query.id, query.op_code, code)
                    .to_vec()
                    .unwrap();
                let mut out = (answer.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&answer);
                s.write_all(&out).await.unwrap();
            }
        });
        addr
    }

    fn updater(server: SocketAddr) -> Updater {
        let name = Name::from_ascii("k.").unwrap();
        Updater {
            server,
            resolvers: vec![server],
            signer: TSigner::new(vec![7; 32], TsigAlgorithm::HmacSha256, name, FUDGE).unwrap(),
            key_name: "k".into(),
            zone: Some("example.test".into()),
        }
    }

    #[tokio::test]
    async fn an_answer_not_signed_with_the_key_is_not_taken_for_success() {
        let server = fake_server(ResponseCode::NoError).await;
        let err = updater(server)
            .add_challenge("*.example.test", "v")
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "the DNS server {server}'s answer to the update is not signed by key \"k\""
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_update_whose_answer_is_lost_may_have_been_applied() {
        // Reads the update, then hangs up: whether it was applied is unknown, so the error is
        // a temporary one (the responder then deletes the record afterwards all the same).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let n = s.read_u16().await.unwrap() as usize;
                let mut buf = vec![0u8; n];
                s.read_exact(&mut buf).await.unwrap();
            }
        });
        let u = updater(server);
        let located = Added {
            zone: "example.test".into(),
            name: "_acme-challenge.www.example.test".into(),
            value: "v".into(),
        };
        let err = u.add(&located).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_refusal_names_the_server_the_zone_and_the_rcode() {
        let server = fake_server(ResponseCode::Refused).await;
        let err = updater(server)
            .add_challenge("www.example.test", "v")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the DNS server {server} refused the update of zone \"example.test\": REFUSED")
        );
        assert_eq!(err.exit_code(), crate::error::exit::ERROR);
        let err = updater(server)
            .add_challenge("www.other.test", "v")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"_acme-challenge.www.other.test\" is not in the DNS zone \"example.test\""
        );
    }
}
