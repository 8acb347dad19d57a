//! The `mp4tomp3` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use mp4tomp3::cli::{self, Cli, LogFormat};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line for bad usage, as for every other input error.
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("mp4tomp3: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // symphonia logs through `log` ("skipped 4 bytes of junk" for every MP4, probe
        // errors we report ourselves): keep our own one-line errors only.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log_filter()));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // The engine turns panics inside its dependencies into errors; keep their reports to
    // the debug log so stderr holds one line, and catch any other panic here.
    std::panic::set_hook(Box::new(|info| tracing::debug!(%info, "panic")));
    match std::panic::catch_unwind(|| cli::run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            // A conversion error's line starts with its code (`corrupt_media: ...`).
            eprintln!("mp4tomp3: {}: {e}", e.code());
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
        Err(_) => {
            eprintln!("mp4tomp3: internal error (a bug): run with RUST_LOG=debug for details");
            ExitCode::from(1)
        }
    }
}
