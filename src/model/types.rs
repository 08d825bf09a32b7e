//! Domain types that cannot be invalid, and the records the state machine replicates.
//!
//! Owns: the validated newtypes (`ResourcePath`, `Principal`, `InstanceId`, `TaskKey`, `RequestId`,
//! `Intent`), the id/token newtypes (`LeaseId`, `FencingToken`), and the replicated records (`Lease`,
//! `Previous`, `Completion`, `Grant`).
//!
//! Invariant: a value of a validated type always satisfies its rules. Strings are checked once, at the
//! edge, by `parse`/`new`; deserialisation goes through the same checks (`serde(try_from)`), so a
//! corrupt log entry or snapshot cannot smuggle in a value that `parse` would have refused. One
//! exception: a stored resource path is checked by the rules it was written under
//! (`ResourcePath::parse_stored`), which accept spellings a new request may no longer use, so data
//! written before the canonical-path rule stays readable.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest checkpoint a holder may store on its lease. Checkpoints are replicated and snapshotted, so
/// they must stay small: store bulk progress elsewhere and checkpoint a reference to it.
pub const MAX_CHECKPOINT_BYTES: usize = 4096;

/// Bounds used by validation; public so the server and CLI can quote them in help texts.
pub const MAX_RESOURCE_BYTES: usize = 256;
pub const MAX_RESOURCE_SEGMENTS: usize = 32;
pub const MAX_PRINCIPAL_NAME_CHARS: usize = 128;
pub const MAX_INSTANCE_CHARS: usize = 128;
pub const MAX_TASK_KEY_BYTES: usize = 256;
pub const MAX_REQUEST_ID_CHARS: usize = 128;
pub const MAX_INTENT_TEXT_BYTES: usize = 1024;
pub const MAX_INTENT_LABELS: usize = 32;
pub const MAX_LABEL_KEY_CHARS: usize = 64;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// A value that failed validation. Each variant names the field, quotes the (shortened) value and says
/// what to do about it, so the message can be shown to a user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("resource {value:?}: {reason}")]
    Resource { value: String, reason: String },
    #[error("lease id {value:?}: {reason}")]
    LeaseId { value: String, reason: String },
    #[error("principal {value:?}: {reason}")]
    Principal { value: String, reason: String },
    #[error("instance {value:?}: {reason}")]
    Instance { value: String, reason: String },
    #[error("task key {value:?}: {reason}")]
    TaskKey { value: String, reason: String },
    #[error("request id {value:?}: {reason}")]
    RequestId { value: String, reason: String },
    #[error("intent text: {reason}")]
    IntentText { reason: String },
    #[error("intent labels: {count} given, at most {max} allowed")]
    TooManyLabels { count: usize, max: usize },
    #[error("intent label {key:?}: {reason}")]
    IntentLabel { key: String, reason: String },
}

/// Quote at most 80 chars of a rejected value: enough to recognise it, short enough for a log line.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

fn is_control_or_space(c: char) -> bool {
    c.is_control() || c.is_whitespace()
}

/// First character that `bad` rejects, with its byte offset, described for a message.
fn first_bad(s: &str, bad: impl Fn(char) -> bool) -> Option<String> {
    s.char_indices()
        .find(|&(_, c)| bad(c))
        .map(|(at, c)| format!("character {:?} at byte {at} is not allowed", c))
}

/// Implements the `serde(try_from = "String")` plumbing, `Serialize` as a plain string (borrowed:
/// encoding a log entry or a snapshot copies no string) and the usual accessors for a validated
/// string newtype.
macro_rules! validated_string {
    ($ty:ident) => {
        validated_string!($ty, parse);
    };
    ($ty:ident, $stored:ident) => {
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $ty {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::$stored(&s)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0.into()
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A slash-separated resource path such as `k8s/prod/payments/deploy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct ResourcePath(Box<str>);
validated_string!(ResourcePath, parse_stored);

/// Is `c` an invisible formatting character (Unicode general category Cf: bidi overrides and
/// isolates, zero-width spaces and joiners, the byte-order mark, …)? In text a human reads before
/// deciding, it can make what they see differ from what is stored (`pay\u{202e}lortnoc` shows as
/// "paycontrol").
pub fn is_format_char(c: char) -> bool {
    use unicode_general_category::{get_general_category, GeneralCategory};
    get_general_category(c) == GeneralCategory::Format
}

/// A character a reader cannot see for what it is: a control character other than a new line or a
/// tab, or an invisible formatting character.
pub fn is_hidden_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || is_format_char(c)
}

/// Text a human will read (an intent, a label, an approval's comment, a reason): no hidden
/// characters ([`is_hidden_char`]). `Err` says which character, where, for the caller's message.
pub fn check_readable_text(s: &str) -> Result<(), String> {
    match s.char_indices().find(|&(_, c)| is_hidden_char(c)) {
        Some((at, c)) => Err(format!(
            "character U+{:04X} at byte {at} is a control or invisible formatting character (a bidi \
             override, a zero-width space, …), not allowed in text a human reads",
            c as u32
        )),
        None => Ok(()),
    }
}

/// May a resource path segment contain `c`? Lower-case ASCII letters, digits and `. _ @ : -`: one
/// resource has one spelling (no case, Unicode or look-alike variants of one name).
pub fn is_resource_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '@' | ':' | '-')
}

impl ResourcePath {
    /// A resource path as a request may name it: canonical, so one resource has one spelling.
    /// Segments are non-empty, of lower-case ASCII letters, digits and `. _ @ : -`, and never `.` or
    /// `..` (`k8s/staging/../prod` would be a different lock from `k8s/prod`, and sit under
    /// `k8s/staging` for policy).
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let path = Self::parse_stored(s)?;
        let err = |reason: String| ValidationError::Resource {
            value: shown(s),
            reason,
        };
        if let Some(seg) = s.split('/').find(|seg| matches!(*seg, "." | "..")) {
            return Err(err(format!(
                "segment {seg:?} is not allowed (a path names its resource directly, with no . or .. segments)"
            )));
        }
        if let Some(why) = first_bad(s, |c| c != '/' && !is_resource_char(c)) {
            return Err(err(format!(
                "{why} (segments use lower-case a-z, digits and . _ @ : - only)"
            )));
        }
        Ok(path)
    }

    /// The rules a stored path was written under (before the canonical-path rule): non-empty
    /// segments, no whitespace or control characters, bounded length. For reading stored data and
    /// for naming resources that may predate the rule (get, revoke, fence checks, prefixes).
    pub fn parse_stored(s: &str) -> Result<Self, ValidationError> {
        let err = |reason: String| ValidationError::Resource {
            value: shown(s),
            reason,
        };
        if s.is_empty() {
            return Err(err("must not be empty (e.g. k8s/prod/payments)".to_owned()));
        }
        if s.len() > MAX_RESOURCE_BYTES {
            return Err(err(format!(
                "{} bytes long; at most {MAX_RESOURCE_BYTES} allowed",
                s.len()
            )));
        }
        if let Some(why) = first_bad(s, is_control_or_space) {
            return Err(err(format!("{why} (no whitespace or control characters)")));
        }
        let segments: Vec<&str> = s.split('/').collect();
        if segments.iter().any(|seg| seg.is_empty()) {
            let fixed: Vec<&str> = segments.into_iter().filter(|seg| !seg.is_empty()).collect();
            let reason = if fixed.is_empty() {
                "empty segment (segments are non-empty names between single slashes)".to_owned()
            } else {
                format!("empty segment (use {})", fixed.join("/"))
            };
            return Err(err(reason));
        }
        if segments.len() > MAX_RESOURCE_SEGMENTS {
            return Err(err(format!(
                "{} segments; at most {MAX_RESOURCE_SEGMENTS} allowed",
                segments.len()
            )));
        }
        Ok(Self(s.into()))
    }

    /// Segment-wise prefix match: `a/b` is within `a` and `a/b`; `a/bc` is not within `a/b`. An empty
    /// prefix matches everything; trailing slashes on the prefix are ignored (`a/` means `a`).
    pub fn is_within(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return true;
        }
        match self.0.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Lets maps keyed by `ResourcePath` be searched and ranged by `&str` (Ord/Eq agree with `String`'s).
impl Borrow<str> for ResourcePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A lease's id; shown as 16 lowercase hex digits so ids line up in logs and CLIs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for LeaseId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ValidationError::LeaseId {
            value: shown(s),
            reason: reason.to_owned(),
        };
        // Checked by hand: `from_str_radix` would also accept a leading `+`.
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(
                "must be 1 to 16 hex digits (as printed, e.g. 000000000000002a)",
            ));
        }
        u64::from_str_radix(s, 16)
            .map(LeaseId)
            .map_err(|_| err("must be 1 to 16 hex digits"))
    }
}

/// A fencing token: strictly increasing per resource; a resource rejects any token lower than the
/// highest it has seen (DESIGN rule 4).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Whether a principal is an agent or a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PrincipalKind {
    Agent,
    Human,
}

/// The authenticated caller: `agent/NAME` or `human/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Principal(Box<str>);
validated_string!(Principal);

impl Principal {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let err = |reason: String| ValidationError::Principal {
            value: shown(s),
            reason,
        };
        let Some(name) = s
            .strip_prefix("agent/")
            .or_else(|| s.strip_prefix("human/"))
        else {
            return Err(err("must look like agent/NAME or human/NAME".to_owned()));
        };
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_PRINCIPAL_NAME_CHARS {
            return Err(err(format!(
                "NAME must be 1 to {MAX_PRINCIPAL_NAME_CHARS} characters, got {chars}"
            )));
        }
        if let Some(why) = first_bad(name, |c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
        }) {
            return Err(err(format!("{why} (NAME uses A-Z a-z 0-9 . _ @ -)")));
        }
        Ok(Self(s.into()))
    }

    pub fn kind(&self) -> PrincipalKind {
        if self.0.starts_with("agent/") {
            PrincipalKind::Agent
        } else {
            PrincipalKind::Human
        }
    }

    /// The NAME after `agent/` or `human/` (both prefixes are 6 bytes, checked by `parse`).
    pub fn name(&self) -> &str {
        self.0.get(6..).unwrap_or_default()
    }
}

/// One incarnation of an agent process: a restarted process is a new instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct InstanceId(Box<str>);
validated_string!(InstanceId);

impl InstanceId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let err = |reason: String| ValidationError::Instance {
            value: shown(s),
            reason,
        };
        let chars = s.chars().count();
        if chars == 0 || chars > MAX_INSTANCE_CHARS {
            return Err(err(format!(
                "must be 1 to {MAX_INSTANCE_CHARS} characters, got {chars}"
            )));
        }
        if let Some(why) = first_bad(s, is_control_or_space) {
            return Err(err(format!("{why} (no whitespace or control characters)")));
        }
        Ok(Self(s.into()))
    }
}

/// Names a unit of work, for duplicate-execution protection and recovery (see DESIGN "Task").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct TaskKey(Box<str>);
validated_string!(TaskKey);

impl TaskKey {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let err = |reason: String| ValidationError::TaskKey {
            value: shown(s),
            reason,
        };
        if s.is_empty() || s.len() > MAX_TASK_KEY_BYTES {
            return Err(err(format!(
                "must be 1 to {MAX_TASK_KEY_BYTES} bytes, got {}",
                s.len()
            )));
        }
        if let Some(why) = first_bad(s, char::is_control) {
            return Err(err(format!("{why} (no control characters)")));
        }
        Ok(Self(s.into()))
    }
}

/// Client-chosen id that makes an acquire idempotent: a retry returns the first answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct RequestId(Box<str>);
validated_string!(RequestId);

impl RequestId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let err = |reason: String| ValidationError::RequestId {
            value: shown(s),
            reason,
        };
        let chars = s.chars().count();
        if chars == 0 || chars > MAX_REQUEST_ID_CHARS {
            return Err(err(format!(
                "must be 1 to {MAX_REQUEST_ID_CHARS} characters, got {chars}"
            )));
        }
        if let Some(why) = first_bad(s, is_control_or_space) {
            return Err(err(format!("{why} (no whitespace or control characters)")));
        }
        Ok(Self(s.into()))
    }
}

/// What the holder means to do: a short sentence plus optional labels, kept in the audit and usable by
/// policy. Fields are private so an `Intent` always satisfies `Intent::new`'s rules.
///
/// Most leases carry none, so an empty intent takes one pointer in the lease (a live lease table holds
/// a million of them); `None` is the only form of the empty intent.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Deserialize)]
#[serde(try_from = "IntentWire")]
pub struct Intent(Option<Box<IntentData>>);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct IntentData {
    text: String,
    labels: BTreeMap<String, String>,
}

/// Encoded as the struct `{ text, labels }` whether empty or not.
impl Serialize for Intent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename = "Intent")]
        struct View<'a> {
            text: &'a str,
            labels: &'a BTreeMap<String, String>,
        }
        View {
            text: self.text(),
            labels: self.labels(),
        }
        .serialize(s)
    }
}

impl fmt::Debug for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intent")
            .field("text", &self.text())
            .field("labels", self.labels())
            .finish()
    }
}

/// Unvalidated shape of `Intent` on the wire; converted through `Intent::new`.
#[derive(Deserialize)]
struct IntentWire {
    text: String,
    labels: BTreeMap<String, String>,
}

impl TryFrom<IntentWire> for Intent {
    type Error = ValidationError;
    fn try_from(w: IntentWire) -> Result<Self, Self::Error> {
        Intent::new(w.text, w.labels)
    }
}

impl Intent {
    pub fn new(
        text: impl Into<String>,
        labels: BTreeMap<String, String>,
    ) -> Result<Self, ValidationError> {
        let text = text.into();
        if text.len() > MAX_INTENT_TEXT_BYTES {
            return Err(ValidationError::IntentText {
                reason: format!(
                    "{} bytes long; at most {MAX_INTENT_TEXT_BYTES} allowed (one short sentence)",
                    text.len()
                ),
            });
        }
        if let Some(why) = first_bad(&text, char::is_control) {
            return Err(ValidationError::IntentText {
                reason: format!("{why} (one line, no control characters)"),
            });
        }
        if labels.len() > MAX_INTENT_LABELS {
            return Err(ValidationError::TooManyLabels {
                count: labels.len(),
                max: MAX_INTENT_LABELS,
            });
        }
        for (key, value) in &labels {
            let err = |reason: String| ValidationError::IntentLabel {
                key: shown(key),
                reason,
            };
            let chars = key.chars().count();
            if chars == 0 || chars > MAX_LABEL_KEY_CHARS {
                return Err(err(format!(
                    "key must be 1 to {MAX_LABEL_KEY_CHARS} characters, got {chars}"
                )));
            }
            if let Some(why) = first_bad(key, |c| {
                !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-'))
            }) {
                return Err(err(format!("key: {why} (use A-Z a-z 0-9 . _ : / -)")));
            }
            if value.len() > MAX_LABEL_VALUE_BYTES {
                return Err(err(format!(
                    "value is {} bytes; at most {MAX_LABEL_VALUE_BYTES} allowed",
                    value.len()
                )));
            }
            if let Some(why) = first_bad(value, char::is_control) {
                return Err(err(format!("value: {why} (no control characters)")));
            }
        }
        if text.is_empty() && labels.is_empty() {
            return Ok(Self(None));
        }
        Ok(Self(Some(Box::new(IntentData { text, labels }))))
    }

    pub fn text(&self) -> &str {
        self.0.as_ref().map_or("", |d| &d.text)
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.0.as_ref().map_or(&NONE, |d| &d.labels)
    }
}

/// How a holder says its work went when it releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReleaseOutcome {
    /// The task is complete: a later acquire with the same task key answers `AlreadyDone`.
    Done,
    /// The work failed: the task stays open and the next holder learns about this attempt.
    Failed,
}

/// Why a lease ended. Recorded in the ended table and in the task's `Previous`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndReason {
    Released,
    Done,
    Failed,
    Expired,
    Revoked { by: Principal, reason: String },
    TakenOver { by_instance: InstanceId },
}

impl EndReason {
    /// A short fixed name for the kind of end (a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::Done => "done",
            EndReason::Failed => "failed",
            EndReason::Expired => "expired",
            EndReason::Revoked { .. } => "revoked",
            EndReason::TakenOver { .. } => "taken_over",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Released => f.write_str("released"),
            EndReason::Done => f.write_str("done"),
            EndReason::Failed => f.write_str("failed"),
            EndReason::Expired => f.write_str("expired"),
            EndReason::Revoked { by, reason } => write!(f, "revoked by {by}: {reason}"),
            // Exactly this text: the CLI prints it.
            EndReason::TakenOver { .. } => f.write_str("taken over"),
        }
    }
}

/// A live grant: who may act on `resource`, with which token, for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: LeaseId,
    pub resource: ResourcePath,
    pub principal: Principal,
    pub instance: InstanceId,
    pub token: FencingToken,
    pub ttl_ms: u64,
    pub intent: Intent,
    pub task_key: Option<TaskKey>,
    pub request_id: RequestId,
    pub granted_at_ms: u64,
    /// Term in which the lease was granted or last renewed through the log (DESIGN rule 3).
    pub renew_term: u64,
    /// Remaining ttl persisted by a leader that saw no keepalive in its term (DESIGN rule 3).
    pub ttl_checkpoint_ms: Option<u64>,
    /// The holder's last fenced progress record (at most `MAX_CHECKPOINT_BYTES`).
    pub checkpoint: Option<Vec<u8>>,
}

/// What a replacement learns about its predecessor on the same task or resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub lease_id: LeaseId,
    pub principal: Principal,
    pub instance: InstanceId,
    pub token: FencingToken,
    pub ended: EndReason,
    pub ended_at_ms: u64,
    pub checkpoint: Option<Vec<u8>>,
}

impl Previous {
    pub(crate) fn of(lease: &Lease, ended: EndReason, ended_at_ms: u64) -> Self {
        Self {
            lease_id: lease.lease_id,
            principal: lease.principal.clone(),
            instance: lease.instance.clone(),
            token: lease.token,
            ended,
            ended_at_ms,
            checkpoint: lease.checkpoint.clone(),
        }
    }
}

/// The record of a task released with outcome `done`; answers later acquires with the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub lease_id: LeaseId,
    pub principal: Principal,
    pub instance: InstanceId,
    pub token: FencingToken,
    pub completed_at_ms: u64,
    pub checkpoint: Option<Vec<u8>>,
}

impl Completion {
    pub(crate) fn of(lease: &Lease, completed_at_ms: u64) -> Self {
        Self {
            lease_id: lease.lease_id,
            principal: lease.principal.clone(),
            instance: lease.instance.clone(),
            token: lease.token,
            completed_at_ms,
            checkpoint: lease.checkpoint.clone(),
        }
    }
}

/// A successful acquire: the new lease, and what its predecessor left behind (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub lease: Lease,
    pub previous: Option<Previous>,
}

/// Default of [`RecordLimits::min_age_ms`]: four times the clients' default call budget (15 s), the
/// longest the Rust client and the CLI retry one request id.
pub const DEFAULT_RECORD_MIN_AGE_MS: u64 = 60_000;
/// Default of [`RecordLimits::max_records`]: room for 16,000 new request ids a second for the whole
/// default age (the benchmarks peak near 10,000 a second). A grant's record takes about 100 bytes of
/// memory (1,000,000: 103 MB measured) and 61 bytes of snapshot.
pub const DEFAULT_MAX_RECORDS: usize = 1_000_000;

/// How long request-id (dedup) and ended-lease records are kept, and how many request records may
/// exist. Replicated (set by `Command::SetRecordLimits`, which the leader proposes when its config
/// differs), so every replica keeps and refuses exactly the same requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLimits {
    /// A record is kept at least this long after its last update (entry time): a retry inside this
    /// age always gets the first answer. Never evicted earlier, whatever the load.
    pub min_age_ms: u64,
    /// At most this many request records; a new request id arriving when the table is full of records
    /// younger than `min_age_ms` is refused (`RequestTableFull`, RESOURCE_EXHAUSTED), not recorded.
    pub max_records: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            min_age_ms: DEFAULT_RECORD_MIN_AGE_MS,
            max_records: DEFAULT_MAX_RECORDS,
        }
    }
}

/// What the cluster remembers of a minted access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub principal: Principal,
    pub minted_by: Principal,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    /// `Some(by)` once revoked.
    pub revoked_by: Option<Principal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 25 item 5: text a human reads carries no invisible formatting characters.
    #[test]
    fn readable_text_refuses_bidi_overrides_and_zero_width_characters() {
        for bad in [
            "deploy pay\u{202e}lortnoc",
            "ok\u{200b}",
            "\u{2066}isolate\u{2069}",
            "\u{feff}bom",
            "soft\u{ad}hyphen",
            "bell\u{7}",
        ] {
            let err = check_readable_text(bad).unwrap_err();
            assert!(err.contains("U+"), "{bad:?}: {err}");
        }
        assert!(check_readable_text("deploy web v2 — ticket #42, ünïcödé ok\nsecond line").is_ok());
    }

    /// Issue 25 item 4: one resource, one spelling. `k8s/staging/../prod/payments` would be a
    /// different lock from `k8s/prod/payments` and sit under `k8s/staging` for policy.
    #[test]
    fn only_canonical_resource_paths_are_accepted_from_requests() {
        for bad in [
            "k8s/staging/../prod/payments",
            "k8s/./prod",
            "..",
            ".",
            "k8s/Prod/payments",
            "k8s/prod/pay\u{200b}ments",
            "k8s/prod/p\u{0430}yments", // Cyrillic a
            "k8s/prod/pay\u{202e}stnemy",
            "k8s/prod/web%2fdeploy",
            "k8s/prod/web#1",
            "ÄÖ/x",
        ] {
            let err = ResourcePath::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("not allowed"),
                "{bad:?} should be refused: {err}"
            );
            // Stored data written under the earlier rules still decodes.
            if !bad.contains('\u{200b}') && !bad.contains('\u{202e}') {
                assert!(ResourcePath::parse_stored(bad).is_ok(), "{bad:?}");
            }
        }
        let err = ResourcePath::parse("k8s/staging/../prod")
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"segment "..""#), "{err}");
        let err = ResourcePath::parse("k8s/Prod").unwrap_err().to_string();
        assert!(
            err.contains("'P' at byte 4") && err.contains("lower-case"),
            "{err}"
        );
        for good in [
            "k8s/prod/payments",
            "db/users/shard-3",
            "svc/api.v2/deploy_1",
            "s3/bucket@eu-west-1/key:42",
            "a..b/.hidden/x.",
        ] {
            assert!(ResourcePath::parse(good).is_ok(), "{good:?}");
        }
        // A stored path keeps its earlier spelling when read back (serde uses the stored rules).
        let stored: ResourcePath = serde_json::from_str(r#""k8s/Prod""#).unwrap();
        assert_eq!(stored.as_str(), "k8s/Prod");
    }

    #[test]
    fn bad_resource_paths_are_rejected() {
        let long = "a".repeat(257);
        let many = vec!["s"; 33].join("/");
        for bad in [
            "a//b", "", "/a", "a/", "/", "a\u{7}b", "a\nb", "a b", "a\tb", &long, &many,
        ] {
            assert!(
                ResourcePath::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let err = ResourcePath::parse("a//b").unwrap_err().to_string();
        assert_eq!(err, r#"resource "a//b": empty segment (use a/b)"#);
        let err = ResourcePath::parse("/a").unwrap_err().to_string();
        assert!(err.contains("use a)"), "{err}");
    }

    #[test]
    fn good_resource_paths_are_accepted() {
        let max = "a".repeat(256);
        let segs = vec!["s"; 32].join("/");
        for good in ["a", "k8s/prod/payments/deploy", "a.b-c_d:e@f", &max, &segs] {
            let p = ResourcePath::parse(good).unwrap();
            assert_eq!(p.as_str(), good);
            assert_eq!(p.to_string(), good);
        }
    }

    #[test]
    fn is_within_matches_whole_segments() {
        let p = ResourcePath::parse("a/b").unwrap();
        assert!(p.is_within("a"));
        assert!(p.is_within("a/b"));
        assert!(p.is_within(""));
        assert!(p.is_within("a/"));
        assert!(!p.is_within("a/b/c"));
        assert!(!p.is_within("b"));
        let q = ResourcePath::parse("a/bc").unwrap();
        assert!(!q.is_within("a/b"));
    }

    #[test]
    fn lease_id_prints_16_hex_digits_and_parses_back() {
        let id = LeaseId(42);
        assert_eq!(id.to_string(), "000000000000002a");
        assert_eq!("000000000000002a".parse::<LeaseId>().unwrap(), id);
        assert_eq!("2a".parse::<LeaseId>().unwrap(), id);
        assert_eq!("2A".parse::<LeaseId>().unwrap(), id);
        assert_eq!(
            "ffffffffffffffff".parse::<LeaseId>().unwrap(),
            LeaseId(u64::MAX)
        );
        for bad in ["", "+2a", "0x2a", "g", "10000000000000000", " 2a"] {
            assert!(bad.parse::<LeaseId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fencing_token_prints_decimal_and_orders() {
        assert_eq!(FencingToken(42).to_string(), "42");
        assert!(FencingToken(2) > FencingToken(1));
    }

    #[test]
    fn principals_parse_kind_and_name() {
        let a = Principal::parse("agent/deployer-1@team.x").unwrap();
        assert_eq!(a.kind(), PrincipalKind::Agent);
        assert_eq!(a.name(), "deployer-1@team.x");
        let h = Principal::parse("human/alice").unwrap();
        assert_eq!(h.kind(), PrincipalKind::Human);
        assert_eq!(h.name(), "alice");
        let err = Principal::parse("bob").unwrap_err().to_string();
        assert_eq!(
            err,
            r#"principal "bob": must look like agent/NAME or human/NAME"#
        );
        let long = format!("agent/{}", "x".repeat(129));
        for bad in [
            "agent/",
            "robot/x",
            "agent/a b",
            "agent/a/b",
            "Agent/x",
            &long,
        ] {
            assert!(Principal::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_and_keys_are_validated() {
        assert!(InstanceId::parse("pod-7f9c").is_ok());
        assert!(InstanceId::parse("").is_err());
        assert!(InstanceId::parse("a b").is_err());
        assert!(InstanceId::parse(&"i".repeat(129)).is_err());
        assert!(
            TaskKey::parse("deploy v1.2 to prod").is_ok(),
            "spaces allowed"
        );
        assert!(TaskKey::parse("").is_err());
        assert!(TaskKey::parse("a\u{0}").is_err());
        assert!(TaskKey::parse(&"k".repeat(257)).is_err());
        assert!(RequestId::parse("req-1").is_ok());
        assert!(RequestId::parse("req 1").is_err());
        assert!(RequestId::parse(&"r".repeat(129)).is_err());
        let err = TaskKey::parse("").unwrap_err().to_string();
        assert!(err.starts_with("task key"), "{err}");
    }

    #[test]
    fn intents_are_validated() {
        let mut labels = BTreeMap::new();
        labels.insert("scale:up".to_owned(), "12".to_owned());
        let i = Intent::new("scale web to 12 replicas", labels.clone()).unwrap();
        assert_eq!(i.text(), "scale web to 12 replicas");
        assert_eq!(i.labels(), &labels);
        assert_eq!(Intent::default().text(), "");
        assert!(Intent::new("a\nb", BTreeMap::new()).is_err());
        assert!(Intent::new("x".repeat(1025), BTreeMap::new()).is_err());
        let bad_key = BTreeMap::from([("bad key".to_owned(), String::new())]);
        let err = Intent::new("", bad_key).unwrap_err().to_string();
        assert!(err.starts_with(r#"intent label "bad key""#), "{err}");
        let empty_key = BTreeMap::from([(String::new(), String::new())]);
        assert!(Intent::new("", empty_key).is_err());
        let bad_value = BTreeMap::from([("k".to_owned(), "\u{1b}".to_owned())]);
        assert!(Intent::new("", bad_value).is_err());
        let too_many: BTreeMap<_, _> = (0..33).map(|n| (format!("k{n}"), String::new())).collect();
        assert!(matches!(
            Intent::new("", too_many),
            Err(ValidationError::TooManyLabels { count: 33, max: 32 })
        ));
    }

    #[test]
    fn an_intent_encodes_as_text_and_labels_whether_empty_or_not() {
        #[derive(Serialize)]
        struct Plain {
            text: String,
            labels: BTreeMap<String, String>,
        }
        let labels = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        for (text, labels) in [("", BTreeMap::new()), ("t", BTreeMap::new()), ("", labels)] {
            let intent = Intent::new(text, labels.clone()).unwrap();
            let bytes = bincode::serialize(&intent).unwrap();
            let plain = Plain {
                text: text.to_owned(),
                labels: labels.clone(),
            };
            assert_eq!(bytes, bincode::serialize(&plain).unwrap());
            assert_eq!(bincode::deserialize::<Intent>(&bytes).unwrap(), intent);
            assert_eq!(
                serde_json::to_string(&intent).unwrap(),
                serde_json::to_string(&plain).unwrap()
            );
        }
        assert_eq!(Intent::new("", BTreeMap::new()).unwrap(), Intent::default());
        assert_eq!(
            format!("{:?}", Intent::default()),
            r#"Intent { text: "", labels: {} }"#
        );
    }

    #[test]
    fn end_reasons_display_short_words() {
        let by = Principal::parse("human/x").unwrap();
        assert_eq!(EndReason::Released.to_string(), "released");
        assert_eq!(EndReason::Done.to_string(), "done");
        assert_eq!(EndReason::Failed.to_string(), "failed");
        assert_eq!(EndReason::Expired.to_string(), "expired");
        let revoked = EndReason::Revoked {
            by,
            reason: "incident 42".to_owned(),
        };
        assert_eq!(revoked.to_string(), "revoked by human/x: incident 42");
        let taken = EndReason::TakenOver {
            by_instance: InstanceId::parse("i2").unwrap(),
        };
        assert_eq!(taken.to_string(), "taken over");
    }

    #[test]
    fn deserialising_refuses_invalid_values() {
        let raw = bincode::serialize(&"a//b".to_owned()).unwrap();
        assert!(bincode::deserialize::<ResourcePath>(&raw).is_err());
        let good = ResourcePath::parse("a/b").unwrap();
        let raw = bincode::serialize(&good).unwrap();
        assert_eq!(bincode::deserialize::<ResourcePath>(&raw).unwrap(), good);
        let intent = Intent::new("x", BTreeMap::from([("k".into(), "v".into())])).unwrap();
        let raw = bincode::serialize(&intent).unwrap();
        assert_eq!(bincode::deserialize::<Intent>(&raw).unwrap(), intent);
    }
}
