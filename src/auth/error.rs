//! The auth state's refusals, with etcd's texts (`api/v3rpc/rpctypes`), which clients match.

/// Why an auth change, a login or a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// Also what a request without credentials gets, as from etcd.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token that is malformed, forged, expired, or revoked.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A change etcd refuses: deleting the root user or role, or taking the root role from
    /// the root user, while authentication is on; a permission on an empty or inverted range.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
}

impl AuthError {
    /// The error's code in the JSON error body: etcd's error name in snake case.
    pub(crate) fn code(self) -> &'static str {
        match self {
            AuthError::RootUserNotExist => "root_user_not_exist",
            AuthError::RootRoleNotExist => "root_role_not_exist",
            AuthError::UserAlreadyExist => "user_already_exist",
            AuthError::UserEmpty => "user_empty",
            AuthError::UserNotFound => "user_not_found",
            AuthError::RoleAlreadyExist => "role_already_exist",
            AuthError::RoleNotFound => "role_not_found",
            AuthError::RoleEmpty => "role_empty",
            AuthError::AuthFailed | AuthError::InvalidAuthToken => "unauthenticated",
            AuthError::PermissionDenied => "permission_denied",
            AuthError::RoleNotGranted => "role_not_granted",
            AuthError::PermissionNotGranted => "permission_not_granted",
            AuthError::AuthNotEnabled => "auth_not_enabled",
            AuthError::InvalidAuthMgmt => "invalid_auth_mgmt",
        }
    }

    /// Whether it says who is calling is unknown (HTTP 401, gRPC `Unauthenticated`), rather
    /// than what they asked for is refused.
    pub(crate) fn unauthenticated(self) -> bool {
        matches!(
            self,
            AuthError::UserEmpty | AuthError::AuthFailed | AuthError::InvalidAuthToken
        )
    }
}
