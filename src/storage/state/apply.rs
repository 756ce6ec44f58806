//! Applying committed entries: each command changes the active layer and takes the next store
//! revision (an auth change changes the auth state instead: [`super::auth`]); the answers go
//! back at once, before anything reaches redb.

use std::io;

use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use redb::Database;

use super::auth::apply_change;
use super::flusher::FLUSH_KEYS;
use super::reads::lookup;
use super::{Layers, StateMachine};
use crate::types::{Command, CommandResult, Entry, Proposal, StoredMembership};

/// Applying waits for the flusher while the active layer holds this many bytes.
const MAX_ACTIVE_BYTES: usize = 64 << 20;

impl StateMachine {
    /// Waits while the active layer is full, so that memory stays bounded when the disk is
    /// slower than the writes.
    pub(super) async fn room(&self) {
        loop {
            let notified = self.inner.flushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.layers().active.bytes() < MAX_ACTIVE_BYTES {
                return;
            }
            self.inner.wake_flusher();
            notified.await;
        }
    }

    /// Applies committed entries to the active layer; one result list per entry.
    pub(super) fn apply_batch(&self, entries: Vec<Entry>) -> io::Result<Vec<Vec<CommandResult>>> {
        let mut results = Vec::with_capacity(entries.len());
        let mut layers = self.inner.layers_mut();
        for entry in entries {
            let log_id = entry.log_id();
            let result = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    layers.meta.membership = StoredMembership::new(Some(log_id), m);
                    Vec::new()
                }
                EntryPayload::Normal(Proposal(commands)) => {
                    let mut out = Vec::with_capacity(commands.len());
                    for cmd in commands {
                        out.push(apply_command(&mut layers, &self.inner.db, cmd)?);
                    }
                    out
                }
            };
            results.push(result);
            layers.meta.applied = Some(log_id);
        }
        let full = layers.active.len() >= FLUSH_KEYS;
        self.inner.publish_auth(&layers.meta.auth);
        self.inner.publish(layers.meta.applied);
        drop(layers);
        if full {
            self.inner.wake_flusher();
        }
        Ok(results)
    }
}

/// Applies one command; a change to a key takes the next revision. Only a precondition or a
/// delete needs the key's current state: a plain put is applied blind.
fn apply_command(layers: &mut Layers, db: &Database, cmd: Command) -> io::Result<CommandResult> {
    match cmd {
        Command::Put {
            key,
            value,
            precondition,
        } => {
            if let Some(p) = precondition {
                let current = lookup(layers, db, &key)?.map(|(r, _)| r);
                if !p.holds(current) {
                    return Ok(CommandResult::PreconditionFailed { current });
                }
            }
            layers.meta.revision += 1;
            let revision = layers.meta.revision;
            layers.active.put(key, revision, value);
            Ok(CommandResult::Written { revision })
        }
        Command::Delete { key, precondition } => {
            let current = lookup(layers, db, &key)?.map(|(r, _)| r);
            if let Some(p) = precondition {
                if !p.holds(current) {
                    return Ok(CommandResult::PreconditionFailed { current });
                }
            }
            let existed = current.is_some();
            if existed {
                layers.meta.revision += 1;
                layers.active.delete(key);
            }
            Ok(CommandResult::Deleted { existed })
        }
        Command::Auth { change, revision } => Ok(apply_change(layers, &change, revision)),
    }
}
