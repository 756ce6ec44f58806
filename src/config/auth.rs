//! Authentication settings of `serve` (users, roles and tokens are in the replicated state,
//! managed with `raftkv auth|user|role`), named as etcd names them.

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// How long a token from `POST /v1/auth/authenticate` stays valid, in seconds.
    #[arg(long, env = "RAFTKV_AUTH_TOKEN_TTL", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub auth_token_ttl: u64,
    /// bcrypt cost of the password hashes this node makes (4 to 31; each step doubles the
    /// work of a login that no cached check answers).
    #[arg(long, env = "RAFTKV_BCRYPT_COST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
}

impl Default for AuthArgs {
    fn default() -> Self {
        AuthArgs {
            auth_token_ttl: 300,
            bcrypt_cost: 10,
        }
    }
}
