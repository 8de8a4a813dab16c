//! Reloading the bundle on SIGHUP and when its file changes (once the file has settled); a bad
//! new bundle keeps the old one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Server;

/// How long a changed bundle must stay unchanged before it is loaded.
const SETTLE: Duration = Duration::from_millis(300);

/// Whether the file's content and modification time stay the same over `SETTLE`.
async fn settled(path: &std::path::Path) -> bool {
    let look = || {
        (
            std::fs::read(path).ok(),
            std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        )
    };
    let before = look();
    tokio::time::sleep(SETTLE).await;
    before == look()
}

/// Watches for SIGHUP and for changes of the bundle file, reloading on either.
pub(super) fn watch(server: Arc<Server>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut last = modified(&server.bundle_path);
        loop {
            let by_signal = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            let now = modified(&server.bundle_path);
            if by_signal || now != last {
                // A file still being written may parse by chance: reload only once it has
                // stayed the same for a moment (the next tick tries again otherwise).
                if !settled(&server.bundle_path).await {
                    continue;
                }
                last = modified(&server.bundle_path);
                match server.reload().await {
                    Ok(rev) => eprintln!("kz: bundle reloaded (revision {rev})"),
                    Err(errors) => {
                        eprintln!("kz: bundle reload failed; keeping the previous bundle:");
                        for e in errors {
                            eprintln!("kz: {e}");
                        }
                    }
                }
            }
        }
    })
}
