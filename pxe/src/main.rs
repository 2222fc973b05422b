mod cli;
mod cmd;

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = cli::Cli::parse();
    let r = match &cli.command {
        cli::Command::Serve(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cmd::serve::serve(a))),
        cli::Command::Status(a) => cmd::status::status(a),
        cli::Command::Arm(a) => cmd::status::arm(a, true),
        cli::Command::Disarm(a) => cmd::status::arm(a, false),
        cli::Command::Inspect(a) => cmd::status::inspect(a),
        cli::Command::BundleReader(a) => {
            pxe::bundle::serve_reader(&a.bundle, std::io::stdin().lock(), std::io::stdout().lock())
                .map_err(anyhow::Error::from)
        }
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
