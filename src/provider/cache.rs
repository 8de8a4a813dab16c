//! A small cache for provider reads: concurrent reads of one key share one fetch, a value is
//! reused for `cache_ttl` (for `kz run`, the whole run), and an error or a not-found answer is
//! never kept, so the next read asks the backend again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::ProviderError;

type Cell<V> = Arc<OnceCell<Result<V, ProviderError>>>;

pub struct TtlCache<K, V> {
    ttl: Option<Duration>,
    map: Mutex<HashMap<K, (Instant, Cell<V>)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// `ttl: None` keeps values for the cache's life.
    pub fn new(ttl: Option<Duration>) -> Self {
        TtlCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get_or_fetch<F, Fut>(&self, key: K, fetch: F) -> Result<V, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, ProviderError>>,
    {
        let cell = {
            let mut map = self.map.lock().unwrap();
            let fresh = |(at, cell): &(Instant, Cell<V>)| match cell.get() {
                None => true,
                Some(Ok(_)) => self.ttl.map_or(true, |t| at.elapsed() < t),
                Some(Err(_)) => false,
            };
            match map.get(&key) {
                Some(entry) if fresh(entry) => entry.1.clone(),
                _ => {
                    let cell: Cell<V> = Arc::default();
                    map.insert(key.clone(), (Instant::now(), cell.clone()));
                    cell
                }
            }
        };
        let out = cell.get_or_init(fetch).await.clone();
        if out.is_err() {
            let mut map = self.map.lock().unwrap();
            if map.get(&key).is_some_and(|(_, c)| Arc::ptr_eq(c, &cell)) {
                map.remove(&key);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn values_expire_and_errors_are_never_kept() {
        let cache: TtlCache<&str, u32> = TtlCache::new(Some(Duration::from_millis(50)));
        let calls = AtomicUsize::new(0);
        let fetch = |ok: bool| {
            let n = calls.fetch_add(1, Ordering::SeqCst) as u32;
            async move {
                if ok {
                    Ok(n)
                } else {
                    Err(ProviderError::not_found("nope"))
                }
            }
        };
        assert!(cache.get_or_fetch("a", || fetch(false)).await.is_err());
        assert_eq!(cache.get_or_fetch("a", || fetch(true)).await.unwrap(), 1);
        assert_eq!(cache.get_or_fetch("a", || fetch(true)).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.get_or_fetch("a", || fetch(true)).await.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
