//! Authentication and authorization, modelled on etcd's so that its Auth API can map onto
//! this one: users with bcrypt-hashed passwords, roles holding read / write / readwrite
//! permissions on keys and key ranges, the `root` user and role, and signed tokens with an
//! expiry.
//!
//! - [`AuthState`] ([`state`]): the users, roles and settings, replicated like the key space:
//!   every change is an [`AuthChange`](crate::types::AuthChange) in the Raft log, applied by
//!   [`AuthState::apply`] on every node in log order; the state travels in snapshots and
//!   backups with the keys.
//! - [`KeyRange`] ([`range`]): the keys a request touches, and etcd's rule for allowing it:
//!   the user's permissions must cover the whole range (a listing of a prefix that the user
//!   may read only part of is refused, not filtered).
//! - [`token`]: tokens as HMAC-SHA256 over the user, the user's token generation and an
//!   expiry, with a key kept in the replicated state, so a token issued by one node is good
//!   on every node. Deleting a user, changing its password or revoking its tokens moves its
//!   generation on, and every token issued before stops working.
//! - [`Authenticator`] ([`authenticator`]): turns the credentials a request carries (HTTP
//!   Basic, a token, a client certificate's common name) into a user, caching successful
//!   password checks: bcrypt is slow on purpose, far too slow to run on every request.
//!
//! A leaf above `types` and `codec`: it knows nothing of storage, Raft or the network.

mod authenticator;
mod error;
mod range;
mod state;
mod token;

pub(crate) use authenticator::{Authenticator, Credentials, MAX_PASSWORD_BYTES};
pub(crate) use error::AuthError;
pub(crate) use range::{prefix_end, KeyRange};
pub(crate) use state::{valid_range, AuthState};

/// The user that must exist, with the root role, before authentication can be turned on.
pub(crate) const ROOT_USER: &str = "root";
/// The role that may do everything: every key, the auth state, membership and backups.
pub(crate) const ROOT_ROLE: &str = "root";

/// What a request wants to do.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access<'a> {
    Read(&'a KeyRange),
    Write(&'a KeyRange),
    /// Managing the auth state, membership, status details, backups: the root role's.
    Admin,
}
