//! `warrant watch PREFIX [--from N] [--count N]`: lease events, one line (or JSON object) each.

use std::io::Write;

use futures::StreamExt;
use serde_json::json;

use super::{error_exit_code, exit, Output};
use crate::audit::watch::WatchEvent;
use crate::client::Client;

fn text(e: &WatchEvent) -> String {
    let mut line = format!(
        "{}  {}  {}  lease {}  token {}  {}",
        e.revision, e.kind, e.resource, e.lease_id, e.token, e.principal
    );
    if !e.instance.is_empty() {
        line.push_str(&format!(" ({})", e.instance));
    }
    if !e.reason.is_empty() {
        line.push_str(&format!("  {}", e.reason));
    }
    line
}

fn json_line(e: &WatchEvent) -> String {
    json!({
        "revision": e.revision, "kind": e.kind.as_str(), "resource": e.resource,
        "lease_id": e.lease_id, "token": e.token, "principal": e.principal,
        "instance": e.instance, "at_ms": e.at_ms, "log_index": e.log_index, "reason": e.reason,
    })
    .to_string()
}

/// Print events as they come until `count` were printed (if given), the stream fails, or stdout
/// closes.
pub(super) async fn run(
    client: &Client,
    prefix: &str,
    from: u64,
    count: Option<u64>,
    output: Output,
) -> u8 {
    let stream = client.watch(prefix, from);
    futures::pin_mut!(stream);
    let mut printed = 0u64;
    let mut last = None;
    while count.is_none_or(|c| printed < c) {
        match stream.next().await {
            Some(Ok(e)) => {
                let line = match output {
                    Output::Text => text(&e),
                    Output::Json => json_line(&e),
                };
                let mut out = std::io::stdout().lock();
                let line = super::escape_untrusted(&line);
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return exit::OK; // stdout closed (`| head`)
                }
                printed += 1;
                last = Some(e.revision);
            }
            Some(Err(e)) => {
                match last {
                    Some(r) => eprintln!(
                        "error: the watch stopped after revision {r}: {e}\nresume with `warrant watch {prefix} --from {}`",
                        r + 1
                    ),
                    None => eprintln!("error: {e}"),
                }
                return error_exit_code(&e);
            }
            None => break,
        }
    }
    exit::OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::watch::WatchKind;

    #[test]
    fn an_event_prints_as_one_line_of_text_or_json() {
        let e = WatchEvent {
            revision: 7,
            log_index: 12,
            at_ms: 1000,
            kind: WatchKind::Granted,
            resource: "k8s/prod/web".into(),
            lease_id: "l-1".into(),
            token: 3,
            principal: "agent/deployer".into(),
            instance: "pod-a".into(),
            reason: String::new(),
        };
        assert_eq!(
            text(&e),
            "7  granted  k8s/prod/web  lease l-1  token 3  agent/deployer (pod-a)"
        );
        let v: serde_json::Value = serde_json::from_str(&json_line(&e)).unwrap();
        assert_eq!(v["kind"], "granted");
        assert_eq!(v["revision"], 7);
        assert_eq!(v["token"], 3);
    }
}
