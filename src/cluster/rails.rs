//! The safety rails of membership changes, as pure functions: what a member request must
//! look like, and which removals leave a cluster that still tolerates a failure.

use std::collections::BTreeSet;

use super::AdminError;
use crate::pb::admin as pb;
use crate::types::NodeId;

pub(super) fn validate_member(req: &pb::AddMemberRequest) -> Result<(), AdminError> {
    if req.id == 0 {
        return Err(AdminError::Invalid("node id 0 is reserved".into()));
    }
    for (name, addr) in [("raft_addr", &req.raft_addr), ("http_addr", &req.http_addr)] {
        if addr.is_empty() || !addr.contains(':') {
            return Err(AdminError::Invalid(format!("{name} {addr:?} must be host:port")));
        }
    }
    Ok(())
}

/// Fault tolerance of `n` voters: how many may fail with the rest still a quorum.
pub(crate) fn tolerance(n: usize) -> usize {
    n.saturating_sub(1) / 2
}

/// The rails for removing voter `id` from `voters`.
pub(crate) fn check_voter_removal(voters: &BTreeSet<NodeId>, id: NodeId, force: bool) -> Result<(), AdminError> {
    if force {
        return Ok(());
    }
    let n = voters.len();
    if n == 1 {
        return Err(AdminError::Refused(format!(
            "node {id} is the last voter; removing it would leave no cluster (use force to override)"
        )));
    }
    if tolerance(n) > 0 && tolerance(n - 1) == 0 {
        return Err(AdminError::Refused(format!(
            "removing node {id} leaves {} voters, which tolerate no failure (now {n} tolerate {}); add a member first or use force",
            n - 1,
            tolerance(n)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn tolerance_by_size() {
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(tolerance), [0, 0, 1, 1, 2, 2, 3]);
    }

    #[test]
    fn removal_rails() {
        assert!(matches!(
            check_voter_removal(&set(&[1]), 1, false),
            Err(AdminError::Refused(_))
        ));
        assert!(check_voter_removal(&set(&[1]), 1, true).is_ok());
        assert!(matches!(
            check_voter_removal(&set(&[1, 2, 3]), 3, false),
            Err(AdminError::Refused(_))
        ));
        assert!(check_voter_removal(&set(&[1, 2, 3]), 3, true).is_ok());
        assert!(check_voter_removal(&set(&[1, 2, 3, 4, 5]), 5, false).is_ok());
        assert!(check_voter_removal(&set(&[1, 2, 3, 4]), 4, false).is_ok());
        assert!(check_voter_removal(&set(&[1, 2]), 2, false).is_ok());
    }
}
