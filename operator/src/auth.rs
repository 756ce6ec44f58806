//! Turning authentication on through a node's HTTP API (`/v1/auth`), as
//! `raftkv role add root`, `raftkv user add root`, `raftkv user grant-role root root` and
//! `raftkv auth enable` do, each step safe to repeat: an interrupted attempt is finished by
//! the next reconcile.

use raftkv_client::auth::Auth;
use raftkv_client::Error;

/// The user and role the operator creates and acts as.
const ROOT: &str = "root";

/// Whether `e` is the node's refusal of something that exists already.
fn exists(e: &Error, code: &str) -> bool {
    e.code() == Some(code)
}

/// Whether the cluster has authentication on.
pub(crate) async fn enabled(auth: &Auth) -> Result<bool, Error> {
    Ok(auth.status().await?.enabled)
}

/// Creates role `root` and user `root` with `password` where missing (a `root` user that
/// exists gets `password`: authentication is still off, so nothing was protected by the old
/// one, and the operator must know the password it turns on), grants the role, and turns
/// authentication on. What was done, for an Event.
pub(crate) async fn enable(auth: &Auth, password: &str) -> Result<String, Error> {
    match auth.role_add(ROOT).await {
        Ok(_) => {}
        Err(e) if exists(&e, "role_already_exist") => {}
        Err(e) => return Err(e),
    }
    match auth.user_add(ROOT, Some(password)).await {
        Ok(_) => {}
        Err(e) if exists(&e, "user_already_exist") => {
            auth.user_change_password(ROOT, password).await?;
        }
        Err(e) => return Err(e),
    }
    auth.user_grant_role(ROOT, ROOT).await?;
    auth.enable().await?;
    Ok("authentication enabled: user root has role root (its password is in the cluster's root Secret)".into())
}
