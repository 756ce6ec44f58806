//! From the credentials a request carries to the user making it.
//!
//! Passwords are checked with bcrypt, which is slow on purpose (tens of milliseconds at
//! etcd's default cost of 10). A successful check is remembered under a SHA-256 digest of the
//! name and password, with the user's generation at the time: later requests with the same
//! credentials cost a hash and a map look-up, and a password change (which moves the
//! generation on) or a deleted user ends the entry's use. Failed checks are never remembered,
//! and at most a few run at once, so guessing costs the guesser a bcrypt each and cannot take
//! more than a few threads.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::digest;
use tokio::sync::Semaphore;

use super::token::{self, Claims};
use super::{AuthError, AuthState, ROOT_USER};

/// Remembered password checks, at most; past that the memory is cleared and refilled.
const MAX_REMEMBERED: usize = 4096;

/// bcrypt's range of costs (as Go's, which etcd uses).
const MIN_BCRYPT_COST: u32 = 4;
const MAX_BCRYPT_COST: u32 = 31;
/// bcrypt reads at most this many bytes of a password; longer ones are refused where they
/// are set, as etcd (Go's bcrypt) refuses them, rather than cut silently.
pub(crate) const MAX_PASSWORD_BYTES: usize = 72;

/// How a request says who it is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// A name and password (HTTP Basic).
    Password { user: String, password: String },
    /// A token from `POST /v1/auth/authenticate`.
    Token(String),
    /// The common name of a verified client certificate (with `--client-cert-auth`).
    Certificate(String),
}

// Never print a password or a token.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => write!(f, "Password({user})"),
            Credentials::Token(_) => write!(f, "Token"),
            Credentials::Certificate(cn) => write!(f, "Certificate({cn})"),
        }
    }
}

impl Credentials {
    /// From an `Authorization` value: `Basic base64(name:password)`, `Bearer <token>`, or a
    /// bare token (what etcd's gateway and clients send).
    pub(crate) fn from_authorization(value: &str) -> Result<Credentials, AuthError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or(("", value));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD.decode(rest.trim()).map_err(|_| AuthError::AuthFailed)?;
            let text = String::from_utf8(decoded).map_err(|_| AuthError::AuthFailed)?;
            let (user, password) = text.split_once(':').ok_or(AuthError::AuthFailed)?;
            if user.is_empty() {
                return Err(AuthError::UserEmpty);
            }
            return Ok(Credentials::Password {
                user: user.to_string(),
                password: password.to_string(),
            });
        }
        let token = if scheme.eq_ignore_ascii_case("bearer") {
            rest.trim()
        } else {
            value
        };
        if token.is_empty() {
            return Err(AuthError::InvalidAuthToken);
        }
        Ok(Credentials::Token(token.to_string()))
    }
}

/// A token as issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuedToken {
    pub(crate) token: String,
    /// Seconds since the Unix epoch.
    pub(crate) expires_at: u64,
    pub(crate) ttl: Duration,
}

/// A remembered successful password check.
struct Verified {
    user: String,
    generation: u64,
}

/// Identifies callers, issues tokens and hashes passwords for one server (see the module doc).
pub(crate) struct Authenticator {
    token_ttl: Duration,
    bcrypt_cost: u32,
    /// Read by every request with a password, written only after a bcrypt: a read lock.
    verified: RwLock<HashMap<[u8; 32], Verified>>,
    /// bcrypt runs (checks and hashes) at once, at most.
    bcrypt_slots: Semaphore,
}

/// etcd's defaults: tokens live 300 s, passwords are hashed at cost 10.
impl Default for Authenticator {
    fn default() -> Self {
        Authenticator::new(Duration::from_secs(300), 10)
    }
}

impl Authenticator {
    /// Tokens live `token_ttl` (etcd's `--auth-token-ttl`); new passwords are hashed at
    /// `bcrypt_cost` (etcd's `--bcrypt-cost`, 4 to 31).
    pub(crate) fn new(token_ttl: Duration, bcrypt_cost: u32) -> Authenticator {
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        Authenticator {
            token_ttl,
            bcrypt_cost: bcrypt_cost.clamp(MIN_BCRYPT_COST, MAX_BCRYPT_COST),
            verified: RwLock::new(HashMap::new()),
            bcrypt_slots: Semaphore::new(slots),
        }
    }

    /// The user `credentials` name, if they hold in `state`. A token must be signed with
    /// the state's key, unexpired, and of its user's current generation; a password must be
    /// the user's; a certificate's common name is taken as it is (the TLS layer verified the
    /// certificate), as etcd takes it.
    pub(crate) async fn identify(
        &self,
        state: &Arc<AuthState>,
        credentials: &Credentials,
    ) -> Result<String, AuthError> {
        match credentials {
            Credentials::Token(token) => {
                let key = state.signing_key().ok_or(AuthError::InvalidAuthToken)?;
                let claims = token::open(key, token).ok_or(AuthError::InvalidAuthToken)?;
                let current = state.user(&claims.user).map(|u| u.generation);
                if claims.expires_at <= unix_now() || current != Some(claims.generation) {
                    return Err(AuthError::InvalidAuthToken);
                }
                Ok(claims.user)
            }
            Credentials::Password { user, password } => {
                self.check_password(state, user, password).await?;
                Ok(user.clone())
            }
            Credentials::Certificate(name) if name.is_empty() => Err(AuthError::UserEmpty),
            Credentials::Certificate(name) => Ok(name.clone()),
        }
    }

    /// Checks `password` against user `name`'s hash (remembered when it holds).
    pub(crate) async fn check_password(
        &self,
        state: &Arc<AuthState>,
        name: &str,
        password: &str,
    ) -> Result<(), AuthError> {
        let user = state.user(name).ok_or(AuthError::AuthFailed)?;
        let hash = user.password_hash.clone().ok_or(AuthError::AuthFailed)?;
        let generation = user.generation;
        let digest = credential_digest(name, password);
        if self.remembered(&digest, name, generation) {
            return Ok(());
        }
        let password = password.to_string();
        let ok = self
            .bcrypt(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(AuthError::AuthFailed);
        }
        let mut verified = self.verified.write().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_REMEMBERED {
            verified.clear();
        }
        verified.insert(
            digest,
            Verified {
                user: name.to_string(),
                generation,
            },
        );
        Ok(())
    }

    fn remembered(&self, digest: &[u8; 32], name: &str, generation: u64) -> bool {
        let verified = self.verified.read().unwrap_or_else(|p| p.into_inner());
        verified
            .get(digest)
            .is_some_and(|v| v.user == name && v.generation == generation)
    }

    /// A token for user `name`, good for the token TTL from now.
    pub(crate) fn issue(&self, state: &AuthState, name: &str) -> Result<IssuedToken, AuthError> {
        if !state.enabled() {
            return Err(AuthError::AuthNotEnabled);
        }
        self.issue_for(state, name, self.token_ttl)
    }

    /// A short-lived token for the root user, for a node's own calls to its peers' admin
    /// service (etcd's `WithRoot`): `None` while authentication is off.
    pub(crate) fn internal_root_token(&self, state: &AuthState) -> Option<String> {
        if !state.enabled() {
            return None;
        }
        self.issue_for(state, ROOT_USER, Duration::from_secs(60))
            .ok()
            .map(|t| t.token)
    }

    fn issue_for(&self, state: &AuthState, name: &str, ttl: Duration) -> Result<IssuedToken, AuthError> {
        let key = state.signing_key().ok_or(AuthError::AuthNotEnabled)?;
        let user = state.user(name).ok_or(AuthError::AuthFailed)?;
        let expires_at = unix_now().saturating_add(ttl.as_secs().max(1));
        let claims = Claims {
            user: name.to_string(),
            generation: user.generation,
            expires_at,
        };
        let token = token::sign(key, &claims).map_err(|_| AuthError::InvalidAuthToken)?;
        Ok(IssuedToken { token, expires_at, ttl })
    }

    /// bcrypt of `password` at the configured cost, for a change to propose.
    pub(crate) async fn hash_password(&self, password: String) -> Option<String> {
        let cost = self.bcrypt_cost;
        self.bcrypt(move || bcrypt::hash(password, cost).ok()).await.flatten()
    }

    /// Runs a bcrypt off the async threads, a few at a time.
    async fn bcrypt<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let _slot = self.bcrypt_slots.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }
}

fn credential_digest(name: &str, password: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&(name.len() as u64).to_le_bytes());
    ctx.update(name.as_bytes());
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::AuthChange;

    const COST: u32 = 4;

    async fn state_with(auth: &Authenticator, users: &[(&str, &str)]) -> AuthState {
        let mut s = AuthState::default();
        for (name, password) in users {
            let hash = auth.hash_password(password.to_string()).await.expect("hash");
            s.apply(&AuthChange::UserAdd {
                name: name.to_string(),
                password_hash: Some(hash),
            })
            .unwrap();
        }
        s.apply(&AuthChange::UserGrantRole {
            name: "root".into(),
            role: "root".into(),
        })
        .unwrap();
        s.apply(&AuthChange::Enable { signing_key: [3; 32] }).unwrap();
        s
    }

    fn password(user: &str, password: &str) -> Credentials {
        Credentials::Password {
            user: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn authorization_headers_parse_as_basic_bearer_or_a_bare_token() {
        let basic = format!("Basic {}", STANDARD.encode("app:pa:ss"));
        assert_eq!(Credentials::from_authorization(&basic), Ok(password("app", "pa:ss")));
        assert_eq!(
            Credentials::from_authorization("Bearer abc.def"),
            Ok(Credentials::Token("abc.def".into()))
        );
        assert_eq!(
            Credentials::from_authorization("abc.def"),
            Ok(Credentials::Token("abc.def".into()))
        );
        assert_eq!(Credentials::from_authorization("Basic !!!"), Err(AuthError::AuthFailed));
        let no_name = format!("Basic {}", STANDARD.encode(":pw"));
        assert_eq!(Credentials::from_authorization(&no_name), Err(AuthError::UserEmpty));
    }

    #[tokio::test]
    async fn passwords_are_checked_and_a_change_ends_the_remembered_check() {
        let auth = Authenticator::new(Duration::from_secs(60), COST);
        let s = Arc::new(state_with(&auth, &[("root", "r"), ("app", "secret")]).await);
        assert_eq!(auth.identify(&s, &password("app", "secret")).await, Ok("app".into()));
        assert_eq!(auth.identify(&s, &password("app", "secret")).await, Ok("app".into()));
        assert_eq!(
            auth.identify(&s, &password("app", "wrong")).await,
            Err(AuthError::AuthFailed)
        );
        assert_eq!(
            auth.identify(&s, &password("ghost", "secret")).await,
            Err(AuthError::AuthFailed)
        );
        let mut changed = (*s).clone();
        let hash = auth.hash_password("other".into()).await.unwrap();
        changed
            .apply(&AuthChange::UserChangePassword {
                name: "app".into(),
                password_hash: hash,
            })
            .unwrap();
        let changed = Arc::new(changed);
        assert_eq!(
            auth.identify(&changed, &password("app", "secret")).await,
            Err(AuthError::AuthFailed),
            "the old password is not remembered past the change"
        );
        assert_eq!(
            auth.identify(&changed, &password("app", "other")).await,
            Ok("app".into())
        );
    }

    #[tokio::test]
    async fn tokens_hold_until_their_user_changes() {
        let auth = Authenticator::new(Duration::from_secs(60), COST);
        let s = Arc::new(state_with(&auth, &[("root", "r"), ("app", "secret")]).await);
        let t = auth.issue(&s, "app").unwrap();
        let token = Credentials::Token(t.token.clone());
        assert_eq!(auth.identify(&s, &token).await, Ok("app".into()));

        let mut revoked = (*s).clone();
        revoked
            .apply(&AuthChange::UserRevokeTokens { name: "app".into() })
            .unwrap();
        assert_eq!(
            auth.identify(&Arc::new(revoked), &token).await,
            Err(AuthError::InvalidAuthToken)
        );
        let mut deleted = (*s).clone();
        deleted.apply(&AuthChange::UserDelete { name: "app".into() }).unwrap();
        assert_eq!(
            auth.identify(&Arc::new(deleted), &token).await,
            Err(AuthError::InvalidAuthToken)
        );
        let mut disabled = (*s).clone();
        disabled.apply(&AuthChange::Disable).unwrap();
        disabled.apply(&AuthChange::Enable { signing_key: [4; 32] }).unwrap();
        assert_eq!(
            auth.identify(&Arc::new(disabled), &token).await,
            Err(AuthError::InvalidAuthToken),
            "turning auth off and on again voids every token"
        );
    }

    #[tokio::test]
    async fn an_expired_token_is_refused() {
        let auth = Authenticator::new(Duration::from_secs(60), COST);
        let s = Arc::new(state_with(&auth, &[("root", "r")]).await);
        let claims = Claims {
            user: "root".into(),
            generation: s.user("root").unwrap().generation,
            expires_at: unix_now() - 1,
        };
        let expired = token::sign(s.signing_key().unwrap(), &claims).unwrap();
        assert_eq!(
            auth.identify(&s, &Credentials::Token(expired)).await,
            Err(AuthError::InvalidAuthToken)
        );
    }
}
