//! Selecting records: by resource subtree, principal, decision, time range and access token (all given
//! must match).

use super::{AuditDecision, AuditError, AuditRecord};

/// Which records a query wants; `None` matches everything. `Default` matches every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// A resource subtree, segment-wise: `k8s/prod` matches `k8s/prod` and `k8s/prod/x`, not
    /// `k8s/production`. A trailing `/` is ignored; an empty prefix matches every resource.
    pub resource_prefix: Option<String>,
    /// Exactly this principal.
    pub principal: Option<String>,
    /// Exactly this decision.
    pub decision: Option<AuditDecision>,
    /// Records at or after this time (Unix ms, inclusive).
    pub since_ms: Option<u64>,
    /// Records at or before this time (Unix ms, inclusive).
    pub until_ms: Option<u64>,
    /// Exactly this `via_token`: what requests made with one access token caused.
    pub via_token: Option<String>,
}

impl AuditFilter {
    /// Rejects a filter that can match nothing by mistake: `since` after `until`.
    pub fn validate(&self) -> Result<(), AuditError> {
        match (self.since_ms, self.until_ms) {
            (Some(since_ms), Some(until_ms)) if since_ms > until_ms => {
                Err(AuditError::InvertedTimeRange { since_ms, until_ms })
            }
            _ => Ok(()),
        }
    }

    /// Whether `r` is selected.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let e = &r.entry;
        self.resource_prefix
            .as_deref()
            .is_none_or(|p| in_subtree(&e.resource, p))
            && self.principal.as_deref().is_none_or(|p| e.principal == p)
            && self.decision.is_none_or(|d| e.decision == d)
            && self.since_ms.is_none_or(|t| r.at_ms >= t)
            && self.until_ms.is_none_or(|t| r.at_ms <= t)
            && self.via_token.as_deref().is_none_or(|t| e.via_token == t)
    }
}

/// Whether `resource` is `prefix` or below it, comparing whole segments.
pub(crate) fn in_subtree(resource: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match resource.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AuditChain, AuditEntry};
    use super::*;

    fn record(resource: &str, principal: &str, decision: AuditDecision, at_ms: u64) -> AuditRecord {
        AuditChain::default().append(
            1,
            at_ms,
            AuditEntry {
                resource: resource.into(),
                principal: principal.into(),
                ..AuditEntry::new("acquire", decision)
            },
        )
    }

    fn prefix(p: &str) -> AuditFilter {
        AuditFilter {
            resource_prefix: Some(p.into()),
            ..AuditFilter::default()
        }
    }

    #[test]
    fn resource_prefix_matches_whole_segments() {
        let at = |r: &str| record(r, "agent/a", AuditDecision::Granted, 0);
        let f = prefix("k8s/prod");
        assert!(f.matches(&at("k8s/prod")));
        assert!(f.matches(&at("k8s/prod/x")));
        assert!(f.matches(&at("k8s/prod/x/y")));
        assert!(!f.matches(&at("k8s/production")));
        assert!(!f.matches(&at("k8s")));
        assert!(!f.matches(&at("db/k8s/prod")));
        assert!(prefix("k8s/prod/").matches(&at("k8s/prod/x")));
        assert!(!prefix("k8s/prod/").matches(&at("k8s/production")));
        assert!(prefix("").matches(&at("anything")));
    }

    #[test]
    fn time_bounds_are_inclusive() {
        let f = AuditFilter {
            since_ms: Some(100),
            until_ms: Some(200),
            ..AuditFilter::default()
        };
        f.validate().unwrap();
        let at = |t| record("r", "p", AuditDecision::Granted, t);
        assert!(!f.matches(&at(99)));
        assert!(f.matches(&at(100)));
        assert!(f.matches(&at(200)));
        assert!(!f.matches(&at(201)));

        let instant = AuditFilter {
            since_ms: Some(150),
            until_ms: Some(150),
            ..AuditFilter::default()
        };
        instant.validate().unwrap();
        assert!(instant.matches(&at(150)));
    }

    #[test]
    fn an_inverted_time_range_is_a_clear_error() {
        let f = AuditFilter {
            since_ms: Some(1_700_000_000_001),
            until_ms: Some(1_700_000_000_000),
            ..AuditFilter::default()
        };
        let err = f.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "the time range is inverted: since 2023-11-14T22:13:20.001Z (1700000000001 ms) is after \
             until 2023-11-14T22:13:20.000Z (1700000000000 ms); swap them"
        );
    }

    #[test]
    fn principal_and_decision_match_exactly_and_all_conditions_must_hold() {
        let r = record("k8s/prod/x", "agent/a", AuditDecision::Denied, 10);
        assert!(AuditFilter::default().matches(&r));
        let f = AuditFilter {
            resource_prefix: Some("k8s".into()),
            principal: Some("agent/a".into()),
            decision: Some(AuditDecision::Denied),
            since_ms: Some(10),
            until_ms: Some(10),
            via_token: Some("tok1".into()),
        };
        let mut r = r;
        r.entry.via_token = "tok1".into();
        assert!(f.matches(&r));
        for other in [
            AuditFilter {
                principal: Some("agent/ab".into()),
                ..f.clone()
            },
            AuditFilter {
                principal: Some("agent".into()),
                ..f.clone()
            },
            AuditFilter {
                decision: Some(AuditDecision::Granted),
                ..f.clone()
            },
            AuditFilter {
                resource_prefix: Some("db".into()),
                ..f.clone()
            },
            AuditFilter {
                via_token: Some("tok2".into()),
                ..f.clone()
            },
        ] {
            assert!(!other.matches(&r), "{other:?}");
        }
    }
}
