//! The connection to the fleet's etcd (made at first use and kept), the fleet key, and this
//! host's copies of the generations it installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cluster::{self, Fleet, FleetKey, Published};
use crate::config::ClusterConfig;
use crate::error::Result;

/// Largest cached record read back from the state directory.
const MAX_CACHE: u64 = 512 * 1024;

/// The connection to the fleet's etcd (made at first use and kept), the fleet key, and this
/// host's copies of the generations it installed.
pub(crate) struct FleetLink {
    pub(crate) config: ClusterConfig,
    cache_dir: PathBuf,
    conn: tokio::sync::Mutex<Option<Arc<Fleet>>>,
}

impl FleetLink {
    pub(crate) fn new(config: ClusterConfig, state_dir: &Path) -> FleetLink {
        FleetLink {
            config,
            cache_dir: state_dir.join("fleet"),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn node(&self) -> &str {
        &self.config.node
    }

    /// The connection, made now if there is none yet.
    pub(crate) async fn connect(&self) -> Result<Arc<Fleet>> {
        let mut conn = self.conn.lock().await;
        if let Some(fleet) = conn.as_ref() {
            return Ok(fleet.clone());
        }
        let fleet = Arc::new(Fleet::connect(&self.config).await?);
        *conn = Some(fleet.clone());
        Ok(fleet)
    }

    pub(super) fn key(&self) -> Result<FleetKey> {
        FleetKey::load(&self.config.fleet_key_file)
    }

    fn cache_path(&self, name: &str) -> PathBuf {
        self.cache_dir.join(format!("{name}.json"))
    }

    /// This host's copy of the last generation it installed for `name` (its key sealed, as
    /// in etcd), for healing while etcd is unreachable.
    pub(crate) fn cached(&self, name: &str) -> Option<Published> {
        use std::io::Read;
        let file = std::fs::File::open(self.cache_path(name)).ok()?;
        let mut bytes = Vec::new();
        file.take(MAX_CACHE).read_to_end(&mut bytes).ok()?;
        let key = self.cache_path(name).display().to_string();
        cluster::records::decode(&key, &bytes, MAX_CACHE as usize).ok()
    }

    pub(super) fn save_cache(&self, record: &Published) -> Result<()> {
        let bytes = cluster::records::encode(record)?;
        crate::files::ensure_dir(&self.cache_dir, 0o700)?;
        crate::files::replace_file(
            &self.cache_path(&record.name),
            &bytes,
            crate::files::Perms::mode(0o600),
        )
    }
}
