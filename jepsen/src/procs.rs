//! Fenced-register clients in their own OS process, so the `client-pause` nemesis can SIGSTOP a real
//! client: its lease's keepalive task, its timers and any call in flight stop with it, wherever in
//! its loop the signal lands — between the validity check and the write included.
//!
//! The harness starts `warrant-jepsen client-worker SPEC` ([`WORKER_COMMAND`]). The worker runs the
//! same loop as a client task ([`crate::workload::process`]) with its own `Client` (and, under
//! `--tls`, its own certificate files), and talks to the harness over its pipes, one JSON line per
//! message:
//! - worker → harness: `{"event": EVENT}`, a history event already stamped on the harness's clock
//!   (rebuilt in the worker from CLOCK_MONOTONIC, which all processes on the machine share and which
//!   keeps counting while a process is stopped); `{"write": {...}}`, a write to a protected
//!   register, which the harness decides and records under the register's lock, then answers `ok`.
//! - A worker whose harness is gone exits: it gets SIGKILL when the harness dies (parent-death
//!   signal), and exits on a closed stdin or a broken stdout.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use warrant::client::Client;
use warrant::model::InstanceId;

use crate::history::{Clock, Event, Recorder};
use crate::security::{Security, TlsPaths};
use crate::workload::{ProcessParams, Registers, Sink};

/// The subcommand a worker runs as (also how leftovers from a killed run are recognised).
pub const WORKER_COMMAND: &str = "client-worker";

/// Everything a worker needs, passed as its one argument (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub process: u64,
    pub endpoints: Vec<String>,
    pub principal: String,
    pub instance: String,
    pub tls: Option<TlsPaths>,
    pub params: ProcessParams,
    /// The harness clock's zero on CLOCK_MONOTONIC ([`Clock::base_ns`]).
    pub clock_base_ns: u64,
    /// When to stop starting work, on the harness clock.
    pub deadline_ns: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Message {
    Event(Box<Event>),
    Write {
        process: u64,
        resource: String,
        token: u64,
        value: String,
    },
}

/// Start client `p` as its own process running `bin client-worker`, its stderr in `log`, and pump
/// its messages into `rec` and `regs` on a thread. The receiver resolves when the worker has exited
/// (Ok if it exited 0).
pub fn spawn(
    bin: &Path,
    log: &Path,
    spec: &WorkerSpec,
    rec: Recorder,
    regs: Registers,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<()>>> {
    let p = spec.process;
    let mut command = Command::new(bin);
    command
        .arg(WORKER_COMMAND)
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?);
    // A harness killed outright (SIGKILL) takes its workers with it, also a stopped one. The
    // signal comes when the spawning thread ends: this runs on the thread that drives the run
    // (`block_on` in main), which lasts as long as the run.
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| anyhow::anyhow!("start client worker {p} ({}): {e}", bin.display()))?;
    let (Some(stdout), Some(mut stdin)) = (child.stdout.take(), child.stdin.take()) else {
        anyhow::bail!("client worker {p}: no pipes");
    };
    if !crate::cluster::register_worker(p, child) {
        anyhow::bail!("client worker {p}: the run is shutting down");
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let pumped = (|| -> anyhow::Result<()> {
            // Bounded by the worker: it exits at its deadline (or when killed), closing stdout.
            for line in BufReader::new(stdout).lines() {
                match serde_json::from_str::<Message>(&line?)? {
                    Message::Event(ev) => {
                        let t = ev.t_ns;
                        rec.record_at(*ev, t);
                    }
                    Message::Write {
                        process,
                        resource,
                        token,
                        value,
                    } => {
                        anyhow::ensure!(process == p, "worker {p} wrote as process {process}");
                        regs.write(&rec, process, &resource, token, value);
                        stdin.write_all(b"ok\n")?;
                        stdin.flush()?;
                    }
                }
            }
            Ok(())
        })();
        let force = pumped.is_err();
        let status = crate::cluster::reap_worker(p, force);
        let result = pumped.and_then(|()| match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(anyhow::anyhow!(
                "client worker {p} exited with {s} (see its log)"
            )),
            // Cleanup took it: the run is ending anyway.
            None => Ok(()),
        });
        let _ = tx.send(result);
    });
    Ok(rx)
}

/// The worker's side of the pipes.
struct Remote {
    clock: Clock,
    answers: tokio::sync::Mutex<tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>>,
}

impl Remote {
    fn send(&self, m: &Message) {
        let sent = serde_json::to_string(m)
            .map_err(std::io::Error::other)
            .and_then(|line| {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()
            });
        if let Err(e) = sent {
            harness_gone(&e.to_string());
        }
    }
}

fn harness_gone(why: &str) -> ! {
    eprintln!("client worker: the harness is gone ({why}); exiting");
    std::process::exit(3)
}

impl Sink for Remote {
    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    fn record_at(&self, mut ev: Event, t_ns: u64) {
        ev.t_ns = t_ns;
        self.send(&Message::Event(Box::new(ev)));
    }

    async fn write(&self, process: u64, resource: &str, token: u64, value: String) {
        let mut answers = self.answers.lock().await;
        self.send(&Message::Write {
            process,
            resource: resource.to_string(),
            token,
            value,
        });
        match answers.next_line().await {
            Ok(Some(a)) if a == "ok" => {}
            Ok(Some(other)) => harness_gone(&format!("unexpected answer {other:?}")),
            Ok(None) => harness_gone("stdin closed"),
            Err(e) => harness_gone(&e.to_string()),
        }
    }
}

/// The worker process: run client `spec.process` until its deadline.
pub async fn worker_main(spec: WorkerSpec) -> anyhow::Result<()> {
    let clock = Clock::from_base_ns(spec.clock_base_ns);
    let mut cfg =
        Security::client_from_files(spec.endpoints.clone(), &spec.principal, spec.tls.as_ref())?;
    cfg.instance = InstanceId::parse(&spec.instance)?;
    cfg.call_timeout = Duration::from_secs(5);
    let client = Client::new(cfg)?;
    let left = Duration::from_nanos(spec.deadline_ns.saturating_sub(clock.now_ns()));
    let deadline = tokio::time::Instant::now() + left;
    let sink = Remote {
        clock,
        answers: tokio::sync::Mutex::new(tokio::io::BufReader::new(tokio::io::stdin()).lines()),
    };
    crate::workload::process(client, spec.process, spec.params, deadline, sink).await;
    Ok(())
}
