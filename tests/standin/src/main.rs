//! `fastproxy-standin`: runs the WireServer, HostGAPlugin and IMDS stand-in until SIGTERM or
//! SIGINT (see the library for what it answers and records).

use std::process::ExitCode;

use clap::Parser;
use fastproxy_standin::StandinArgs;

fn main() -> ExitCode {
    match StandinArgs::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fastproxy-standin: {e:#}");
            ExitCode::FAILURE
        }
    }
}
