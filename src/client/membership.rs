//! Membership changes through the client (admin actions, authorized and audited by the cluster).

use std::time::Duration;

use super::{Client, ClientError, ATTEMPT_TIMEOUT};
use crate::proto;

/// Time the leader takes beyond the catch-up itself: the admin check, the liveness probe and two
/// joint-consensus entries.
const CHANGE_OVERHEAD: Duration = Duration::from_secs(25);

impl Client {
    /// Add a node and promote it once it has caught up. Safe to retry: a node already a voter at
    /// the same addresses is answered with the current membership.
    pub async fn add_node(
        &self,
        mut req: proto::AddNodeRequest,
    ) -> Result<proto::MembershipResponse, ClientError> {
        if req.principal.is_empty() {
            req.principal = self.inner.config.principal.to_string();
        }
        let catch_up = match req.catch_up_timeout_ms {
            0 => Duration::from_secs(60),
            ms => Duration::from_millis(ms),
        };
        let attempt = catch_up + CHANGE_OVERHEAD;
        self.call(
            self.inner.config.call_timeout + attempt,
            attempt,
            |mut c| {
                let req = req.clone();
                async move { c.add_node(req).await }
            },
        )
        .await
    }

    /// Remove a node (voter or learner).
    pub async fn remove_node(
        &self,
        mut req: proto::RemoveNodeRequest,
    ) -> Result<proto::MembershipResponse, ClientError> {
        if req.principal.is_empty() {
            req.principal = self.inner.config.principal.to_string();
        }
        let attempt = ATTEMPT_TIMEOUT + CHANGE_OVERHEAD;
        self.call(
            self.inner.config.call_timeout + attempt,
            attempt,
            |mut c| {
                let req = req.clone();
                async move { c.remove_node(req).await }
            },
        )
        .await
    }
}
