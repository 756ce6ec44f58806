//! The `/v1/auth` endpoints: logging in, and managing users, roles and permissions (etcd's
//! Auth API). Each change follows the same steps: catch up with the leader, check the change
//! against the auth state now applied here (etcd's refusals, with its texts), propose it to
//! apply only at that state's revision, and catch up again so this node answers with the
//! change applied. A change that another one overtook between check and apply is checked and
//! proposed again.
//!
//! ```text
//! POST   /v1/auth/authenticate                      {name, password} -> {token, expires_at}
//! GET    /v1/auth/status                            {enabled, revision}
//! POST   /v1/auth/enable | /v1/auth/disable
//! GET    /v1/auth/users                             POST /v1/auth/users {name, password | no_password}
//! GET    /v1/auth/users/{name}                      DELETE /v1/auth/users/{name}
//! PUT    /v1/auth/users/{name}/password {password}  POST /v1/auth/users/{name}/revoke-tokens
//! PUT    /v1/auth/users/{name}/roles/{role}         DELETE /v1/auth/users/{name}/roles/{role}
//! GET    /v1/auth/roles                             POST /v1/auth/roles {name}
//! GET    /v1/auth/roles/{name}                      DELETE /v1/auth/roles/{name}
//! POST   /v1/auth/roles/{name}/permissions {perm_type, key, range_end}
//! POST   /v1/auth/roles/{name}/permissions/revoke {key, range_end}
//! ```
//! Management needs the root role while authentication is on, but for a user's own entry
//! (reading it, revoking its tokens) and a role the caller has (reading it).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use raftkv_client::auth as model;
use serde::de::DeserializeOwned;

use super::{Caller, Refusal};
use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::auth::{valid_range, AuthError, AuthState, MAX_PASSWORD_BYTES};
use crate::replica::{BarrierError, Confirmation, ProposeError, WriteError};
use crate::types::{AuthChange, Command, CommandResult, Permission, PermissionType};

/// How many times a change overtaken by another is checked and proposed again.
const ATTEMPTS: usize = 3;

type Answer<T> = Result<Json<T>, Refusal>;

pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/v1/auth/authenticate", post(authenticate))
        .route("/v1/auth/status", get(status))
        .route("/v1/auth/enable", post(enable))
        .route("/v1/auth/disable", post(disable))
        .route("/v1/auth/users", get(user_list).post(user_add))
        .route("/v1/auth/users/{name}", get(user_get).delete(user_delete))
        .route("/v1/auth/users/{name}/password", put(user_change_password))
        .route("/v1/auth/users/{name}/revoke-tokens", post(user_revoke_tokens))
        .route(
            "/v1/auth/users/{name}/roles/{role}",
            put(user_grant_role).delete(user_revoke_role),
        )
        .route("/v1/auth/roles", get(role_list).post(role_add))
        .route("/v1/auth/roles/{name}", get(role_get).delete(role_delete))
        .route("/v1/auth/roles/{name}/permissions", post(role_grant_permission))
        .route("/v1/auth/roles/{name}/permissions/revoke", post(role_revoke_permission))
}

/// The caller the layer found; none means the layer did not run, which is refused.
type Found = Option<Extension<Caller>>;

fn caller(found: Found) -> Result<Caller, Refusal> {
    found.map(|Extension(c)| c).ok_or(Refusal::Auth(AuthError::UserEmpty))
}

/// The caller, if it has the root role (or authentication is off).
fn root(found: Found) -> Result<Caller, Refusal> {
    let who = caller(found)?;
    who.require_root()?;
    Ok(who)
}

fn body<T: DeserializeOwned>(bytes: &Bytes, what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidBody(format!("{what}: {e}")).into())
}

fn password_ok(password: &str) -> Result<(), Refusal> {
    if password.is_empty() {
        return Err(ApiError::InvalidBody("the password is empty".into()).into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::InvalidBody(format!(
            "the password is {} bytes; bcrypt takes at most {MAX_PASSWORD_BYTES}",
            password.len()
        ))
        .into());
    }
    Ok(())
}

/// Waits until this node has applied everything the leader had committed when asked.
async fn catch_up(state: &ApiState) -> Result<(), Refusal> {
    let deadline = Instant::now() + state.limits.request_timeout;
    state
        .replica
        .barrier(Confirmation::ReadIndex, deadline)
        .await
        .map_err(|e| {
            match e {
                BarrierError::NoLeader(why) => ApiError::NoLeader(why),
                BarrierError::Stopped(why) => ApiError::Unavailable(why),
            }
            .into()
        })
}

/// The auth state, caught up with the leader.
async fn caught_up(state: &ApiState) -> Result<Arc<AuthState>, Refusal> {
    catch_up(state).await?;
    Ok(state.replica.state().auth())
}

/// The auth state, caught up with the leader, for `who`: a caller let through because this
/// node had authentication off is refused if, caught up, it has it on.
async fn current(state: &ApiState, who: &Caller) -> Result<Arc<AuthState>, Refusal> {
    let auth = caught_up(state).await?;
    if *who == Caller::Anyone && auth.enabled() {
        return Err(AuthError::UserEmpty.into());
    }
    Ok(auth)
}

/// Checks and proposes the change `make` builds from the current auth state (see the module
/// doc); answers the auth revision after it.
async fn change(
    state: &ApiState,
    who: &Caller,
    make: impl Fn(&AuthState) -> Result<AuthChange, Refusal>,
) -> Answer<model::Changed> {
    for _ in 0..ATTEMPTS {
        let auth = current(state, who).await?;
        let change = make(&auth)?;
        AuthState::clone(&auth).apply(&change)?;
        let command = Command::Auth {
            change,
            revision: auth.revision(),
        };
        let deadline = Instant::now() + state.limits.request_timeout;
        let (result, _) = state.replica.propose(command, deadline).await.map_err(|e| match e {
            WriteError::NoSpace(m) => ApiError::NoSpace(m),
            WriteError::Propose(ProposeError::NoLeader(m) | ProposeError::NotLeader(m)) => ApiError::NoLeader(m),
            WriteError::Propose(ProposeError::Timeout(m)) => ApiError::Timeout(m),
            WriteError::Propose(ProposeError::Unknown(m)) => {
                ApiError::BadGateway(format!("{m}; the outcome is unknown"))
            }
            WriteError::Propose(ProposeError::Stopped(m)) => ApiError::Unavailable(m),
        })?;
        match result {
            CommandResult::Written { revision } => {
                catch_up(state).await?;
                return Ok(Json(model::Changed { revision }));
            }
            CommandResult::PreconditionFailed { .. } => continue,
            CommandResult::Deleted { .. } => {
                return Err(ApiError::Internal("an auth change was answered as a delete".into()).into())
            }
        }
    }
    Err(ApiError::Admin(
        "the users and roles kept changing while this change was being made; retry".into(),
        axum::http::StatusCode::CONFLICT,
    )
    .into())
}

/// `POST /v1/auth/authenticate`: a token, for a name and password.
async fn authenticate(State(state): State<Arc<ApiState>>, bytes: Bytes) -> Answer<model::Token> {
    let req: model::AuthenticateRequest = body(&bytes, "authenticate request")?;
    let mut auth = state.replica.state().auth();
    let mut checked = state.auth.check_password(&auth, &req.name, &req.password).await;
    if checked.is_err() || !auth.enabled() {
        // Made sure of, as the layer makes sure of its refusals: the user may be new.
        auth = caught_up(&state).await?;
        checked = state.auth.check_password(&auth, &req.name, &req.password).await;
    }
    if !auth.enabled() {
        return Err(AuthError::AuthNotEnabled.into());
    }
    checked?;
    let t = state.auth.issue(&auth, &req.name)?;
    Ok(Json(model::Token {
        token: t.token,
        expires_at: t.expires_at,
        ttl_seconds: t.ttl.as_secs(),
    }))
}

async fn status(State(state): State<Arc<ApiState>>, found: Found) -> Answer<model::AuthStatus> {
    let who = caller(found)?;
    let auth = current(&state, &who).await?;
    Ok(Json(model::AuthStatus {
        enabled: auth.enabled(),
        revision: auth.revision(),
    }))
}

async fn enable(State(state): State<Arc<ApiState>>, found: Found) -> Answer<model::Changed> {
    let who = root(found)?;
    // One key for every node, made here and replicated with the change.
    let signing_key: [u8; 32] = rand::random();
    change(&state, &who, |_| Ok(AuthChange::Enable { signing_key })).await
}

async fn disable(State(state): State<Arc<ApiState>>, found: Found) -> Answer<model::Changed> {
    let who = root(found)?;
    change(&state, &who, |_| Ok(AuthChange::Disable)).await
}

async fn user_list(State(state): State<Arc<ApiState>>, found: Found) -> Answer<model::Users> {
    let who = root(found)?;
    let auth = current(&state, &who).await?;
    Ok(Json(model::Users {
        users: auth.user_names(),
    }))
}

async fn user_add(State(state): State<Arc<ApiState>>, found: Found, bytes: Bytes) -> Answer<model::Changed> {
    let who = root(found)?;
    let req: model::UserAdd = body(&bytes, "user")?;
    let password_hash = match (req.password, req.no_password) {
        (Some(_), true) => return Err(ApiError::InvalidBody("give a password or no_password, not both".into()).into()),
        (None, false) => {
            return Err(ApiError::InvalidBody(
                "a new user needs a password (or no_password: true, for a certificate's user)".into(),
            )
            .into())
        }
        (None, true) => None,
        (Some(password), false) => {
            password_ok(&password)?;
            // Refused before the (slow) hash when it is sure to be refused.
            if current(&state, &who).await?.user_view(&req.name).is_ok() {
                return Err(AuthError::UserAlreadyExist.into());
            }
            let hash = state.auth.hash_password(password).await;
            Some(hash.ok_or_else(|| ApiError::Internal("cannot hash the password".into()))?)
        }
    };
    let name = req.name;
    change(&state, &who, |_| {
        Ok(AuthChange::UserAdd {
            name: name.clone(),
            password_hash: password_hash.clone(),
        })
    })
    .await
}

async fn user_get(State(state): State<Arc<ApiState>>, found: Found, Path(name): Path<String>) -> Answer<model::User> {
    let who = caller(found)?;
    who.require_root_or(&name)?;
    let user = current(&state, &who).await?.user_view(&name)?;
    Ok(Json(model::User {
        name: user.name,
        roles: user.roles,
    }))
}

async fn user_delete(
    State(state): State<Arc<ApiState>>,
    found: Found,
    Path(name): Path<String>,
) -> Answer<model::Changed> {
    let who = root(found)?;
    change(&state, &who, |_| Ok(AuthChange::UserDelete { name: name.clone() })).await
}

async fn user_change_password(
    State(state): State<Arc<ApiState>>,
    found: Found,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Answer<model::Changed> {
    let who = root(found)?;
    let req: model::PasswordChange = body(&bytes, "password change")?;
    password_ok(&req.password)?;
    current(&state, &who).await?.user_view(&name)?;
    let hash = state
        .auth
        .hash_password(req.password)
        .await
        .ok_or_else(|| ApiError::Internal("cannot hash the password".into()))?;
    change(&state, &who, |_| {
        Ok(AuthChange::UserChangePassword {
            name: name.clone(),
            password_hash: hash.clone(),
        })
    })
    .await
}

async fn user_revoke_tokens(
    State(state): State<Arc<ApiState>>,
    found: Found,
    Path(name): Path<String>,
) -> Answer<model::Changed> {
    let who = caller(found)?;
    who.require_root_or(&name)?;
    change(&state, &who, |_| {
        Ok(AuthChange::UserRevokeTokens { name: name.clone() })
    })
    .await
}

async fn user_grant_role(
    State(state): State<Arc<ApiState>>,
    found: Found,
    Path((name, role)): Path<(String, String)>,
) -> Answer<model::Changed> {
    let who = root(found)?;
    change(&state, &who, |_| {
        Ok(AuthChange::UserGrantRole {
            name: name.clone(),
            role: role.clone(),
        })
    })
    .await
}

async fn user_revoke_role(
    State(state): State<Arc<ApiState>>,
    found: Found,
    Path((name, role)): Path<(String, String)>,
) -> Answer<model::Changed> {
    let who = root(found)?;
    change(&state, &who, |_| {
        Ok(AuthChange::UserRevokeRole {
            name: name.clone(),
            role: role.clone(),
        })
    })
    .await
}

async fn role_list(State(state): State<Arc<ApiState>>, found: Found) -> Answer<model::Roles> {
    let who = root(found)?;
    let auth = current(&state, &who).await?;
    Ok(Json(model::Roles {
        roles: auth.role_names(),
    }))
}

async fn role_add(State(state): State<Arc<ApiState>>, found: Found, bytes: Bytes) -> Answer<model::Changed> {
    let who = root(found)?;
    let req: model::RoleAdd = body(&bytes, "role")?;
    change(&state, &who, |_| Ok(AuthChange::RoleAdd { name: req.name.clone() })).await
}

async fn role_get(State(state): State<Arc<ApiState>>, found: Found, Path(name): Path<String>) -> Answer<model::Role> {
    let who = caller(found)?;
    let auth = current(&state, &who).await?;
    if let Caller::User { name: me, root: false } = &who {
        if !auth.has_role(me, &name) {
            return Err(AuthError::PermissionDenied.into());
        }
    }
    let role = auth.role_view(&name)?;
    Ok(Json(model::Role {
        name: role.name,
        permissions: role.permissions.into_iter().map(to_model).collect(),
    }))
}

async fn role_delete(
    State(state): State<Arc<ApiState>>,
    found: Found,
    Path(name): Path<String>,
) -> Answer<model::Changed> {
    let who = root(found)?;
    change(&state, &who, |_| Ok(AuthChange::RoleDelete { name: name.clone() })).await
}

async fn role_grant_permission(
    State(state): State<Arc<ApiState>>,
    found: Found,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Answer<model::Changed> {
    let who = root(found)?;
    let p: model::Permission = body(&bytes, "permission")?;
    if !valid_range(&p.key, &p.range_end) {
        return Err(ApiError::InvalidBody(
            "a permission needs a non-empty key and a range_end that is empty (the key alone), \
             above the key, or \"\\u0000\" (every key from the key on)"
                .into(),
        )
        .into());
    }
    let permission = from_model(p);
    change(&state, &who, |_| {
        Ok(AuthChange::RoleGrantPermission {
            name: name.clone(),
            permission: permission.clone(),
        })
    })
    .await
}

async fn role_revoke_permission(
    State(state): State<Arc<ApiState>>,
    found: Found,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Answer<model::Changed> {
    let who = root(found)?;
    let p: model::PermissionRevoke = body(&bytes, "permission")?;
    change(&state, &who, |_| {
        Ok(AuthChange::RoleRevokePermission {
            name: name.clone(),
            key: p.key.clone(),
            range_end: p.range_end.clone(),
        })
    })
    .await
}

fn to_model(p: Permission) -> model::Permission {
    model::Permission {
        perm_type: match p.perm_type {
            PermissionType::Read => model::PermissionType::Read,
            PermissionType::Write => model::PermissionType::Write,
            PermissionType::ReadWrite => model::PermissionType::Readwrite,
        },
        key: p.key,
        range_end: p.range_end,
    }
}

fn from_model(p: model::Permission) -> Permission {
    Permission {
        perm_type: match p.perm_type {
            model::PermissionType::Read => PermissionType::Read,
            model::PermissionType::Write => PermissionType::Write,
            model::PermissionType::Readwrite => PermissionType::ReadWrite,
        },
        key: p.key,
        range_end: p.range_end,
    }
}
