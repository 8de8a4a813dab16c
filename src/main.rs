//! The `kz` binary: parse the command line, run the command, map the outcome to an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kz::parse();
    match kz::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            for line in &failure.lines {
                eprintln!("kz: {line}");
            }
            ExitCode::from(failure.code)
        }
    }
}
