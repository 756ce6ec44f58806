//! The auth state: whether authentication is on, the users and roles, the key tokens are
//! signed with, and the auth revision, which every change moves on (etcd's auth revision).
//! Changed only by [`AuthState::apply`], in log order on every node, so every node holds the
//! same state at the same log index.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

use super::range::KeyRange;
use super::{Access, AuthError, ROOT_ROLE, ROOT_USER};
use crate::codec::{decode, encode};
use crate::types::{AuthChange, Permission, PermissionType};

/// The first byte of an encoded auth state: its format, so that a later one can be told apart.
const FORMAT: u8 = 1;

/// The replicated auth state (see the module doc).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AuthState {
    enabled: bool,
    revision: u64,
    /// Set while authentication is on; a new one each time it is turned on, so tokens from
    /// an earlier time on are void.
    signing_key: Option<[u8; 32]>,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct User {
    /// bcrypt; `None` for a user without a password (a certificate's common name only).
    pub(super) password_hash: Option<String>,
    roles: BTreeSet<String>,
    /// The auth revision at which the user's tokens were last revoked (created, password
    /// changed, tokens revoked): a token carries the generation it was issued at and is good
    /// only while the user's is still that one. A revision, so a user deleted and created
    /// again never meets its old tokens.
    pub(super) generation: u64,
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Role {
    /// In key order, one per (key, range_end), as etcd keeps them.
    permissions: Vec<Permission>,
}

/// A user as the API shows it (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserView {
    pub(crate) name: String,
    pub(crate) roles: Vec<String>,
}

/// A role as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleView {
    pub(crate) name: String,
    pub(crate) permissions: Vec<Permission>,
}

// Hashes and the signing key are secrets: debug output shows the shape only.
impl fmt::Debug for AuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthState")
            .field("enabled", &self.enabled)
            .field("revision", &self.revision)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AuthState {
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: how many changes the state has taken.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    pub(super) fn signing_key(&self) -> Option<&[u8; 32]> {
        self.signing_key.as_ref()
    }

    pub(super) fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Whether `name` is a user with the root role.
    pub(crate) fn is_root(&self, name: &str) -> bool {
        self.users.get(name).is_some_and(|u| u.roles.contains(ROOT_ROLE))
    }

    /// Whether user `name` may do `access` (with authentication off, everyone may do all).
    pub(crate) fn check(&self, name: &str, access: Access<'_>) -> Result<(), AuthError> {
        if !self.enabled || self.is_root(name) {
            return Ok(());
        }
        let Some(user) = self.users.get(name) else {
            return Err(AuthError::PermissionDenied);
        };
        let (wanted, range): (fn(PermissionType) -> bool, &KeyRange) = match access {
            Access::Read(range) => (PermissionType::reads, range),
            Access::Write(range) => (PermissionType::writes, range),
            Access::Admin => return Err(AuthError::PermissionDenied),
        };
        let granted: Vec<KeyRange> = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.permissions)
            .filter(|p| wanted(p.perm_type))
            .map(KeyRange::of_permission)
            .collect();
        if range.covered_by(&granted) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    pub(crate) fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub(crate) fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    pub(crate) fn user_view(&self, name: &str) -> Result<UserView, AuthError> {
        let user = self.users.get(name).ok_or(AuthError::UserNotFound)?;
        Ok(UserView {
            name: name.to_string(),
            roles: user.roles.iter().cloned().collect(),
        })
    }

    /// A role and its permissions; the root role shows etcd's "readwrite on every key".
    pub(crate) fn role_view(&self, name: &str) -> Result<RoleView, AuthError> {
        let role = self.roles.get(name).ok_or(AuthError::RoleNotFound)?;
        let permissions = if name == ROOT_ROLE {
            vec![Permission {
                perm_type: PermissionType::ReadWrite,
                key: bytes::Bytes::new(),
                range_end: bytes::Bytes::from_static(&[0]),
            }]
        } else {
            role.permissions.clone()
        };
        Ok(RoleView {
            name: name.to_string(),
            permissions,
        })
    }

    /// Whether user `name` holds role `role`.
    pub(crate) fn has_role(&self, name: &str, role: &str) -> bool {
        self.users.get(name).is_some_and(|u| u.roles.contains(role))
    }

    /// Applies one change, with etcd's rules; on an error nothing changed. Every change that
    /// changes something moves the revision on; one that changes nothing (enabling twice,
    /// granting a role twice) leaves it.
    pub(crate) fn apply(&mut self, change: &AuthChange) -> Result<(), AuthError> {
        let next = self.revision + 1;
        let changed = match change {
            AuthChange::Enable { signing_key } => {
                if self.enabled {
                    false
                } else {
                    let root = self.users.get(ROOT_USER).ok_or(AuthError::RootUserNotExist)?;
                    if !root.roles.contains(ROOT_ROLE) {
                        return Err(AuthError::RootRoleNotExist);
                    }
                    self.enabled = true;
                    self.signing_key = Some(*signing_key);
                    true
                }
            }
            AuthChange::Disable => {
                let was = self.enabled;
                self.enabled = false;
                self.signing_key = None;
                was
            }
            AuthChange::UserAdd { name, password_hash } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        roles: BTreeSet::new(),
                        generation: next,
                    },
                );
                true
            }
            AuthChange::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
                true
            }
            AuthChange::UserChangePassword { name, password_hash } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                // As etcd: a user made without a password stays without one.
                if user.password_hash.is_some() {
                    user.password_hash = Some(password_hash.clone());
                }
                user.generation = next;
                true
            }
            AuthChange::UserGrantRole { name, role } => {
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    // The root role may be granted before it is created, as in etcd.
                    if !self.users.contains_key(name) {
                        return Err(AuthError::UserNotFound);
                    }
                    return Err(AuthError::RoleNotFound);
                }
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.roles.insert(role.clone())
            }
            AuthChange::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                if !user.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
                true
            }
            AuthChange::UserRevokeTokens { name } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.generation = next;
                true
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role::default());
                true
            }
            AuthChange::RoleDelete { name } => {
                if self.enabled && name == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(name);
                }
                true
            }
            AuthChange::RoleGrantPermission { name, permission } => {
                if !valid_range(&permission.key, &permission.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                let at = role
                    .permissions
                    .binary_search_by(|p| (&p.key, &p.range_end).cmp(&(&permission.key, &permission.range_end)));
                match at {
                    Ok(i) => role.permissions[i].perm_type = permission.perm_type,
                    Err(i) => role.permissions.insert(i, permission.clone()),
                }
                true
            }
            AuthChange::RoleRevokePermission { name, key, range_end } => {
                let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                let before = role.permissions.len();
                role.permissions.retain(|p| p.key != *key || p.range_end != *range_end);
                if role.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                true
            }
        };
        if changed {
            self.revision = next;
        }
        Ok(())
    }

    /// The state as stored (in the state database and in snapshots): a format byte, then
    /// postcard.
    pub(crate) fn to_bytes(&self) -> io::Result<Vec<u8>> {
        let mut out = vec![FORMAT];
        out.extend_from_slice(&encode(self)?);
        Ok(out)
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> io::Result<AuthState> {
        match bytes.split_first() {
            Some((&FORMAT, rest)) => decode(rest),
            Some((other, _)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("auth state in an unknown format ({other}): written by a newer raftkv?"),
            )),
            None => Err(io::Error::new(io::ErrorKind::InvalidData, "empty auth state")),
        }
    }
}

/// etcd's rule for a permission's range: a non-empty key, and a range end that is empty (one
/// key), above the key, or the zero byte (no upper bound).
pub(crate) fn valid_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || range_end > key)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn apply(s: &mut AuthState, change: AuthChange) -> Result<(), AuthError> {
        s.apply(&change)
    }

    fn user(name: &str) -> AuthChange {
        AuthChange::UserAdd {
            name: name.into(),
            password_hash: Some("hash".into()),
        }
    }

    fn grant(user: &str, role: &str) -> AuthChange {
        AuthChange::UserGrantRole {
            name: user.into(),
            role: role.into(),
        }
    }

    fn permit(role: &str, perm_type: PermissionType, key: &str, range_end: &str) -> AuthChange {
        AuthChange::RoleGrantPermission {
            name: role.into(),
            permission: Permission {
                perm_type,
                key: Bytes::copy_from_slice(key.as_bytes()),
                range_end: Bytes::copy_from_slice(range_end.as_bytes()),
            },
        }
    }

    fn enable() -> AuthChange {
        AuthChange::Enable { signing_key: [7; 32] }
    }

    /// Auth on, with root and a user `app` whose role reads and writes under `app/`.
    fn with_app_user() -> AuthState {
        let mut s = AuthState::default();
        for c in [
            user("root"),
            grant("root", "root"),
            user("app"),
            AuthChange::RoleAdd { name: "app".into() },
            permit("app", PermissionType::ReadWrite, "app/", "app0"),
            permit("app", PermissionType::Read, "shared", ""),
            grant("app", "app"),
            enable(),
        ] {
            apply(&mut s, c).expect("set-up applies");
        }
        s
    }

    #[test]
    fn enabling_needs_a_root_user_with_the_root_role() {
        let mut s = AuthState::default();
        assert_eq!(apply(&mut s, enable()), Err(AuthError::RootUserNotExist));
        apply(&mut s, user("root")).unwrap();
        assert_eq!(apply(&mut s, enable()), Err(AuthError::RootRoleNotExist));
        apply(&mut s, grant("root", "root")).unwrap();
        apply(&mut s, enable()).unwrap();
        assert!(s.enabled());
        let rev = s.revision();
        apply(&mut s, enable()).unwrap();
        assert_eq!(s.revision(), rev, "enabling twice changes nothing");
    }

    #[test]
    fn root_cannot_be_taken_apart_while_auth_is_on() {
        let mut s = with_app_user();
        assert_eq!(
            apply(&mut s, AuthChange::UserDelete { name: "root".into() }),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            apply(
                &mut s,
                AuthChange::UserRevokeRole {
                    name: "root".into(),
                    role: "root".into()
                }
            ),
            Err(AuthError::InvalidAuthMgmt)
        );
        apply(&mut s, AuthChange::Disable).unwrap();
        apply(&mut s, AuthChange::UserDelete { name: "root".into() }).unwrap();
    }

    #[test]
    fn management_errors_are_etcds() {
        let mut s = with_app_user();
        assert_eq!(apply(&mut s, user("app")), Err(AuthError::UserAlreadyExist));
        assert_eq!(apply(&mut s, user("")), Err(AuthError::UserEmpty));
        assert_eq!(apply(&mut s, grant("app", "nope")), Err(AuthError::RoleNotFound));
        assert_eq!(apply(&mut s, grant("nobody", "app")), Err(AuthError::UserNotFound));
        assert_eq!(
            apply(&mut s, AuthChange::RoleAdd { name: "app".into() }),
            Err(AuthError::RoleAlreadyExist)
        );
        assert_eq!(
            apply(
                &mut s,
                AuthChange::UserRevokeRole {
                    name: "app".into(),
                    role: "root".into()
                }
            ),
            Err(AuthError::RoleNotGranted)
        );
        assert_eq!(
            apply(
                &mut s,
                AuthChange::RoleRevokePermission {
                    name: "app".into(),
                    key: Bytes::from_static(b"other"),
                    range_end: Bytes::new()
                }
            ),
            Err(AuthError::PermissionNotGranted)
        );
        assert_eq!(
            apply(&mut s, permit("app", PermissionType::Read, "b", "a")),
            Err(AuthError::InvalidAuthMgmt),
            "an inverted range"
        );
        let before = s.clone();
        assert!(apply(&mut s, grant("nobody", "app")).is_err());
        assert_eq!(s, before, "a refused change leaves the state as it was");
    }

    #[test]
    fn a_role_reads_and_writes_only_where_its_permissions_reach() {
        let s = with_app_user();
        let key = |k: &str| KeyRange::key(k.as_bytes());
        assert_eq!(s.check("app", Access::Write(&key("app/x"))), Ok(()));
        assert_eq!(s.check("app", Access::Read(&key("app/x"))), Ok(()));
        assert_eq!(s.check("app", Access::Read(&key("shared"))), Ok(()));
        assert_eq!(
            s.check("app", Access::Write(&key("shared"))),
            Err(AuthError::PermissionDenied),
            "read-only there"
        );
        assert_eq!(
            s.check("app", Access::Write(&key("other"))),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(s.check("app", Access::Read(&KeyRange::listing(b"app/", b""))), Ok(()));
        assert_eq!(
            s.check("app", Access::Read(&KeyRange::listing(b"", b""))),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(s.check("app", Access::Admin), Err(AuthError::PermissionDenied));
        assert_eq!(s.check("root", Access::Admin), Ok(()));
        assert_eq!(s.check("root", Access::Write(&KeyRange::listing(b"", b""))), Ok(()));
        assert_eq!(
            s.check("ghost", Access::Read(&key("app/x"))),
            Err(AuthError::PermissionDenied)
        );
    }

    #[test]
    fn deleting_a_role_takes_it_from_its_users() {
        let mut s = with_app_user();
        apply(&mut s, AuthChange::RoleDelete { name: "app".into() }).unwrap();
        assert_eq!(s.user_view("app").unwrap().roles, Vec::<String>::new());
        assert_eq!(
            s.check("app", Access::Read(&KeyRange::key(b"app/x"))),
            Err(AuthError::PermissionDenied)
        );
    }

    #[test]
    fn a_password_change_or_a_revoke_moves_the_generation_on() {
        let mut s = with_app_user();
        let g = s.user("app").unwrap().generation;
        apply(
            &mut s,
            AuthChange::UserChangePassword {
                name: "app".into(),
                password_hash: "new".into(),
            },
        )
        .unwrap();
        let g2 = s.user("app").unwrap().generation;
        assert!(g2 > g);
        apply(&mut s, AuthChange::UserRevokeTokens { name: "app".into() }).unwrap();
        assert!(s.user("app").unwrap().generation > g2);
    }

    #[test]
    fn the_state_round_trips_through_its_bytes() {
        let s = with_app_user();
        let back = AuthState::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(AuthState::from_bytes(&[9, 1, 2]).is_err());
    }
}
