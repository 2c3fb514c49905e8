//! `vtpmctl`: runs vTPMs backed by swtpm and shows what runs.
//!
//! - `vtpmctl run --domains N` starts a backend domain and N guest domains in this process;
//!   guest `i` (domain `2 + i`) gets vTPM instance `1 + i`, whose swtpm keeps its state in
//!   `<state-dir>/instance-<n>`, and its frontend is served as a TPM socket on data port
//!   `base + 2i` and control port `base + 2i + 1` (base 2321, the `swtpm:` TCTI's default
//!   port). It prints each guest's ports, then serves until Ctrl-C (or SIGTERM), when it
//!   closes the frontends and stops every swtpm the planned way (STORE_VOLATILE, SHUTDOWN),
//!   so the next `run` on the same state directory gives each guest its TPM back.
//! - `vtpmctl run --qemu-socket PATH` (repeatable) adds one guest per PATH, after the TCP
//!   guests (`--domains` defaults to 0 then), whose frontend is served to QEMU as swtpm on a
//!   unix socket there: `qemu-system-x86_64 ... -chardev socket,id=chrtpm,path=PATH -tpmdev
//!   emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0`. The guest's power
//!   operations and TPM commands go through the ring to that instance's swtpm.
//! - `vtpmctl list` asks the `run` serving a state directory for its guests, instances, engine
//!   states and ports. `run` answers on a unix socket, `<state-dir>/vtpmctl.sock`: a client
//!   connects and reads one JSON document until end of stream (`list` gives up after 3 s and
//!   refuses one over 1 MiB). With no `run` serving, `list` shows the instances that have
//!   state there, as stopped.

#![forbid(unsafe_code)]

use anyhow::Context;
use anyhow::bail;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use serde::Deserialize;
use serde::Serialize;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::signal::unix::SignalKind;
use tokio::signal::unix::signal;
use vtpm_ring::engine::swtpm::Startup;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::socket::ACCEPT_BACKOFF;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::VtpmStack;

/// Name of the listing socket in the state directory.
const SOCKET: &str = "vtpmctl.sock";
/// How long `list` waits for the whole listing (and `run` for a client to take it). A `run`
/// answers at once; one that is stopped (SIGSTOP) or wedged still has its socket listening,
/// and the connection succeeds.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest listing `list` reads (a thousand guests take a few hundred KiB).
const MAX_LISTING: u64 = 1 << 20;

#[derive(Parser)]
#[command(
    version,
    about = "Run swtpm-backed vTPMs behind a Xen-style split driver"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a backend domain and N guest domains, serve each guest's vTPM as a TPM socket.
    Run(RunArgs),
    /// Show the instances, their states and ports of the `run` serving a state directory.
    List(ListArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Protocol {
    /// Negotiate (v2 when both sides offer it).
    Any,
    /// Only the v1 multi-page ring.
    V1,
    /// Only the v2 shared page.
    V2,
}

#[derive(Parser)]
struct RunArgs {
    /// Guest domains served as TPM sockets, each with its own vTPM instance (default 1, or 0
    /// with --qemu-socket).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=1000))]
    domains: Option<u16>,
    /// Serve one more guest to QEMU's `-tpmdev emulator` on a unix socket at PATH
    /// (repeatable: one guest and instance per socket).
    #[arg(long, value_name = "PATH")]
    qemu_socket: Vec<PathBuf>,
    /// Directory of the instances' state (created if missing).
    #[arg(long, default_value = "vtpm-state")]
    state_dir: PathBuf,
    /// Data port of the first guest; guest i uses base+2i (data) and base+2i+1 (control).
    /// 0 picks free ports.
    #[arg(long, default_value_t = 2321)]
    base_port: u16,
    /// Ring protocol versions the frontends offer.
    #[arg(long, value_enum, default_value_t = Protocol::Any)]
    protocol: Protocol,
    /// The swtpm binary.
    #[arg(long, default_value = "swtpm")]
    swtpm: PathBuf,
    /// Do not send TPM2_Startup(CLEAR) after power-on: leave it to the client.
    #[arg(long)]
    no_startup: bool,
}

#[derive(Parser)]
struct ListArgs {
    /// State directory of the `run` to ask.
    #[arg(long, default_value = "vtpm-state")]
    state_dir: PathBuf,
    /// Print the JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `run` answers on its listing socket.
#[derive(Serialize, Deserialize)]
struct Listing {
    pid: u32,
    guests: Vec<serde_json::Value>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Run(args) => run(args).await,
        Cmd::List(args) => list(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Listening before anything can be seen from outside (the listing socket, a port, a
    // line): a Ctrl-C that arrives before the first wait would otherwise still find the
    // default action and kill the host without stopping its TPMs. One during start-up stops
    // the host right after it is up.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let socket_path = args.state_dir.join(SOCKET);
    if UnixStream::connect(&socket_path).await.is_ok() {
        bail!(
            "another vtpmctl run serves {}; two would share the instances' state",
            args.state_dir.display()
        );
    }
    // Stale socket of a run that ended without cleaning up.
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)
        .with_context(|| format!("binding {}", socket_path.display()))?;

    let domains = args
        .domains
        .unwrap_or(if args.qemu_socket.is_empty() { 1 } else { 0 });
    if domains == 0 && args.qemu_socket.is_empty() {
        bail!("nothing to serve: give --domains 1 or more, or --qemu-socket");
    }
    let mut config = StackConfig::new(&args.state_dir, domains);
    config.qemu_sockets = args.qemu_socket;
    config.base_port = (args.base_port != 0).then_some(args.base_port);
    config.swtpm.binary = args.swtpm;
    config.swtpm.startup = if args.no_startup {
        Startup::None
    } else {
        Startup::Clear
    };
    config.frontend.protocols = match args.protocol {
        Protocol::Any => Protocols::default(),
        Protocol::V1 => Protocols::V1_ONLY,
        Protocol::V2 => Protocols::V2_ONLY,
    };
    let stack = match VtpmStack::start(config).await {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&socket_path);
            return Err(e).context("starting the vTPM host");
        }
    };
    for g in stack.guests() {
        println!(
            "domain {} instance {} data {} ctrl {}  TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port={}",
            g.domain(),
            g.instance(),
            g.data_addr(),
            g.ctrl_addr(),
            g.data_addr().port()
        );
    }
    for g in stack.qemu_guests() {
        println!(
            "domain {} instance {} qemu {}  -chardev socket,id=chrtpm,path={} -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0",
            g.domain(),
            g.instance(),
            g.path().display(),
            g.path().display()
        );
    }
    println!("ready; Ctrl-C stops and saves state");

    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((mut client, _)) => {
                    let guests = stack
                        .status()
                        .await
                        .into_iter()
                        .filter_map(|g| serde_json::to_value(g).ok())
                        .collect();
                    let listing = Listing { pid: std::process::id(), guests };
                    let bytes = match serde_json::to_vec(&listing) {
                        Ok(b) => b,
                        Err(e) => {
                            // A listing that fails must not end the host without its
                            // planned shutdown.
                            tracing::warn!(error = %e, "listing not encoded");
                            continue;
                        }
                    };
                    // A slow or vanished client must not stall the host, nor keep a task
                    // for ever by never reading.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(LIST_TIMEOUT, client.write_all(&bytes)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing socket accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    println!("stopping: closing frontends, storing state");
    let result = stack.shutdown().await;
    let _ = std::fs::remove_file(&socket_path);
    result.context("stopping the vTPM host")?;
    println!("stopped");
    Ok(())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let socket_path = args.state_dir.join(SOCKET);
    let Ok(stream) = UnixStream::connect(&socket_path).await else {
        return list_stopped(&args.state_dir);
    };
    let bytes = read_listing(stream, &socket_path).await?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let listing: Listing = serde_json::from_slice(&bytes).context("parsing the listing")?;
    println!(
        "vtpmctl run pid {} serving {}",
        listing.pid,
        args.state_dir.display()
    );
    println!(
        "{:>6} {:>8} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "domain", "instance", "state", "data", "ctrl", "protocol", "swtpm", "restarts"
    );
    for g in &listing.guests {
        let field = |path: &[&str]| {
            let mut v = g;
            for p in path {
                v = &v[*p];
            }
            match v {
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        };
        println!(
            "{:>6} {:>8} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8}",
            field(&["domain"]),
            field(&["engine", "instance"]),
            field(&["engine", "state"]),
            field(&["data_port"]),
            field(&["ctrl_port"]),
            field(&["protocol"]),
            field(&["engine", "pid"]),
            field(&["engine", "restarts"]),
        );
    }
    Ok(())
}

/// Reads the listing `run` writes on `stream`, bounded in time and size: whatever listens
/// on the socket may never answer, or never stop.
async fn read_listing(stream: UnixStream, socket_path: &Path) -> anyhow::Result<Vec<u8>> {
    // The kernel reports the process that listens, whether or not it ever accepts.
    let who = match stream.peer_cred().ok().and_then(|c| c.pid()) {
        Some(pid) => format!("the vtpmctl run (pid {pid}) listening on"),
        None => "the vtpmctl run listening on".to_owned(),
    };
    let mut bytes = Vec::new();
    let mut limited = stream.take(MAX_LISTING + 1);
    let read = tokio::time::timeout(LIST_TIMEOUT, limited.read_to_end(&mut bytes)).await;
    let Ok(read) = read else {
        bail!(
            "{who} {} did not answer within {} s (stopped or wedged?)",
            socket_path.display(),
            LIST_TIMEOUT.as_secs()
        );
    };
    read.with_context(|| format!("reading the listing from {who} {}", socket_path.display()))?;
    // Nothing left of the allowance: the listing goes on past the limit.
    if limited.limit() == 0 {
        bail!(
            "the listing from {who} {} is longer than {MAX_LISTING} bytes; refused",
            socket_path.display()
        );
    }
    Ok(bytes)
}

fn list_stopped(state_dir: &Path) -> anyhow::Result<()> {
    let instances = StateDirs::new(state_dir).instances().unwrap_or_default();
    println!("no vtpmctl run serves {}", state_dir.display());
    for i in instances {
        println!("instance {i}: stopped (state kept)");
    }
    Ok(())
}
