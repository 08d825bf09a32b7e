//! Test-only fault injection, compiled into debug builds only (the test suite's build); a release
//! build has none of it. A test starts a node with an environment variable naming a pause point
//! and a number of milliseconds; the node logs when it reaches that point and waits there, so the
//! test can act inside the window (kill -9 the node, commit a revocation).

/// Pause here for the milliseconds in the environment variable `var`, if it is set.
pub async fn pause(var: &str) {
    let Some(ms) = std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    tracing::warn!(pause_ms = ms, "{var}: test pause (debug build)");
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}
