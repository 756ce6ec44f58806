//! [`Auth`]: the `/v1/auth` endpoints of one node (authentication, users, roles), typed, and
//! the JSON they speak, as etcd's Auth API names things: the server renders with these types
//! and every client parses with them.
//!
//! Management calls need the root role while authentication is on: give the client
//! [`Credentials`] (Basic, or a token from [`Auth::authenticate`]).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::tls::{Credentials, Tls};
use crate::Error;

/// `GET /v1/auth/status`: whether authentication is on, and the auth revision (how many
/// changes the users and roles have taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStatus {
    pub enabled: bool,
    pub revision: u64,
}

/// `POST /v1/auth/authenticate`'s body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateRequest {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for AuthenticateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthenticateRequest({})", self.name)
    }
}

/// A token: present it as `Authorization: Bearer <token>` until `expires_at`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub token: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
    /// How long it was issued for, in seconds (the server's `--auth-token-ttl`).
    pub ttl_seconds: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(expires_at: {})", self.expires_at)
    }
}

/// The answer to a change of the auth state: its revision after the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub revision: u64,
}

/// `POST /v1/auth/users`'s body: a password, or `no_password` for a user that only a client
/// certificate's common name can be (etcd's `--no-password`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAdd {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub no_password: bool,
}

impl std::fmt::Debug for UserAdd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserAdd({}, no_password: {})", self.name, self.no_password)
    }
}

/// `PUT /v1/auth/users/{name}/password`'s body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChange {
    pub password: String,
}

/// A user and its roles (`GET /v1/auth/users/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub roles: Vec<String>,
}

/// `GET /v1/auth/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    pub users: Vec<String>,
}

/// `POST /v1/auth/roles`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAdd {
    pub name: String,
}

/// A role and its permissions (`GET /v1/auth/roles/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub permissions: Vec<Permission>,
}

/// `GET /v1/auth/roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    pub roles: Vec<String>,
}

/// etcd's permission types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermissionType {
    Read,
    Write,
    Readwrite,
}

impl PermissionType {
    /// The wire name (`read`, `write`, `readwrite`).
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionType::Read => "read",
            PermissionType::Write => "write",
            PermissionType::Readwrite => "readwrite",
        }
    }
}

/// A permission on a key or a range, with etcd's encoding: an empty `range_end` is the one
/// key `key`, otherwise `[key, range_end)`, and a `range_end` of one zero byte means "every
/// key from `key` on". Keys are bytes: in JSON `key`/`range_end` are strings when they are
/// UTF-8, `key_base64`/`range_end_base64` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PermissionWire", into = "PermissionWire")]
pub struct Permission {
    pub perm_type: PermissionType,
    pub key: Bytes,
    pub range_end: Bytes,
}

/// `POST /v1/auth/roles/{name}/permissions/revoke`'s body: which permission (by its range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RangeWire", into = "RangeWire")]
pub struct PermissionRevoke {
    pub key: Bytes,
    pub range_end: Bytes,
}

#[derive(Serialize, Deserialize)]
struct PermissionWire {
    perm_type: PermissionType,
    #[serde(flatten)]
    range: RangeWire,
}

#[derive(Default, Serialize, Deserialize)]
struct RangeWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    range_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    range_end_base64: Option<String>,
}

/// A byte string as a text field, or as base64 when it is not UTF-8.
fn to_wire(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(STANDARD.encode(bytes))),
    }
}

fn from_wire(text: Option<String>, b64: Option<String>, name: &str) -> Result<Bytes, String> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(format!("give {name} or {name}_base64, not both")),
        (Some(t), None) => Ok(Bytes::from(t)),
        (None, Some(b)) => STANDARD
            .decode(b)
            .map(Bytes::from)
            .map_err(|e| format!("{name}_base64 is not base64: {e}")),
        (None, None) => Ok(Bytes::new()),
    }
}

impl TryFrom<RangeWire> for PermissionRevoke {
    type Error = String;

    fn try_from(w: RangeWire) -> Result<Self, String> {
        Ok(PermissionRevoke {
            key: from_wire(w.key, w.key_base64, "key")?,
            range_end: from_wire(w.range_end, w.range_end_base64, "range_end")?,
        })
    }
}

impl From<PermissionRevoke> for RangeWire {
    fn from(p: PermissionRevoke) -> RangeWire {
        let (key, key_base64) = to_wire(&p.key);
        let (range_end, range_end_base64) = if p.range_end.is_empty() {
            (None, None)
        } else {
            to_wire(&p.range_end)
        };
        RangeWire {
            key,
            key_base64,
            range_end,
            range_end_base64,
        }
    }
}

impl TryFrom<PermissionWire> for Permission {
    type Error = String;

    fn try_from(w: PermissionWire) -> Result<Self, String> {
        let range = PermissionRevoke::try_from(w.range)?;
        Ok(Permission {
            perm_type: w.perm_type,
            key: range.key,
            range_end: range.range_end,
        })
    }
}

impl From<Permission> for PermissionWire {
    fn from(p: Permission) -> PermissionWire {
        PermissionWire {
            perm_type: p.perm_type,
            range: PermissionRevoke {
                key: p.key,
                range_end: p.range_end,
            }
            .into(),
        }
    }
}

/// The `/v1/auth` endpoints of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Auth {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
    authorization: Option<String>,
}

/// A path segment (a user or role name), percent-encoded.
fn segment(name: &str) -> String {
    utf8_percent_encode(name, NON_ALPHANUMERIC).to_string()
}

impl Auth {
    /// A client for `endpoint` (`host:port`, `http://host:port` or `https://host:port`),
    /// with TLS settings if the endpoint needs them (`https://`, or no scheme with `tls`).
    pub fn new(endpoint: &str, tls: Option<&Tls>) -> Result<Auth, Error> {
        let ep = endpoint.trim().trim_end_matches('/');
        let base = match (ep.contains("://"), tls.is_some()) {
            (true, _) => ep.to_string(),
            (false, true) => format!("https://{ep}"),
            (false, false) => format!("http://{ep}"),
        };
        if base.split_once("://").is_none_or(|(_, host)| host.is_empty()) {
            return Err(Error::BadEndpoint {
                endpoint: endpoint.to_string(),
                reason: "no host".into(),
            });
        }
        let mut builder = reqwest::Client::builder();
        let tls = match (tls, base.starts_with("https://")) {
            (Some(tls), _) => Some(tls.clone()),
            (None, true) => Some(Tls::from_pem(None, None, None)?),
            (None, false) => None,
        };
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls(tls.with_alpn(&["http/1.1"]));
        }
        let http = builder.build().map_err(|e| Error::BadEndpoint {
            endpoint: base.clone(),
            reason: e.to_string(),
        })?;
        Ok(Auth {
            base,
            http,
            timeout: Duration::from_secs(10),
            authorization: None,
        })
    }

    /// The same client presenting `credentials` on every request.
    pub fn with_credentials(mut self, credentials: &Credentials) -> Auth {
        self.authorization = Some(credentials.authorization());
        self
    }

    /// The same client with another per-request timeout (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Auth {
        self.timeout = timeout;
        self
    }

    /// The endpoint as a base URL: what error texts name.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `POST /v1/auth/authenticate`: a token for `name` (no credentials needed).
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<Token, Error> {
        let body = AuthenticateRequest {
            name: name.to_string(),
            password: password.to_string(),
        };
        self.call(Method::POST, "/v1/auth/authenticate", Some(&body)).await
    }

    /// `GET /v1/auth/status`.
    pub async fn status(&self) -> Result<AuthStatus, Error> {
        self.call::<(), _>(Method::GET, "/v1/auth/status", None).await
    }

    /// `POST /v1/auth/enable`: refused unless user `root` exists with role `root`.
    pub async fn enable(&self) -> Result<Changed, Error> {
        self.call::<(), _>(Method::POST, "/v1/auth/enable", None).await
    }

    /// `POST /v1/auth/disable`.
    pub async fn disable(&self) -> Result<Changed, Error> {
        self.call::<(), _>(Method::POST, "/v1/auth/disable", None).await
    }

    /// `POST /v1/auth/users`: a user with `password`, or (`None`) one without a password.
    pub async fn user_add(&self, name: &str, password: Option<&str>) -> Result<Changed, Error> {
        let body = UserAdd {
            name: name.to_string(),
            password: password.map(str::to_string),
            no_password: password.is_none(),
        };
        self.call(Method::POST, "/v1/auth/users", Some(&body)).await
    }

    /// `DELETE /v1/auth/users/{name}`.
    pub async fn user_delete(&self, name: &str) -> Result<Changed, Error> {
        let path = format!("/v1/auth/users/{}", segment(name));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `GET /v1/auth/users/{name}`.
    pub async fn user_get(&self, name: &str) -> Result<User, Error> {
        let path = format!("/v1/auth/users/{}", segment(name));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `GET /v1/auth/users`.
    pub async fn user_list(&self) -> Result<Users, Error> {
        self.call::<(), _>(Method::GET, "/v1/auth/users", None).await
    }

    /// `PUT /v1/auth/users/{name}/password`: also revokes the user's tokens.
    pub async fn user_change_password(&self, name: &str, password: &str) -> Result<Changed, Error> {
        let path = format!("/v1/auth/users/{}/password", segment(name));
        let body = PasswordChange {
            password: password.to_string(),
        };
        self.call(Method::PUT, &path, Some(&body)).await
    }

    /// `POST /v1/auth/users/{name}/revoke-tokens`: every token issued to the user so far
    /// stops working.
    pub async fn user_revoke_tokens(&self, name: &str) -> Result<Changed, Error> {
        let path = format!("/v1/auth/users/{}/revoke-tokens", segment(name));
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// `PUT /v1/auth/users/{name}/roles/{role}`.
    pub async fn user_grant_role(&self, name: &str, role: &str) -> Result<Changed, Error> {
        let path = format!("/v1/auth/users/{}/roles/{}", segment(name), segment(role));
        self.call::<(), _>(Method::PUT, &path, None).await
    }

    /// `DELETE /v1/auth/users/{name}/roles/{role}`.
    pub async fn user_revoke_role(&self, name: &str, role: &str) -> Result<Changed, Error> {
        let path = format!("/v1/auth/users/{}/roles/{}", segment(name), segment(role));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `POST /v1/auth/roles`.
    pub async fn role_add(&self, name: &str) -> Result<Changed, Error> {
        let body = RoleAdd { name: name.to_string() };
        self.call(Method::POST, "/v1/auth/roles", Some(&body)).await
    }

    /// `DELETE /v1/auth/roles/{name}`: also takes it from every user that has it.
    pub async fn role_delete(&self, name: &str) -> Result<Changed, Error> {
        let path = format!("/v1/auth/roles/{}", segment(name));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `GET /v1/auth/roles/{name}`.
    pub async fn role_get(&self, name: &str) -> Result<Role, Error> {
        let path = format!("/v1/auth/roles/{}", segment(name));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `GET /v1/auth/roles`.
    pub async fn role_list(&self) -> Result<Roles, Error> {
        self.call::<(), _>(Method::GET, "/v1/auth/roles", None).await
    }

    /// `POST /v1/auth/roles/{name}/permissions`: grants `permission` (or changes the type
    /// of the one on the same range).
    pub async fn role_grant_permission(&self, name: &str, permission: &Permission) -> Result<Changed, Error> {
        let path = format!("/v1/auth/roles/{}/permissions", segment(name));
        self.call(Method::POST, &path, Some(permission)).await
    }

    /// `POST /v1/auth/roles/{name}/permissions/revoke`: removes the permission on exactly
    /// `[key, range_end)`.
    pub async fn role_revoke_permission(&self, name: &str, key: &[u8], range_end: &[u8]) -> Result<Changed, Error> {
        let path = format!("/v1/auth/roles/{}/permissions/revoke", segment(name));
        let body = PermissionRevoke {
            key: Bytes::copy_from_slice(key),
            range_end: Bytes::copy_from_slice(range_end),
        };
        self.call(Method::POST, &path, Some(&body)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let mut req: RequestBuilder = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = &self.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| Error::from_http(&self.base, self.timeout, e))?;
        let status = r.status();
        let bytes = r
            .bytes()
            .await
            .map_err(|e| Error::from_http(&self.base, self.timeout, e))?;
        if !status.is_success() {
            return Err(Error::api(&self.base, status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            endpoint: self.base.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_keep_text_keys_readable_and_any_bytes_intact() {
        let p = Permission {
            perm_type: PermissionType::Readwrite,
            key: Bytes::from_static(b"app/"),
            range_end: Bytes::from_static(b"app0"),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"perm_type":"readwrite","key":"app/","range_end":"app0"}"#);
        assert_eq!(serde_json::from_str::<Permission>(&json).unwrap(), p);

        let bin = Permission {
            perm_type: PermissionType::Read,
            key: Bytes::from_static(b"\xff\x00"),
            range_end: Bytes::new(),
        };
        let json = serde_json::to_string(&bin).unwrap();
        assert_eq!(json, r#"{"perm_type":"read","key_base64":"/wA="}"#);
        assert_eq!(serde_json::from_str::<Permission>(&json).unwrap(), bin);
        assert!(serde_json::from_str::<Permission>(r#"{"perm_type":"read","key":"a","key_base64":"YQ=="}"#).is_err());
    }
}
