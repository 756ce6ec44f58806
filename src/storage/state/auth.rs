//! The auth state in the state machine: applying auth changes (in log order, like every
//! write), and the published copy that requests are checked against.
//!
//! The auth state lives in the metadata of the applied state ([`super::Meta`]), so it is
//! flushed with `last_applied`, carried by snapshots and backups, and replaced by an install,
//! always together with the keys.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Inner, Layers, StateMachine};
use crate::auth::AuthState;
use crate::types::{AuthChange, CommandResult};

/// Applies `change` if the auth state is still at `expected` (the revision it was checked
/// against): [`CommandResult::Written`] with the new auth revision, or
/// [`CommandResult::PreconditionFailed`] with the revision it met, changing nothing.
pub(super) fn apply_change(layers: &mut Layers, change: &AuthChange, expected: u64) -> CommandResult {
    let current = layers.meta.auth.revision();
    if current != expected {
        return CommandResult::PreconditionFailed { current: Some(current) };
    }
    let mut next = AuthState::clone(&layers.meta.auth);
    match next.apply(change) {
        Ok(()) => {
            let revision = next.revision();
            layers.meta.auth = Arc::new(next);
            CommandResult::Written { revision }
        }
        // The proposer checked the change against this very revision, so this is not
        // expected; refusing it whole keeps every node's state the same all the same.
        Err(e) => {
            tracing::warn!(change = change.name(), error = %e, "auth change refused at apply");
            CommandResult::PreconditionFailed { current: Some(current) }
        }
    }
}

impl Inner {
    /// Publishes the applied auth state, if it is not the one published already.
    pub(super) fn publish_auth(&self, auth: &Arc<AuthState>) {
        // Looked at under the read lock: applies that change no auth state (nearly all) never
        // take the write lock that the requests' checks would wait on.
        let same = Arc::ptr_eq(&self.auth.read().unwrap_or_else(|p| p.into_inner()), auth);
        if !same {
            *self.auth.write().unwrap_or_else(|p| p.into_inner()) = auth.clone();
            self.auth_enabled.store(auth.enabled(), Ordering::Release);
        }
    }
}

impl StateMachine {
    /// The applied auth state: who may do what (as of the last apply on this node).
    pub(crate) fn auth(&self) -> Arc<AuthState> {
        self.inner.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether authentication is on (as of the last apply), without a lock: what every
    /// request asks first, and with authentication off the only thing.
    pub(crate) fn auth_enabled(&self) -> bool {
        self.inner.auth_enabled.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::vote::leader_id_adv::LeaderId;
    use openraft::vote::RaftLeaderId;
    use openraft::EntryPayload;
    use redb::{Durability, ReadableDatabase};

    use super::*;
    use crate::types::{Command, Entry, LogId, Proposal};

    fn entry(index: u64, commands: Vec<Command>) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal(commands)),
        }
    }

    fn add_user(name: &str, revision: u64) -> Command {
        Command::Auth {
            change: AuthChange::UserAdd {
                name: name.into(),
                password_hash: Some("hash".into()),
            },
            revision,
        }
    }

    fn open(dir: &std::path::Path) -> StateMachine {
        StateMachine::open(&dir.join("state.redb"), &dir.join("snapshots")).expect("open the state")
    }

    #[test]
    fn an_auth_change_applies_only_at_the_revision_it_was_checked_against() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sm = open(dir.path());
        let put = Command::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            precondition: None,
        };
        let results = sm
            .apply_batch(vec![entry(1, vec![add_user("root", 0), add_user("late", 0), put])])
            .expect("apply");
        assert_eq!(
            results[0],
            vec![
                CommandResult::Written { revision: 1 },
                CommandResult::PreconditionFailed { current: Some(1) },
                CommandResult::Written { revision: 1 },
            ],
            "the second change was checked against revision 0, which the first moved on; \
             auth changes do not move the store revision"
        );
        assert_eq!(sm.auth().user_names(), ["root"]);
    }

    #[test]
    fn the_auth_state_is_stored_with_the_keys_and_travels_in_backups() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sm = open(&dir.path().join("a"));
        sm.apply_batch(vec![entry(1, vec![add_user("root", 0), add_user("app", 1)])])
            .expect("apply");
        sm.flush(Durability::Immediate).expect("flush");
        let stored = super::super::database::read_meta(&sm.inner.db.begin_read().expect("read")).expect("meta");
        assert_eq!(stored.auth.user_names(), ["app", "root"]);

        let backup = dir.path().join("backup.rkvs");
        let (meta, _) = sm
            .backup(std::fs::File::create(&backup).expect("create"))
            .expect("backup");
        let other = open(&dir.path().join("b"));
        assert!(other.auth().user_names().is_empty());
        other.install_file(&meta, backup).expect("install");
        assert_eq!(other.auth().user_names(), ["app", "root"], "published on install");
        assert_eq!(*other.auth(), *sm.auth());
    }
}
