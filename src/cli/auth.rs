//! `raftkv auth`, `raftkv user` and `raftkv role`: authentication and its users and roles,
//! managed through the HTTP API (`/v1/auth`) as etcdctl manages etcd's, with etcdctl's verbs,
//! arguments and messages.
//!
//! New passwords come from `NAME:PASSWORD`, `--new-user-password`, or the first line of
//! standard input (etcdctl's `--interactive=false`), so that scripts never need a terminal.

use std::future::Future;
use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgAction, Args, Subcommand, ValueEnum};
use raftkv_client::auth::{Auth, Permission, PermissionType, Role};
use raftkv_client::Error;
use serde::Serialize;

use super::connect::ConnectArgs;
use super::{endpoints, Output, UsageError};
use crate::auth::prefix_end;

/// Where and how the commands reach the cluster.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// HTTP endpoints, comma-separated: URL[,URL...] (http[s]://host:port or host:port). The
    /// first that can be reached is used.
    #[arg(long, env = "RAFTKV_ENDPOINT", value_delimiter = ',', required = true)]
    pub endpoint: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuthCommand {
    /// Turn authentication on (user root must exist and have role root).
    Enable,
    /// Turn authentication off.
    Disable,
    /// Whether authentication is on, and the auth revision.
    Status,
}

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Add a user: NAME or NAME:PASSWORD (else the password is read from standard input).
    Add {
        name: String,
        /// The new user's password.
        #[arg(long, conflicts_with = "no_password")]
        new_user_password: Option<String>,
        /// A user without a password, for a client certificate's common name only.
        #[arg(long)]
        no_password: bool,
    },
    /// Delete a user (its tokens stop working).
    Delete { name: String },
    /// Show a user and its roles.
    Get { name: String },
    /// List the users.
    List,
    /// Change a user's password (read from standard input unless given); its tokens stop
    /// working.
    Passwd {
        name: String,
        #[arg(long)]
        new_user_password: Option<String>,
    },
    /// Grant a role to a user.
    GrantRole { name: String, role: String },
    /// Revoke a role from a user.
    RevokeRole { name: String, role: String },
    /// Make every token issued to a user so far stop working.
    RevokeTokens { name: String },
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: RoleCommand,
}

/// etcdctl's permission types.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PermissionArg {
    Read,
    Write,
    Readwrite,
}

/// How a key argument is widened into a range: etcdctl's `--prefix` and `--from-key`.
#[derive(Debug, Clone, Args)]
pub struct RangeFlags {
    /// The key is a prefix: the permission covers every key that starts with it.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub prefix: bool,
    /// The permission covers every key from the key on.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true")]
    pub from_key: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RoleCommand {
    /// Add a role.
    Add { name: String },
    /// Delete a role (and take it from every user).
    Delete { name: String },
    /// Show a role's permissions.
    Get { name: String },
    /// List the roles.
    List,
    /// Grant a permission: ROLE read|write|readwrite KEY [RANGE_END] (the keys in
    /// [KEY, RANGE_END), or KEY alone).
    GrantPermission {
        role: String,
        perm_type: PermissionArg,
        key: String,
        range_end: Option<String>,
        #[command(flatten)]
        range: RangeFlags,
    },
    /// Revoke the permission on exactly KEY [RANGE_END] from a role.
    RevokePermission {
        role: String,
        key: String,
        range_end: Option<String>,
        #[command(flatten)]
        range: RangeFlags,
    },
}

/// The endpoints, as clients; a call goes to the first that can be reached.
struct Session {
    clients: Vec<Auth>,
    output: Output,
}

impl Session {
    fn new(target: &Target) -> anyhow::Result<Session> {
        let tls = target.connect.tls()?;
        let credentials = target.connect.credentials()?;
        let timeout = Duration::from_secs(target.timeout);
        let mut clients = Vec::new();
        for ep in endpoints(&target.endpoint) {
            let mut client = Auth::new(&ep, tls.as_ref())?.with_timeout(timeout);
            if let Some(c) = &credentials {
                client = client.with_credentials(c);
            }
            clients.push(client);
        }
        if clients.is_empty() {
            return Err(UsageError("--endpoint names no endpoint".into()).into());
        }
        Ok(Session {
            clients,
            output: target.output,
        })
    }

    /// Runs `call` on the first endpoint that can be reached; one that answers ends the
    /// search, whatever it answers.
    async fn call<T, F, Fut>(&self, call: F) -> anyhow::Result<T>
    where
        F: Fn(Auth) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut failures = Vec::new();
        for client in &self.clients {
            match call(client.clone()).await {
                Err(e) if e.not_sent() => failures.push(e),
                other => return Ok(other?),
            }
        }
        Err(Error::NoEndpoint { failures }.into())
    }

    /// Prints `message` (table output) or `value` as JSON.
    fn done<T: Serialize>(&self, value: &T, message: impl FnOnce() -> String) -> anyhow::Result<()> {
        match self.output {
            Output::Json => println!("{}", serde_json::to_string(value)?),
            Output::Table => println!("{}", message()),
        }
        Ok(())
    }
}

pub async fn run_auth(args: AuthArgs) -> anyhow::Result<()> {
    let s = Session::new(&args.target)?;
    match args.command {
        AuthCommand::Enable => {
            let r = s.call(|c| async move { c.enable().await }).await?;
            s.done(&r, || "Authentication Enabled".into())
        }
        AuthCommand::Disable => {
            let r = s.call(|c| async move { c.disable().await }).await?;
            s.done(&r, || "Authentication Disabled".into())
        }
        AuthCommand::Status => {
            let r = s.call(|c| async move { c.status().await }).await?;
            s.done(&r, || {
                format!("Authentication Status: {}\nAuthRevision: {}", r.enabled, r.revision)
            })
        }
    }
}

pub async fn run_user(args: UserArgs) -> anyhow::Result<()> {
    let s = Session::new(&args.target)?;
    match args.command {
        UserCommand::Add {
            name,
            new_user_password,
            no_password,
        } => {
            let (name, password) = match (name.split_once(':'), new_user_password) {
                (Some(_), Some(_)) => {
                    return Err(UsageError(
                        "give the password as NAME:PASSWORD or --new-user-password, not both".into(),
                    )
                    .into())
                }
                (Some((n, p)), None) => (n.to_string(), Some(p.to_string())),
                (None, Some(p)) => (name, Some(p)),
                (None, None) if no_password => (name, None),
                (None, None) => (name, Some(password_from_stdin()?)),
            };
            if no_password && password.is_some() {
                return Err(UsageError("--no-password with a password".into()).into());
            }
            let r = s
                .call(|c| {
                    let (name, password) = (name.clone(), password.clone());
                    async move { c.user_add(&name, password.as_deref()).await }
                })
                .await?;
            s.done(&r, || format!("User {name} created"))
        }
        UserCommand::Delete { name } => {
            let r = s
                .call(|c| {
                    let n = name.clone();
                    async move { c.user_delete(&n).await }
                })
                .await?;
            s.done(&r, || format!("User {name} deleted"))
        }
        UserCommand::Get { name } => {
            let u = s
                .call(|c| {
                    let n = name.clone();
                    async move { c.user_get(&n).await }
                })
                .await?;
            s.done(&u, || format!("User: {}\nRoles: {}", u.name, u.roles.join(" ")))
        }
        UserCommand::List => {
            let l = s.call(|c| async move { c.user_list().await }).await?;
            s.done(&l, || l.users.join("\n"))
        }
        UserCommand::Passwd {
            name,
            new_user_password,
        } => {
            let password = match new_user_password {
                Some(p) => p,
                None => password_from_stdin()?,
            };
            let r = s
                .call(|c| {
                    let (name, password) = (name.clone(), password.clone());
                    async move { c.user_change_password(&name, &password).await }
                })
                .await?;
            s.done(&r, || "Password updated".into())
        }
        UserCommand::GrantRole { name, role } => {
            let r = s
                .call(|c| {
                    let (name, role) = (name.clone(), role.clone());
                    async move { c.user_grant_role(&name, &role).await }
                })
                .await?;
            s.done(&r, || format!("Role {role} is granted to user {name}"))
        }
        UserCommand::RevokeRole { name, role } => {
            let r = s
                .call(|c| {
                    let (name, role) = (name.clone(), role.clone());
                    async move { c.user_revoke_role(&name, &role).await }
                })
                .await?;
            s.done(&r, || format!("Role {role} is revoked from user {name}"))
        }
        UserCommand::RevokeTokens { name } => {
            let r = s
                .call(|c| {
                    let n = name.clone();
                    async move { c.user_revoke_tokens(&n).await }
                })
                .await?;
            s.done(&r, || format!("Tokens of user {name} are revoked"))
        }
    }
}

pub async fn run_role(args: RoleArgs) -> anyhow::Result<()> {
    let s = Session::new(&args.target)?;
    match args.command {
        RoleCommand::Add { name } => {
            let r = s
                .call(|c| {
                    let n = name.clone();
                    async move { c.role_add(&n).await }
                })
                .await?;
            s.done(&r, || format!("Role {name} created"))
        }
        RoleCommand::Delete { name } => {
            let r = s
                .call(|c| {
                    let n = name.clone();
                    async move { c.role_delete(&n).await }
                })
                .await?;
            s.done(&r, || format!("Role {name} deleted"))
        }
        RoleCommand::Get { name } => {
            let role = s
                .call(|c| {
                    let n = name.clone();
                    async move { c.role_get(&n).await }
                })
                .await?;
            s.done(&role, || describe(&role))
        }
        RoleCommand::List => {
            let l = s.call(|c| async move { c.role_list().await }).await?;
            s.done(&l, || l.roles.join("\n"))
        }
        RoleCommand::GrantPermission {
            role,
            perm_type,
            key,
            range_end,
            range,
        } => {
            let (key, range_end) = permission_range(&key, range_end.as_deref(), &range)?;
            let permission = Permission {
                perm_type: match perm_type {
                    PermissionArg::Read => PermissionType::Read,
                    PermissionArg::Write => PermissionType::Write,
                    PermissionArg::Readwrite => PermissionType::Readwrite,
                },
                key,
                range_end,
            };
            let r = s
                .call(|c| {
                    let (role, permission) = (role.clone(), permission.clone());
                    async move { c.role_grant_permission(&role, &permission).await }
                })
                .await?;
            s.done(&r, || format!("Role {role} updated"))
        }
        RoleCommand::RevokePermission {
            role,
            key,
            range_end,
            range,
        } => {
            let (key, range_end) = permission_range(&key, range_end.as_deref(), &range)?;
            let r = s
                .call(|c| {
                    let (role, key, range_end) = (role.clone(), key.clone(), range_end.clone());
                    async move { c.role_revoke_permission(&role, &key, &range_end).await }
                })
                .await?;
            s.done(&r, || {
                if range_end.is_empty() {
                    format!("Permission of key {} is revoked from role {role}", shown(&key))
                } else if range_end.as_ref() == [0] {
                    format!(
                        "Permission of range [{}, <open ended> is revoked from role {role}",
                        shown(&key)
                    )
                } else {
                    format!(
                        "Permission of range [{}, {}) is revoked from role {role}",
                        shown(&key),
                        shown(&range_end)
                    )
                }
            })
        }
    }
}

/// The first line of standard input, without its line ending: a password for a script.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let line = input.lines().next().unwrap_or("").trim_end_matches('\r').to_string();
    if line.is_empty() {
        return Err(UsageError(
            "no password: give NAME:PASSWORD, --new-user-password, or the password on standard input".into(),
        )
        .into());
    }
    Ok(line)
}

/// A key argument and its flags as a permission's range, as etcdctl makes it: `--prefix`
/// covers the keys that start with KEY, `--from-key` every key from KEY on, and an empty KEY
/// with either flag every key.
fn permission_range(key: &str, range_end: Option<&str>, flags: &RangeFlags) -> Result<(Bytes, Bytes), UsageError> {
    if flags.prefix && flags.from_key {
        return Err(UsageError("--prefix and --from-key cannot be given together".into()));
    }
    if (flags.prefix || flags.from_key) && range_end.is_some() {
        return Err(UsageError(
            "a RANGE_END cannot be given with --prefix or --from-key".into(),
        ));
    }
    let open = Bytes::from_static(&[0]);
    if key.is_empty() {
        // The smallest key is the zero byte: "every key" is [\0, open end).
        let end = if flags.prefix || flags.from_key {
            open.clone()
        } else {
            Bytes::new()
        };
        return Ok((open, end));
    }
    let key = Bytes::copy_from_slice(key.as_bytes());
    let end = if flags.prefix {
        prefix_end(&key).unwrap_or(open)
    } else if flags.from_key {
        open
    } else {
        range_end.map_or_else(Bytes::new, |e| Bytes::copy_from_slice(e.as_bytes()))
    };
    Ok((key, end))
}

/// A key for people: its text, or its bytes escaped.
fn shown(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A role as `etcdctl role get` prints it.
fn describe(role: &Role) -> String {
    let mut out = format!("Role {}", role.name);
    for (title, wanted) in [
        ("KV Read:", [PermissionType::Read, PermissionType::Readwrite]),
        ("KV Write:", [PermissionType::Write, PermissionType::Readwrite]),
    ] {
        out.push('\n');
        out.push_str(title);
        for p in role.permissions.iter().filter(|p| wanted.contains(&p.perm_type)) {
            out.push_str("\n\t");
            out.push_str(&range_text(&p.key, &p.range_end));
        }
    }
    out
}

fn range_text(key: &[u8], range_end: &[u8]) -> String {
    match range_end {
        [] => shown(key),
        [0] => format!("[{}, <open ended>", shown(key)),
        end if prefix_end(key).as_deref() == Some(end) => {
            format!("[{}, {}) (prefix {})", shown(key), shown(end), shown(key))
        }
        end => format!("[{}, {})", shown(key), shown(end)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(prefix: bool, from_key: bool) -> RangeFlags {
        RangeFlags { prefix, from_key }
    }

    #[test]
    fn key_arguments_widen_into_ranges_as_etcdctl_widens_them() {
        let r = |k, e: Option<&str>, f| permission_range(k, e, &f).map(|(a, b)| (a.to_vec(), b.to_vec()));
        assert_eq!(
            r("app/", None, flags(true, false)).unwrap(),
            (b"app/".to_vec(), b"app0".to_vec())
        );
        assert_eq!(r("a", None, flags(false, true)).unwrap(), (b"a".to_vec(), vec![0]));
        assert_eq!(
            r("a", Some("c"), flags(false, false)).unwrap(),
            (b"a".to_vec(), b"c".to_vec())
        );
        assert_eq!(r("a", None, flags(false, false)).unwrap(), (b"a".to_vec(), vec![]));
        assert_eq!(
            r("", None, flags(true, false)).unwrap(),
            (vec![0], vec![0]),
            "every key"
        );
        assert!(r("a", Some("c"), flags(true, false)).is_err());
        assert!(r("a", None, flags(true, true)).is_err());
    }

    #[test]
    fn ranges_print_as_etcdctl_prints_them() {
        assert_eq!(range_text(b"app/", b"app0"), "[app/, app0) (prefix app/)");
        assert_eq!(range_text(b"a", b"c"), "[a, c)");
        assert_eq!(range_text(b"k", b""), "k");
        assert_eq!(range_text(b"k", b"\0"), "[k, <open ended>");
    }
}
