//! `herald bench`: the load generator shipped with the hub, as `redis-benchmark` ships with
//! Redis. It speaks HTTP/1.1 (over TLS too) and HTTP/2, and reads event streams itself, so the same run can be
//! pointed at Herald, Nchan or any other hub by URL templates. Loopback only unless told
//! otherwise, bounded in time, one thread (pin it to its own core with `taskset`).

pub mod fanout;
pub mod idle;
mod server_proc;
pub mod target;
mod transport;
mod wire;

use server_proc::ServerProc;
use target::{BodyMode, UrlTemplate};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub workload: Workload,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Workload {
    /// Hold quiet subscriptions open and report the server's memory per connection.
    Idle(idle::IdleArgs),
    /// Publish to channels with many subscribers and report rates, latency and loss.
    Fanout(fanout::FanoutArgs),
}

#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// Subscribe URL; `{channel}` is replaced by the channel name.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080/sse/{channel}")]
    pub sub_url: String,
    /// Publish URL; `{channel}` is replaced by the channel name.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080/sse/{channel}")]
    pub pub_url: String,
    /// How the payload is sent: `json` ({"data": ...}) or `raw` (the body is the data).
    #[arg(long, global = true, value_enum, default_value_t = BodyMode::Json)]
    pub body: BodyMode,
    /// The server's process id(s), for its memory and CPU time from /proc (comma-separated, or
    /// repeated, for a server with several processes).
    #[arg(long, global = true, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Allow a target that is not on loopback.
    #[arg(long, global = true)]
    pub allow_remote: bool,
    /// Subscribe over HTTP/2 (h2 by ALPN for an https:// URL, prior knowledge for http://),
    /// many streams to a connection; publishers stay on HTTP/1.1.
    #[arg(long, global = true)]
    pub http2: bool,
    /// With --http2: event streams opened on each connection.
    #[arg(long, global = true, default_value_t = 100)]
    pub streams_per_connection: usize,
}

/// Runs a workload, prints the human summary and then one JSON line.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let server = ServerProc::new(args.target.server_pid.clone())?;
    let sub_url = UrlTemplate::parse(&args.target.sub_url, args.target.allow_remote)?;
    let h2 = args.target.http2.then_some(args.target.streams_per_connection.max(1));
    let json = match &args.workload {
        Workload::Idle(idle_args) => {
            let report = local.block_on(&runtime, idle::run(idle_args, &sub_url, h2, server.as_ref()))?;
            idle::print_human(&report);
            serde_json::to_string(&report)?
        }
        Workload::Fanout(fanout_args) => {
            let pub_url = UrlTemplate::parse(&args.target.pub_url, args.target.allow_remote)?;
            let report = local.block_on(&runtime, fanout::run(fanout_args, &sub_url, &pub_url, args.target.body, h2, server.as_ref()))?;
            fanout::print_human(&report);
            serde_json::to_string(&report)?
        }
    };
    println!("{json}");
    // Open sockets and aborted readers go with the runtime; don't wait for them one by one.
    runtime.shutdown_background();
    Ok(())
}
