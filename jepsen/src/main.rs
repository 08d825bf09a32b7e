//! `warrant-jepsen`: run the fault-injection suite against real `warrant server` processes, or
//! re-check a recorded history. Exit 0 only if every checker passed; 1 if one failed; 2 if the run
//! itself could not be carried out; 130 if interrupted. Cleanup runs on every one of those paths.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use warrant_jepsen::cluster::{self, Mode};
use warrant_jepsen::{checker, history, timeline_svg, RunOpts};

#[derive(Parser)]
#[command(name = "warrant-jepsen", about = "Fault-injection suite for Warrant")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Each node in its own network namespace (needs root); partitions are real packet loss.
    Netns,
    /// Nodes on 127.0.0.1 ports; no partitions.
    Local,
    /// Nodes on 127.0.0.1 ports, their Raft traffic through proxies in this program that cut
    /// partitions (no root needed; no packet loss).
    Proxy,
    /// netns when available, else proxy.
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
enum BrokenArg {
    /// The protected register skips the fence check.
    SkipFence,
    /// A process waking from a pause acts as if it still held its lease.
    IgnoreExpiry,
    /// Server side: nodes answer busy acquires from their own state without confirming leadership.
    UnconfirmedAnswers,
    /// Server side: the leader's lease clock runs four times fast.
    EarlyExpiry,
    /// Server side: an acquire revokes another client's live lease on the resource first.
    GrantOverHolder,
    /// Server side: one acquire in four is answered as applied but never applied.
    LoseGrants,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster, run the workload under faults, check the history.
    Run {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// How long the workload and nemesis run (e.g. 60s, 10m).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        time: Duration,
        /// Seed for the nemesis schedule and the workload's choices (random if absent).
        #[arg(long)]
        seed: Option<u64>,
        /// Comma list of kill, pause, partition; or mixed; or none.
        #[arg(long, default_value = "mixed")]
        nemesis: String,
        /// register (fenced register), deploy (replacement mid-deploy), or all.
        #[arg(long, default_value = "all")]
        workload: String,
        /// Output directory (default: jepsen-runs/<seed>-<unix time>).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
        mode: ModeArg,
        /// Client processes.
        #[arg(long, default_value_t = 6)]
        clients: u64,
        /// How many of the register clients run as their own OS process, which the client-pause
        /// nemesis SIGSTOPs (the rest are tasks in this program).
        #[arg(long, default_value_t = 2)]
        os_clients: u64,
        /// Probability that a register client simulates a pause after its first write (stops
        /// keeping its lease alive, sleeps past the ttl, writes without checking). Default 0.08
        /// (0.4 with --break ignore-expiry).
        #[arg(long)]
        sim_pause: Option<f64>,
        /// Protected resources (registers).
        #[arg(long, default_value_t = 3)]
        resources: u64,
        /// Lease ttl.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The warrant binary (default: $WARRANT_BIN, next to this program, or on PATH).
        #[arg(long)]
        warrant_bin: Option<PathBuf>,
        /// Deliberately break the harness (skip-fence, ignore-expiry) or the server
        /// (unconfirmed-answers, early-expiry, grant-over-holder, lose-grants): the run should then
        /// FAIL.
        #[arg(long = "break", value_enum)]
        broken: Option<BrokenArg>,
        /// Run the cluster as in production: mutual TLS on client and Raft ports, every client
        /// authenticated by its own certificate (made under OUT/certs). Not with
        /// `--break unconfirmed-answers`, a server bug that only insecure nodes accept.
        #[arg(long)]
        tls: bool,
        /// Skip the restore step (by default a backup is saved mid-run and, after the run, the
        /// register workload runs against a second cluster restored from it, with every checker).
        #[arg(long)]
        no_restore: bool,
    },
    /// Re-run the checkers over a recorded history.jsonl.
    Check { history: PathBuf },
    /// Internal: one fenced-register client as its own process, started by `run` (the argument is
    /// its JSON spec; it talks to the run over stdin/stdout).
    #[command(name = "client-worker", hide = true)]
    ClientWorker { spec: String },
}

fn main() {
    let cli = Cli::parse();
    // A client worker owns nothing to clean up (the run that started it does, pidfile included).
    if let Cmd::ClientWorker { spec } = &cli.cmd {
        std::process::exit(client_worker(spec));
    }
    // A panic anywhere (also in a task) tears the cluster and network down before anything else.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        cluster::cleanup();
        default_hook(info);
    }));
    let code = match cli.cmd {
        Cmd::Check { history } => check(&history),
        Cmd::ClientWorker { .. } => unreachable!("handled above"),
        Cmd::Run {
            nodes,
            time,
            seed,
            nemesis,
            workload,
            out,
            mode,
            clients,
            os_clients,
            sim_pause,
            resources,
            ttl,
            warrant_bin,
            broken,
            tls,
            no_restore,
        } => {
            if tls
                && matches!(
                    broken,
                    Some(
                        BrokenArg::UnconfirmedAnswers
                            | BrokenArg::EarlyExpiry
                            | BrokenArg::GrantOverHolder
                            | BrokenArg::LoseGrants
                    )
                )
            {
                eprintln!(
                    "a server-side --break needs an insecure cluster (the server refuses a broken \
                     mode with TLS); drop --tls"
                );
                std::process::exit(2);
            }
            if sim_pause.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
                eprintln!("--sim-pause: a probability, 0 to 1");
                std::process::exit(2);
            }
            let (register, deploy) = match workload.as_str() {
                "register" => (true, false),
                "deploy" => (false, true),
                "all" => (true, true),
                _ => {
                    eprintln!("--workload: register, deploy or all");
                    std::process::exit(2);
                }
            };
            let seed = seed.unwrap_or_else(|| history::wall_ms() % 1_000_000);
            let mode = match mode {
                ModeArg::Netns => Mode::Netns,
                ModeArg::Local => Mode::Local,
                ModeArg::Proxy => Mode::Proxy,
                ModeArg::Auto if cluster::netns_available() => Mode::Netns,
                ModeArg::Auto => Mode::Proxy,
            };
            let out = out.unwrap_or_else(|| {
                PathBuf::from(format!("jepsen-runs/{seed}-{}", history::wall_ms() / 1000))
            });
            let opts = RunOpts {
                nodes,
                time,
                seed,
                nemesis,
                mode,
                out,
                bin: warrant_bin.unwrap_or_else(warrant_jepsen::find_warrant_bin),
                clients,
                resources,
                ttl,
                broken: broken.map(|b| match b {
                    BrokenArg::SkipFence => warrant_jepsen::workload::Broken::SkipFence,
                    BrokenArg::IgnoreExpiry => warrant_jepsen::workload::Broken::IgnoreExpiry,
                    BrokenArg::UnconfirmedAnswers => {
                        warrant_jepsen::workload::Broken::UnconfirmedAnswers
                    }
                    BrokenArg::EarlyExpiry => warrant_jepsen::workload::Broken::EarlyExpiry,
                    BrokenArg::GrantOverHolder => warrant_jepsen::workload::Broken::GrantOverHolder,
                    BrokenArg::LoseGrants => warrant_jepsen::workload::Broken::LoseGrants,
                }),
                register,
                deploy,
                tls,
                os_clients,
                sim_pause,
                // A deliberately broken run is there to fail its first phase's checkers.
                restore: !no_restore && broken.is_none(),
                self_bin: match std::env::current_exe() {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("cannot find this program's path for the client processes: {e}");
                        std::process::exit(2);
                    }
                },
            };
            run(opts)
        }
    };
    cluster::cleanup();
    std::process::exit(code);
}

fn run(opts: RunOpts) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return 2;
        }
    };
    let out = opts.out.clone();
    eprintln!(
        "warrant-jepsen: seed {} mode {:?} output {}",
        opts.seed,
        opts.mode,
        out.display()
    );
    let code = rt.block_on(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cannot watch SIGTERM: {e}");
                    return 2;
                }
            };
        tokio::select! {
            r = warrant_jepsen::run(opts) => match r {
                Ok(results) => {
                    print_summary(&results);
                    if results.valid { 0 } else { 1 }
                }
                Err(e) => {
                    eprintln!("run failed: {e:#}");
                    2
                }
            },
            _ = tokio::signal::ctrl_c() => { eprintln!("interrupted; cleaning up"); 130 }
            _ = term.recv() => { eprintln!("terminated; cleaning up"); 130 }
        }
    });
    cluster::cleanup();
    // Client tasks may still be waiting on dead nodes: do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));
    eprintln!("output in {}", out.display());
    code
}

fn client_worker(spec: &str) -> i32 {
    let spec: warrant_jepsen::procs::WorkerSpec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("client-worker: bad spec: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("client-worker: cannot start the runtime: {e}");
            return 2;
        }
    };
    let code = match rt.block_on(warrant_jepsen::procs::worker_main(spec)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("client-worker: {e:#}");
            2
        }
    };
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

fn print_summary(r: &warrant_jepsen::Results) {
    println!(
        "{} — {:?} mode, {}, {} nodes, seed {}, {} s, nemesis {:?}",
        if r.valid { "PASS" } else { "FAIL" },
        r.mode,
        if r.tls { "mutual TLS" } else { "insecure" },
        r.nodes,
        r.seed,
        r.time_s,
        r.nemesis
    );
    if let Some(b) = r.broken {
        println!("deliberately broken mode: {b:?} (a FAIL is the expected outcome)");
    }
    println!("ops: {:?}", r.ops);
    println!("faults: {:?}", r.faults);
    for (name, v) in &r.checkers {
        println!(
            "  {:<18} {}  {:?}",
            name,
            if v.valid { "ok  " } else { "FAIL" },
            v.counts
        );
        for x in &v.violations {
            println!("      {x}");
        }
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}

fn check(path: &std::path::Path) -> i32 {
    let events = match history::load(path) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot read {}: {e:#}", path.display());
            return 2;
        }
    };
    let verdicts = checker::check_all(&events);
    let valid = verdicts.values().all(|v| v.valid);
    // Redraw the run next to its history, with the faults if the run's nemesis.jsonl is there.
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let faults = warrant_jepsen::nemesis::load(&dir.join("nemesis.jsonl")).unwrap_or_default();
    let svg = dir.join("timeline.svg");
    match std::fs::write(&svg, timeline_svg::render(&events, &faults, &verdicts)) {
        Ok(()) => eprintln!("timeline: {}", svg.display()),
        Err(e) => eprintln!("cannot write {}: {e}", svg.display()),
    }
    match serde_json::to_string_pretty(&verdicts) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("{e}"),
    }
    if valid {
        0
    } else {
        1
    }
}
