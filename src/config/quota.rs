//! Storage quota and free-space settings of `serve`: when the NOSPACE alarm rises
//! (`crate::storage::Space` describes what it does).

use clap::Args;

use crate::storage::{SpaceSettings, DEFAULT_QUOTA_BYTES, DEFAULT_RESERVE_BYTES};

#[derive(Debug, Clone, Default, Args)]
pub struct QuotaArgs {
    /// Raise the NOSPACE alarm (puts refused, deletes and reads go on) when the state database
    /// (the backend: `state.redb`, as etcd counts its backend database) is larger than this,
    /// in bytes. 0: the default, 2 GiB, as etcd's.
    #[arg(long, env = "RAFTKV_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Raise the NOSPACE alarm when the data directory's filesystem has less free space than
    /// this, in bytes: room kept for the writes under way when it rises (cleared at one and a
    /// half times this). 0: the default, 64 MiB.
    #[arg(long, env = "RAFTKV_DISK_RESERVE_BYTES", default_value_t = 0)]
    pub disk_reserve_bytes: u64,
}

impl QuotaArgs {
    /// The settings these flags ask for, defaults filled in.
    pub(crate) fn settings(&self) -> SpaceSettings {
        let or_default = |v: u64, default: u64| if v == 0 { default } else { v };
        SpaceSettings {
            quota_bytes: or_default(self.quota_backend_bytes, DEFAULT_QUOTA_BYTES),
            reserve_bytes: or_default(self.disk_reserve_bytes, DEFAULT_RESERVE_BYTES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_the_default_as_for_etcd() {
        let s = QuotaArgs::default().settings();
        assert_eq!(s.quota_bytes, 2 << 30);
        assert_eq!(s.reserve_bytes, 64 << 20);
        let s = QuotaArgs {
            quota_backend_bytes: 5,
            disk_reserve_bytes: 7,
        }
        .settings();
        assert_eq!((s.quota_bytes, s.reserve_bytes), (5, 7));
    }
}
