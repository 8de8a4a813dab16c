//! The `file` provider: a file's contents (one trailing newline dropped), or with `key` a JSON
//! key or JSON pointer inside it.

use super::{pick_key, BoxFuture, Provider, ProviderError, Request};
use crate::secret::SecretValue;
use zeroize::Zeroizing;

pub struct FileProvider;

/// Files larger than this are not secrets.
const MAX_FILE: u64 = 1 << 20;

impl Provider for FileProvider {
    fn resolve<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async move {
            let path = std::path::Path::new(&req.reference);
            let meta = tokio::fs::metadata(path).await.map_err(map_io)?;
            if meta.is_dir() {
                return Err(ProviderError::backend("is a directory"));
            }
            if meta.len() > MAX_FILE {
                return Err(ProviderError::backend(format!(
                    "larger than {MAX_FILE} bytes"
                )));
            }
            let bytes = Zeroizing::new(tokio::fs::read(path).await.map_err(map_io)?);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ProviderError::backend("not valid utf-8"))?;
            match &req.key {
                Some(k) => pick_key(text, k),
                None => {
                    let t = text
                        .strip_suffix("\r\n")
                        .or_else(|| text.strip_suffix('\n'))
                        .unwrap_or(text);
                    Ok(SecretValue::new(t))
                }
            }
        })
    }
}

fn map_io(e: std::io::Error) -> ProviderError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ProviderError::not_found("no such file"),
        std::io::ErrorKind::PermissionDenied => ProviderError::denied("permission denied"),
        _ => ProviderError::backend(e.to_string().to_lowercase()),
    }
}
