//! The `herald` command: the hub (`serve`), its effective configuration (`config`), and a
//! client (`publish`, `subscribe`), and a load generator (`bench`).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald::config::{self, Overrides};
use herald::event::Draft;
use herald::sse::Item;
use std::io::{Read, Write};
use std::path::PathBuf;

/// The version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILT_FROM_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "herald", version = VERSION, about = "A Server-Sent Events hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServerFlags),
    /// Print the effective configuration (defaults < file < env < flags), secrets redacted.
    Config(ServerFlags),
    /// Publish one event.
    Publish(PublishArgs),
    /// Subscribe to channels and print events as they arrive.
    Subscribe(SubscribeArgs),
    /// Load generator: measure this hub (or another) with idle or fan-out workloads.
    Bench(herald::bench::BenchArgs),
    /// Make an API key and the hash to put in `api_keys` (or, with --stdin, hash a key you have).
    HashKey {
        /// Read the key from the first line of standard input instead of making one.
        #[arg(long)]
        stdin: bool,
    },
    /// Check or repair the disk store (history.dir) of a stopped hub.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `herald man > /usr/local/share/man/man1/herald.1`.
    Man,
}

#[derive(Subcommand)]
enum StoreAction {
    /// Read every record and report what is damaged or lost; changes nothing. Exits 1 on damage.
    Check(ServerFlags),
    /// Remove records that cannot be read; a store that cannot be opened at all is moved aside
    /// (nothing deleted) and a new one started above its ids.
    Repair(ServerFlags),
}

#[derive(Args)]
struct ServerFlags {
    /// Configuration file (TOML). Default: $HERALD_CONFIG, else ./herald.toml if present.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long)]
    listen: Option<String>,
    /// Keep-alive period, e.g. 15s; 0s turns keep-alives off.
    #[arg(long)]
    keepalive_interval: Option<String>,
    /// Log filter, e.g. info or herald=debug.
    #[arg(long)]
    log_level: Option<String>,
    /// Events kept per channel.
    #[arg(long)]
    history_size: Option<usize>,
    /// Runtime worker threads (0: one per CPU core).
    #[arg(long)]
    workers: Option<usize>,
    /// The disk store's data directory (history.dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl ServerFlags {
    fn overrides(&self) -> Overrides {
        let mut flags = Vec::new();
        if let Some(v) = &self.listen {
            flags.push(("listen", v.clone()));
        }
        if let Some(v) = &self.keepalive_interval {
            flags.push(("keepalive_interval", v.clone()));
        }
        if let Some(v) = &self.log_level {
            flags.push(("log_level", v.clone()));
        }
        if let Some(v) = self.history_size {
            flags.push(("history.size", v.to_string()));
        }
        if let Some(v) = self.workers {
            flags.push(("workers", v.to_string()));
        }
        if let Some(v) = &self.data_dir {
            flags.push(("history.dir", v.display().to_string()));
        }
        Overrides { config_path: self.config.clone(), flags }
    }
}

#[derive(Args)]
struct ClientFlags {
    /// The hub's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[derive(Args)]
struct PublishArgs {
    channel: String,
    /// The data; `-` or nothing reads it from standard input.
    data: Option<String>,
    #[arg(long)]
    event: Option<String>,
    #[arg(long)]
    id: Option<String>,
    /// Reconnection delay for clients, in milliseconds.
    #[arg(long)]
    retry: Option<u64>,
    #[command(flatten)]
    client: ClientFlags,
}

#[derive(Args)]
struct SubscribeArgs {
    #[arg(required = true)]
    channels: Vec<String>,
    /// Resume after this id.
    #[arg(long)]
    last_event_id: Option<String>,
    /// Replay the whole history first.
    #[arg(long)]
    replay_all: bool,
    /// Print one JSON object per event.
    #[arg(long)]
    json: bool,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Exit when the stream ends instead of reconnecting.
    #[arg(long)]
    no_reconnect: bool,
    #[command(flatten)]
    client: ClientFlags,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(flags) => {
            let config = config::load(&flags.overrides(), std::env::vars())?;
            herald::telemetry::init(&config)?;
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if config.workers > 0 {
                runtime.worker_threads(config.workers);
            }
            runtime.enable_all().build()?.block_on(serve(config))
        }
        Command::Config(flags) => {
            let config = config::load(&flags.overrides(), std::env::vars())?;
            print!("{}", config::redacted_toml(&config));
            Ok(())
        }
        Command::Publish(args) => runtime()?.block_on(publish(args)),
        Command::Subscribe(args) => runtime()?.block_on(subscribe(args)),
        Command::Bench(args) => herald::bench::run(args),
        Command::Store { action } => store(action),
        Command::HashKey { stdin } => hash_key(stdin),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "herald", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

/// `herald hash-key`: a new key of 32 random bytes (hex), or the key on standard input, and its
/// configuration line. The key itself goes to the client only; the configuration holds the hash.
fn hash_key(stdin: bool) -> anyhow::Result<()> {
    use herald::access::keys::hash_of;
    if stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let key = line.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(!key.is_empty(), "no key on standard input");
        println!("{}", hash_of(key));
    } else {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the system: {e}"))?;
        let key = hex::encode(bytes);
        println!("key:  {key}");
        println!("hash: {}", hash_of(&key));
        eprintln!("give the key to the client; put the hash in api_keys = [\"…\"]");
    }
    Ok(())
}

fn store(action: StoreAction) -> anyhow::Result<()> {
    use herald::history::disk::maintenance::{self, Repaired};
    let (StoreAction::Check(flags) | StoreAction::Repair(flags)) = &action;
    let config = config::load(&flags.overrides(), std::env::vars())?;
    let dir = &config.history.dir;
    match action {
        StoreAction::Check(_) => {
            let report = maintenance::check(dir)?;
            print!("{}", report.render(dir));
            if !report.clean() {
                std::process::exit(1);
            }
        }
        StoreAction::Repair(_) => match maintenance::repair(dir)? {
            Repaired::InPlace(report) => {
                print!("{}", report.render(dir));
                println!(
                    "removed {} event records and {} floors that could not be read",
                    report.damaged_events.len(),
                    report.damaged_floors.len()
                );
            }
            Repaired::MovedAside { old, error, newest } => {
                println!("the store could not be opened ({error})");
                println!("moved it to {} (nothing was deleted) and started a new store in {}", old.display(), dir.display());
                println!("new ids go on above {newest}; clients resuming from an older id are told they missed events");
            }
        },
    }
    Ok(())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

async fn serve(config: herald::config::Config) -> anyhow::Result<()> {
    let listen = config.listen;
    // Access policies that cannot be used (a `secret` rule's variable is unset) stop start-up
    // before anything is opened; the server compiles its own copy.
    herald::access::Gate::new(&config)?;
    // The store first: a data directory that cannot be used stops start-up before it listens.
    let hub = herald::hub::Hub::new(config)?;
    let listener = herald::http::server::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, store = hub.store().kind(), "herald listening");
    #[cfg(unix)]
    tokio::spawn(on_hangup());
    herald::http::server::serve(listener, hub, shutdown_signal()).await?;
    // Off the runtime's threads: the exporter's last send blocks until the collector answers.
    tokio::task::spawn_blocking(herald::telemetry::otlp::shutdown).await?;
    Ok(())
}

/// SIGHUP: the log file is reopened (after logrotate moved it away).
#[cfg(unix)]
async fn on_hangup() {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler: the log file cannot be reopened by signal");
        return;
    };
    while hangups.recv().await.is_some() {
        herald::telemetry::reopen_log_file();
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let data = match args.data.as_deref() {
        Some("-") | None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("read data from standard input")?;
            s
        }
        Some(d) => d.to_owned(),
    };
    let draft = Draft { id: args.id, event: args.event, data, retry: args.retry };
    let id = herald::client::publish(&reqwest::Client::new(), &args.client.url, &args.channel, &draft).await?;
    println!("{id}");
    Ok(())
}

async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let options =
        herald::client::SubscribeOptions { last_event_id: args.last_event_id, replay_all: args.replay_all, reconnect: !args.no_reconnect };
    let mut seen = 0u64;
    let mut out = std::io::stdout();
    herald::client::subscribe(&reqwest::Client::new(), &args.client.url, &args.channels, options, |item| {
        let Item::Event(ev) = item else { return true };
        let line =
            if args.json { herald::client::event_json(ev).to_string() } else { format!("{} [{}] {}", ev.last_event_id, ev.event, ev.data) };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        seen += 1;
        args.count.is_none_or(|n| seen < n)
    })
    .await
}
