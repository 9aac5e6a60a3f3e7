//! The connection to etcd and the fleet's records: reads, fenced writes of the published and
//! pending records, and the hosts' reports. Every request is bounded by the configured
//! timeout, so a dead cluster fails fast with a clear error instead of hanging.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};
use tokio::sync::Mutex;

use super::ClusterConfig;
use super::lock::{FleetLock, Lease};
use super::records::{
    self, HostReport, Keys, LockRecord, MAX_PENDING, MAX_PUBLISHED, MAX_SMALL, Pending, Published,
};
use crate::error::{Error, Result};

/// Largest TLS or password file read for the etcd connection.
const MAX_CREDENTIAL_FILE: u64 = 1024 * 1024;
/// The part of a fencing refusal that says what happened (tests and callers match on it).
pub const FENCED: &str = "this host no longer holds the fleet lock";

/// A connection to the fleet's etcd, as one node.
pub struct Fleet {
    pub(crate) client: Client,
    pub(crate) keys: Keys,
    node: String,
    pub(crate) lease_ttl: i64,
    pub(crate) timeout: Duration,
    /// The node's liveness lease: its `alive/NODE` key lives while the host does.
    liveness: Mutex<Option<Lease>>,
}

/// A host's last report, and whether the host is alive (its liveness lease holds). A dead
/// host's report stays, marked stale, so the fleet view still shows what it served last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostStatus {
    pub report: HostReport,
    pub alive: bool,
}

impl Fleet {
    /// Connects (lazily: the first request reaches a member), with TLS and auth as
    /// configured. `require_leader` makes a member that lost its leader refuse requests and
    /// cancel watches instead of going silent.
    pub async fn connect(config: &ClusterConfig) -> Result<Fleet> {
        records::check_segment("node name", &config.node)?;
        let endpoints = config.endpoints.join(", ");
        let options = connect_options(config)?;
        let client = bounded(
            config.request_timeout,
            &format!("connect to etcd at {endpoints}"),
            Client::connect(&config.endpoints, Some(options)),
        )
        .await?;
        Ok(Fleet {
            client,
            keys: Keys::new(&config.prefix),
            node: config.node.clone(),
            lease_ttl: config.lease_ttl_secs(),
            timeout: config.request_timeout,
            liveness: Mutex::new(None),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Who holds the lock of `name`, if anyone.
    pub async fn lock_holder(&self, name: &str) -> Result<Option<LockRecord>> {
        let key = self.keys.lock(name);
        self.get_one(&key)
            .await?
            .map(|(v, _)| records::decode(&key, &v, MAX_SMALL))
            .transpose()
    }

    /// The published record of `name` and the store's revision it was read at (watch from
    /// the next one).
    pub async fn published(&self, name: &str) -> Result<(Option<Published>, i64)> {
        records::check_segment("certificate name", name)?;
        let key = self.keys.published(name);
        let (value, revision) = self.get_at(&key).await?;
        let record = value
            .map(|v| records::decode(&key, &v, MAX_PUBLISHED))
            .transpose()?;
        Ok((record, revision))
    }

    /// The pending work a holder journalled for `name`.
    pub async fn pending(&self, name: &str) -> Result<Option<Pending>> {
        records::check_segment("certificate name", name)?;
        let key = self.keys.pending(name);
        self.get_one(&key)
            .await?
            .map(|(v, _)| records::decode(&key, &v, MAX_PENDING))
            .transpose()
    }

    /// Publishes a generation, stamped with this node and the lock's fencing token, and ends
    /// the pending work in the same transaction — only if `lock` still holds.
    pub async fn publish(&self, lock: &FleetLock, mut record: Published) -> Result<()> {
        lock.check_name(&record.name)?;
        record.node = self.node.clone();
        record.fencing_token = lock.token();
        let what = format!("publish {:?} generation {}", record.name, record.generation);
        let ops = vec![
            TxnOp::put(
                self.keys.published(&record.name),
                records::encode(&record)?,
                None,
            ),
            TxnOp::delete(self.keys.pending(&record.name), None),
        ];
        self.fenced(lock, &what, ops).await
    }

    /// Journals pending work (the sealed pending key, then the order URL once the CA
    /// answered), only if `lock` still holds.
    pub async fn journal_pending(&self, lock: &FleetLock, mut record: Pending) -> Result<()> {
        lock.check_name(&record.name)?;
        record.node = self.node.clone();
        record.fencing_token = lock.token();
        let what = format!("journal the pending order of {:?}", record.name);
        let ops = vec![TxnOp::put(
            self.keys.pending(&record.name),
            records::encode(&record)?,
            None,
        )];
        self.fenced(lock, &what, ops).await
    }

    /// Drops the pending work of the lock's certificate (an order that failed for good),
    /// only if `lock` still holds.
    pub async fn clear_pending(&self, lock: &FleetLock) -> Result<()> {
        let what = format!("clear the pending order of {:?}", lock.name());
        let ops = vec![TxnOp::delete(self.keys.pending(lock.name()), None)];
        self.fenced(lock, &what, ops).await
    }

    /// Runs `ops` if and only if the lock key still has the holder's create revision: the
    /// store refuses a holder that lost its lease, whatever its own view.
    async fn fenced(&self, lock: &FleetLock, what: &str, ops: Vec<TxnOp>) -> Result<()> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                self.keys.lock(lock.name()),
                CompareOp::Equal,
                lock.token(),
            )])
            .and_then(ops);
        let response = self
            .call(what, move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if response.succeeded() {
            return Ok(());
        }
        Err(Error::msg(format!(
            "failed to {what}: {FENCED} (fencing token {} is stale)",
            lock.token()
        ))
        .with_hint("its lease expired while it was paused or cut off; another host took over and resumes the work"))
    }

    /// Writes what this host serves for a certificate under `hosts/NODE/NAME`, and keeps
    /// this node's liveness key (`alive/NODE`, on its own lease) in place.
    pub async fn report(&self, report: &HostReport) -> Result<()> {
        records::check_segment("certificate name", &report.name)?;
        let mut report = report.clone();
        report.node = self.node.clone();
        self.ensure_alive().await?;
        let key = self.keys.report(&self.node, &report.name);
        let what = format!("report {:?} to etcd", report.name);
        let value = records::encode(&report)?;
        self.call(&what, |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    /// This node's liveness lease (granted, and `alive/NODE` written, if needed).
    pub(crate) async fn alive_lease(&self) -> Result<i64> {
        self.ensure_alive().await?;
        let liveness = self.liveness.lock().await;
        liveness
            .as_ref()
            .map(|l| l.id())
            .ok_or_else(|| Error::msg("this host's liveness lease is gone"))
    }

    /// This host's last report for `name`.
    pub async fn own_report(&self, name: &str) -> Result<Option<HostReport>> {
        records::check_segment("certificate name", name)?;
        let key = self.keys.report(&self.node, name);
        self.get_one(&key)
            .await?
            .map(|(v, _)| records::decode(&key, &v, MAX_SMALL))
            .transpose()
    }

    /// Grants the liveness lease and writes `alive/NODE` on it, unless a live one exists.
    async fn ensure_alive(&self) -> Result<()> {
        let mut liveness = self.liveness.lock().await;
        if liveness.as_ref().is_some_and(|l| !l.is_lost()) {
            return Ok(());
        }
        let lease = Lease::grant(self, "keep this host's reports alive").await?;
        let record = LockRecord {
            node: self.node.clone(),
            acquired_at: super::unix_now(),
        };
        let options = PutOptions::new().with_lease(lease.id());
        let (key, value) = (self.alive_key(&self.node), records::encode(&record)?);
        self.call("mark this host alive in etcd", |mut c| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.put(key, value, Some(options)).await }
        })
        .await?;
        *liveness = Some(lease);
        Ok(())
    }

    fn alive_key(&self, node: &str) -> String {
        format!("{}/alive/{node}", self.keys.prefix())
    }

    /// Every host's report (for one certificate, or all), each marked alive or stale.
    pub async fn reports(&self, name: Option<&str>) -> Result<Vec<HostStatus>> {
        let prefix = self.keys.hosts();
        let hosts = self
            .call("read the hosts' reports", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let alive_prefix = self.alive_key("");
        let alive = self
            .call("read which hosts are alive", |mut c| {
                let prefix = alive_prefix.clone();
                let options = GetOptions::new().with_prefix().with_keys_only();
                async move { c.get(prefix, Some(options)).await }
            })
            .await?;
        let alive: std::collections::HashSet<&[u8]> =
            alive.kvs().iter().map(|kv| kv.key()).collect();
        let mut out = Vec::new();
        for kv in hosts.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let report: HostReport = records::decode(&key, kv.value(), MAX_SMALL)?;
            if name.is_some_and(|n| n != report.name) {
                continue;
            }
            let alive_key = self.alive_key(&report.node);
            let alive = alive.contains(alive_key.as_bytes());
            out.push(HostStatus { report, alive });
        }
        Ok(out)
    }

    /// A linearizable read of one key.
    async fn read(&self, key: &str) -> Result<etcd_client::GetResponse> {
        self.call(&format!("read {key:?} from etcd"), |mut c| {
            let key = key.to_string();
            async move { c.get(key, None).await }
        })
        .await
    }

    /// Runs one request within the request timeout, retrying while etcd says it is
    /// unavailable: the client's balancer sends requests to a dead member too (a refused
    /// connection), and a cluster electing a new leader answers "unavailable" for a moment.
    /// Every request certagent makes is safe to repeat (puts of full state, fenced
    /// transactions, a lock transaction that recognises its own key).
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, mut request: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let attempt = bounded(self.timeout, what, request(self.client.clone()));
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(Retry::Again(e)))
                    if tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    drop(e);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(Retry::Again(e) | Retry::Final(e))) => return Err(e),
                Err(_) => return Err(timed_out(what, self.timeout)),
            }
        }
    }

    /// One key's value and create revision, if it exists.
    async fn get_one(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let response = self.read(key).await?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.create_revision())))
    }

    /// One key's value, and the store's revision the read saw.
    async fn get_at(&self, key: &str) -> Result<(Option<Vec<u8>>, i64)> {
        let response = self.read(key).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        Ok((
            response.kvs().first().map(|kv| kv.value().to_vec()),
            revision,
        ))
    }
}

/// gRPC status code 14, UNAVAILABLE (grpc/doc/statuscodes.md).
const GRPC_UNAVAILABLE: i32 = 14;
/// Pause between two attempts of a request etcd could not take.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const HEALTH_HINT: &str = "check that etcd is running and reachable (`etcdctl endpoint health`)";

/// A failed attempt: worth another try (etcd unavailable), or not.
pub(crate) enum Retry {
    Again(Error),
    Final(Error),
}

impl From<Retry> for Error {
    fn from(r: Retry) -> Error {
        match r {
            Retry::Again(e) | Retry::Final(e) => e,
        }
    }
}

/// A temporary failure (exit 75): etcd may answer later.
fn timed_out(what: &str, timeout: Duration) -> Error {
    Error::msg(format!(
        "failed to {what}: etcd did not answer within {} s",
        timeout.as_secs_f32()
    ))
    .with_hint(HEALTH_HINT)
    .unavailable()
}

/// Runs one etcd request with a deadline: `failed to WHAT: CAUSE`, or a timeout that names
/// the bound, so a cluster that is down never hangs a caller.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    what: &str,
    request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> std::result::Result<T, Retry> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            let error =
                Error::msg(format!("failed to {what}: {}", describe(&e))).with_hint(HEALTH_HINT);
            Err(if unavailable(&e) {
                Retry::Again(error.unavailable())
            } else {
                Retry::Final(error)
            })
        }
        Err(_) => Err(Retry::Final(timed_out(what, timeout))),
    }
}

/// Whether another attempt may work: a member refused or dropped the connection, or the
/// cluster has no leader for the moment.
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => i32::from(status.code()) == GRPC_UNAVAILABLE,
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// etcd-client's error, without the gRPC noise where a status says enough.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{} ({:?})", status.message(), status.code())
        }
        other => other.to_string(),
    }
}

fn connect_options(config: &ClusterConfig) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.request_timeout)
        .with_keep_alive(Duration::from_secs(10), config.request_timeout)
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    if let Some(tls) = tls_options(config)? {
        options = options.with_tls(tls);
    }
    match (&config.username, &config.password_file) {
        (Some(user), Some(file)) => {
            let text = read_credential(file, "etcd password file")?;
            let password = String::from_utf8_lossy(&text);
            let password = password.lines().next().unwrap_or_default();
            options = options.with_user(user.clone(), password.to_string());
        }
        (None, None) => {}
        _ => {
            return Err(Error::msg(
                "invalid [cluster]: username and password_file go together",
            ));
        }
    }
    Ok(options)
}

fn tls_options(config: &ClusterConfig) -> Result<Option<TlsOptions>> {
    let mut tls = TlsOptions::new();
    let mut any = false;
    if let Some(ca) = &config.ca_bundle {
        tls = tls.ca_certificate(Certificate::from_pem(read_credential(
            ca,
            "etcd CA bundle",
        )?));
        any = true;
    }
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let cert = read_credential(cert, "etcd client certificate")?;
            let key = read_credential(key, "etcd client key")?;
            tls = tls.identity(Identity::from_pem(cert, key));
            any = true;
        }
        (None, None) => {}
        _ => {
            return Err(Error::msg(
                "invalid [cluster]: cert_file and key_file go together",
            ));
        }
    }
    Ok(any.then_some(tls))
}

/// Reads a TLS or password file; under the unit, one in `/etc/certagent/credentials/` is
/// read from its systemd credential, like every other secret file.
fn read_credential(configured: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let path = crate::systemd::secret_path(configured);
    let path = path.as_path();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CREDENTIAL_FILE).read_to_end(&mut bytes))
        .map_err(|e| {
            Error::msg(format!(
                "failed to read the {what} {:?}: {e}",
                path.display().to_string()
            ))
        })?;
    Ok(bytes)
}

impl Fleet {
    fn account_key(&self, issuer: &str) -> String {
        format!("{}/accounts/{issuer}", self.keys.prefix())
    }

    /// The fleet's ACME account for `issuer` (sealed credentials), if one was offered.
    pub async fn shared_account(&self, issuer: &str) -> Result<Option<Vec<u8>>> {
        records::check_segment("issuer name", issuer)?;
        let key = self.account_key(issuer);
        Ok(self
            .get_one(&key)
            .await?
            .map(|(v, _)| v)
            .filter(|v| v.len() <= records::MAX_PENDING))
    }

    /// Offers this host's ACME account (sealed) as the fleet's, unless one is there already:
    /// true when it became the fleet's.
    pub async fn offer_account(&self, issuer: &str, sealed: Vec<u8>) -> Result<bool> {
        records::check_segment("issuer name", issuer)?;
        let key = self.account_key(issuer);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(key.clone(), sealed, None)]);
        let response = self
            .call("offer the ACME account to the fleet", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(response.succeeded())
    }
}
