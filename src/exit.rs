//! Exit codes, as SPEC section 1 lists them, and the mapping of a child's fate to one.

use std::os::unix::process::ExitStatusExt;

/// A command that could not do its job (bad input, a failed check, an unreachable service);
/// `kz scan` also exits with it when it found a secret.
pub const EXIT_FAIL: u8 = 1;
/// Usage error: a command line that cannot be run as given.
pub const EXIT_USAGE: u8 = 2;
/// kz itself failed before or while starting the child (config, resolution, policy, proxy,
/// namespace).
pub const EXIT_KZ: u8 = 125;
/// The command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Maps a wait status to the shell convention: the code, or 128+N for signal N.
pub fn of_status(status: std::process::ExitStatus) -> u8 {
    if let Some(c) = status.code() {
        c as u8
    } else if let Some(s) = status.signal() {
        (128 + s) as u8
    } else {
        EXIT_FAIL
    }
}

/// Why a command could not be started, and the code for it (127 not found, 126 otherwise).
pub fn of_spawn_error(e: &std::io::Error) -> (u8, String) {
    match e.kind() {
        std::io::ErrorKind::NotFound => (EXIT_NOT_FOUND, "command not found".to_string()),
        std::io::ErrorKind::PermissionDenied => (
            EXIT_NOT_EXECUTABLE,
            "permission denied (not executable)".to_string(),
        ),
        _ if e.raw_os_error() == Some(nix::libc::ENOEXEC) => {
            (EXIT_NOT_EXECUTABLE, "not an executable format".to_string())
        }
        _ if e.raw_os_error() == Some(nix::libc::EISDIR) => {
            (EXIT_NOT_EXECUTABLE, "is a directory".to_string())
        }
        _ => (EXIT_NOT_EXECUTABLE, e.to_string().to_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_errors_map_to_126_and_127() {
        let code = |e: std::io::Error| of_spawn_error(&e).0;
        assert_eq!(code(std::io::ErrorKind::NotFound.into()), 127);
        assert_eq!(code(std::io::ErrorKind::PermissionDenied.into()), 126);
        assert_eq!(
            code(std::io::Error::from_raw_os_error(nix::libc::ENOEXEC)),
            126
        );
        assert_eq!(
            code(std::io::Error::from_raw_os_error(nix::libc::EISDIR)),
            126
        );
    }
}
