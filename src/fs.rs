//! File errors as one line: the path and a lower-case reason (`no such file`, `permission
//! denied`, or the system's own words), never the file's content.

use std::path::Path;

/// The reason of an I/O error, in the words kz's error lines use.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string().to_lowercase(),
    }
}

/// A file or directory kz could not read or write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FileError {
    pub path: String,
    pub reason: String,
}

impl FileError {
    pub fn new(path: &Path, e: &std::io::Error) -> Self {
        FileError {
            path: path.display().to_string(),
            reason: io_reason(e),
        }
    }

    /// A closure for `map_err` on operations on `path`.
    pub fn at(path: &Path) -> impl Fn(std::io::Error) -> FileError + '_ {
        move |e| FileError::new(path, &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_with_the_path_and_a_plain_reason() {
        let e = std::fs::read("/nonexistent/kz-file").unwrap_err();
        let f = FileError::new(Path::new("/nonexistent/kz-file"), &e);
        assert_eq!(f.to_string(), "/nonexistent/kz-file: no such file");
    }
}
