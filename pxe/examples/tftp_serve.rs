//! Serves a directory over TFTP until SIGINT/SIGTERM; used by `pxe/bench/tftp.sh`
//! and for manual testing until the `pxe` CLI exists.
//!
//! ```text
//! cargo run --release -p pxe --example tftp_serve -- ROOT 127.0.0.1:46969 [MAX_TRANSFERS]
//! ```
//! Logging follows `RUST_LOG` (default `info`). `TFTP_THREADS=N` sets the tokio
//! worker threads (default: one per core; 1 = single-threaded runtime).

use std::net::SocketAddr;
use std::sync::Arc;

use pxe::serve::tftp::{FsProvider, TftpConfig, run};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = match std::env::var("TFTP_THREADS") {
        Ok(v) => v.parse()?,
        Err(_) => 0,
    };
    let rt = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    rt.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 {
        eprintln!("usage: tftp_serve ROOT ADDR:PORT [MAX_TRANSFERS]");
        std::process::exit(2);
    }
    let provider = FsProvider::new(&args[0]).map_err(|e| format!("TFTP root {}: {e}", args[0]))?;
    let addr: SocketAddr = args[1].parse()?;
    let mut cfg = TftpConfig::default();
    if let Some(n) = args.get(2) {
        cfg.max_transfers = n.parse()?;
    }
    // Benchmark clients all run on this host: no per-address share.
    cfg.max_per_address = cfg.max_transfers;
    let socket = tokio::net::UdpSocket::bind(addr).await?;
    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    run(socket, Arc::new(provider), cfg, shutdown).await?;
    Ok(())
}
