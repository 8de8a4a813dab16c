//! The `kz` binary: parse the command line, run the command, map the outcome to an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

// The proxy allocates and frees many small buffers per request (TLS records, header maps,
// futures); mimalloc's thread-local free lists cost less CPU per request than glibc's malloc
// here (profiled with perf; measured by scripts/bench-proxy, see the README).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = kz::cli::parse();
    match kz::cmd::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            for line in &failure.lines {
                eprintln!("kz: {line}");
            }
            ExitCode::from(failure.code)
        }
    }
}
