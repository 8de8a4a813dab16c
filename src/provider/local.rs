//! The embedded local store, KeyZero's default backend: one file encrypted with
//! ChaCha20-Poly1305 under a 256-bit key kept in a `0600` key file (or `KZ_LOCAL_KEY`).
//!
//! File layout: `KZLS` | version (1) | key id (8) | nonce (12) | ciphertext+tag. The header is
//! the AEAD's associated data, so any change to any byte is detected. The key id lets kz say
//! "wrong key" rather than "tampered". Writes go to a temporary file in the same directory,
//! are synced, then renamed over the store; a lock file serialises writers.
//!
//! Longer than 400 lines because the store's format, key handling, locking and atomic writes
//! must be read together to check that no write is lost or half-written.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::{BoxFuture, Provider, ProviderError, Request};
use crate::config::LocalConfig;
use crate::env::Env;
use crate::secret::SecretValue;

const MAGIC: &[u8; 4] = b"KZLS";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 8;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{0}: wrong key for this store (it was written with another key; check KZ_LOCAL_KEY or the key file)")]
    WrongKey(String),
    #[error("{0}: store is corrupted or was tampered with (authentication failed)")]
    Tampered(String),
    #[error("{0}: not a keyzero store")]
    NotAStore(String),
    #[error("{0}")]
    Io(String),
    #[error("KZ_LOCAL_KEY: {0}")]
    BadEnvKey(String),
    #[error("{0}: key file is not a base64-encoded 32-byte key")]
    BadKeyFile(String),
    #[error("{0}: key file is readable by other users (mode {1:o}); run chmod 600 on it")]
    KeyFilePermissions(String, u32),
    #[error("secret {0:?} not found in local store")]
    NotFound(String),
    #[error("invalid secret name {0:?}: use letters, digits, '_', '-', '.', '/'")]
    BadName(String),
}

/// Where the store and its key live.
#[derive(Debug, Clone)]
pub struct StorePaths {
    pub store: PathBuf,
    pub key_file: PathBuf,
    /// `KZ_LOCAL_KEY`, when set: base64 of 32 bytes; it overrides the key file.
    pub env_key: Option<Zeroizing<String>>,
}

/// No place for the store or its key: neither the config, the variables nor a home name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    #[error("cannot place the local store: set KZ_STORE or HOME")]
    Store,
    #[error("cannot place the local key file: set KZ_LOCAL_KEY_FILE or HOME")]
    KeyFile,
}

impl StorePaths {
    /// Config values first, then `KZ_STORE` / `KZ_LOCAL_KEY_FILE`, then the XDG defaults
    /// (`~/.local/share/keyzero/store.kz`, `~/.config/keyzero/local.key`).
    pub fn resolve(
        cfg: &LocalConfig,
        store_flag: Option<&Path>,
        env: &dyn Env,
    ) -> Result<Self, Unplaced> {
        let home = env.home();
        let data = env
            .nonempty("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".local/share")));
        let conf = env
            .nonempty("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".config")));
        let store = store_flag
            .map(Path::to_path_buf)
            .or_else(|| cfg.path.clone())
            .or_else(|| env.nonempty("KZ_STORE").map(PathBuf::from))
            .or_else(|| data.map(|d| d.join("keyzero/store.kz")))
            .ok_or(Unplaced::Store)?;
        let key_file = cfg
            .key_file
            .clone()
            .or_else(|| env.nonempty("KZ_LOCAL_KEY_FILE").map(PathBuf::from))
            .or_else(|| conf.map(|d| d.join("keyzero/local.key")))
            .ok_or(Unplaced::KeyFile)?;
        Ok(StorePaths {
            store,
            key_file,
            env_key: env.nonempty("KZ_LOCAL_KEY").map(Zeroizing::new),
        })
    }
}

/// A 256-bit store key.
pub struct StoreKey(Zeroizing<[u8; KEY_LEN]>);

impl StoreKey {
    fn id(&self) -> [u8; 8] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"keyzero local store key id v1");
        ctx.update(&self.0[..]);
        let d = ctx.finish();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d.as_ref()[..8]);
        id
    }

    fn decode(text: &str) -> Option<Self> {
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()?,
        );
        if raw.len() != KEY_LEN {
            return None;
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&raw);
        Some(StoreKey(k))
    }

    /// A key for another purpose, derived from this one (HMAC-SHA-256 with `label`): kz's
    /// local state needs one secret only.
    pub fn derive(&self, label: &str) -> Zeroizing<Vec<u8>> {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0[..]);
        Zeroizing::new(ring::hmac::sign(&k, label.as_bytes()).as_ref().to_vec())
    }

    /// A fresh random key, base64-encoded (what `KZ_LOCAL_KEY` and the key file hold).
    pub fn generate_encoded() -> Zeroizing<String> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut k[..])
            .expect("system random source");
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&k[..]))
    }

    /// Loads the key; with `create`, a missing key file is created `0600`.
    pub fn load(paths: &StorePaths, create: bool) -> Result<Option<Self>, StoreError> {
        if let Some(text) = &paths.env_key {
            return StoreKey::decode(text).map(Some).ok_or_else(|| {
                StoreError::BadEnvKey(
                    "not a base64-encoded 32-byte key (generate one with `kz secret keygen`)"
                        .into(),
                )
            });
        }
        let shown = paths.key_file.display().to_string();
        match File::open(&paths.key_file) {
            Ok(mut f) => {
                let mode = f.metadata().map(|m| m.permissions().mode()).unwrap_or(0);
                if mode & 0o077 != 0 {
                    return Err(StoreError::KeyFilePermissions(shown, mode & 0o777));
                }
                let mut text = Zeroizing::new(String::new());
                f.read_to_string(&mut text).map_err(|e| {
                    StoreError::Io(format!("{shown}: {}", crate::config::io_reason(&e)))
                })?;
                StoreKey::decode(&text)
                    .map(Some)
                    .ok_or(StoreError::BadKeyFile(shown))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let encoded = StoreKey::generate_encoded();
                if let Some(dir) = paths.key_file.parent() {
                    create_private_dir(dir)?;
                }
                atomic_write(&paths.key_file, encoded.as_bytes())?;
                Ok(StoreKey::decode(&encoded))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(format!(
                "{shown}: cannot read key file: {}",
                crate::config::io_reason(&e)
            ))),
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            StoreError::Io(format!(
                "{}: cannot create directory: {}",
                dir.display(),
                crate::config::io_reason(&e)
            ))
        })
}

/// Writes `data` to `path` atomically with mode `0600`: temp file, fsync, rename, fsync dir.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let shown = path.display().to_string();
    let io = |what: &str, e: std::io::Error| {
        StoreError::Io(format!("{shown}: {what}: {}", crate::config::io_reason(&e)))
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut suffix = [0u8; 6];
    SystemRandom::new()
        .fill(&mut suffix)
        .expect("system random source");
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("store");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create temporary file", e))?;
        f.write_all(data).map_err(|e| io("write failed", e))?;
        f.sync_all().map_err(|e| io("sync failed", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("rename failed", e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The decrypted contents of a store.
#[derive(Default)]
pub struct Store {
    pub secrets: BTreeMap<String, SecretValue>,
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !name.starts_with('/')
        && !name.split('/').any(|s| s.is_empty() || s == "..")
}

impl Store {
    /// Decrypts store bytes. Pure: `shown` only names the store in errors.
    pub fn decrypt(bytes: &[u8], key: &StoreKey, shown: &str) -> Result<Store, StoreError> {
        if bytes.len() < HEADER_LEN + NONCE_LEN + 16 || &bytes[..4] != MAGIC {
            return Err(StoreError::NotAStore(shown.into()));
        }
        if bytes[4] != VERSION {
            return Err(StoreError::NotAStore(format!(
                "{shown} (unsupported version {})",
                bytes[4]
            )));
        }
        if bytes[5..HEADER_LEN] != key.id() {
            return Err(StoreError::WrongKey(shown.into()));
        }
        let (header, rest) = bytes.split_at(HEADER_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let mut buf = Zeroizing::new(sealed.to_vec());
        let aead =
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key.0[..]).expect("32-byte key"));
        let nonce = Nonce::try_assume_unique_for_key(nonce).expect("12-byte nonce");
        let plain = aead
            .open_in_place(nonce, Aad::from(header), &mut buf[..])
            .map_err(|_| StoreError::Tampered(shown.into()))?;
        let parsed: BTreeMap<String, String> =
            serde_json::from_slice(plain).map_err(|_| StoreError::Tampered(shown.into()))?;
        Ok(Store {
            secrets: parsed
                .into_iter()
                .map(|(k, v)| (k, SecretValue::new(v)))
                .collect(),
        })
    }

    pub fn encrypt(&self, key: &StoreKey) -> Vec<u8> {
        let map: BTreeMap<&str, &str> = self
            .secrets
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let mut buf = Zeroizing::new(serde_json::to_vec(&map).expect("strings serialise"));
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + buf.len() + 16);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&key.id());
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("system random source");
        let aead =
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key.0[..]).expect("32-byte key"));
        let tag = aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..HEADER_LEN]),
                &mut buf[..],
            )
            .expect("chacha20-poly1305 seal");
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Reads the store; a missing file is an empty store.
    pub fn read(paths: &StorePaths, key: &StoreKey) -> Result<Store, StoreError> {
        let shown = paths.store.display().to_string();
        match std::fs::read(&paths.store) {
            Ok(bytes) => Store::decrypt(&bytes, key, &shown),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(e) => Err(StoreError::Io(format!(
                "{shown}: cannot read: {}",
                crate::config::io_reason(&e)
            ))),
        }
    }

    pub fn write(&self, paths: &StorePaths, key: &StoreKey) -> Result<(), StoreError> {
        atomic_write(&paths.store, &self.encrypt(key))
    }
}

/// Read-modify-write under an exclusive lock, so concurrent `kz secret set` calls never lose
/// each other's updates.
pub fn update<T>(
    paths: &StorePaths,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if let Some(dir) = paths.store.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let lock_path = paths.store.with_extension("lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Io(format!(
                "{}: {}",
                lock_path.display(),
                crate::config::io_reason(&e)
            ))
        })?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| StoreError::Io(format!("{}: cannot lock: {e}", lock_path.display())))?;
    let key = StoreKey::load(paths, true)?.expect("created when missing");
    let mut store = Store::read(paths, &key)?;
    let out = f(&mut store)?;
    store.write(paths, &key)?;
    Ok(out)
}

/// Reads the store for lookups; with no key file yet there is nothing stored.
pub fn read_only(paths: &StorePaths) -> Result<Store, StoreError> {
    match StoreKey::load(paths, false)? {
        Some(key) => Store::read(paths, &key),
        None if paths.store.exists() => Err(StoreError::WrongKey(format!(
            "{} (key file {} is missing)",
            paths.store.display(),
            paths.key_file.display()
        ))),
        None => Ok(Store::default()),
    }
}

/// The `local` provider: reads the store once per run (a server: once per `cache_ttl`).
pub struct LocalProvider {
    paths: StorePaths,
    cache: super::cache::TtlCache<(), std::sync::Arc<Store>>,
}

impl LocalProvider {
    pub fn from_config(
        cfg: &LocalConfig,
        env: &dyn Env,
        cache_ttl: Option<std::time::Duration>,
    ) -> Result<Self, ProviderError> {
        let paths = StorePaths::resolve(cfg, None, env).map_err(ProviderError::config)?;
        Ok(LocalProvider {
            paths,
            cache: super::cache::TtlCache::new(cache_ttl),
        })
    }
}

impl Provider for LocalProvider {
    fn resolve<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async move {
            let store = self
                .cache
                .get_or_fetch((), || async {
                    let paths = self.paths.clone();
                    tokio::task::spawn_blocking(move || read_only(&paths))
                        .await
                        .map_err(|e| ProviderError::backend(e.to_string()))?
                        .map(std::sync::Arc::new)
                        .map_err(|e| ProviderError::backend(e.to_string()))
                })
                .await?;
            store.secrets.get(&req.reference).cloned().ok_or_else(|| {
                ProviderError::not_found(format!(
                    "not in local store {} (add it with: kz secret set {})",
                    self.paths.store.display(),
                    req.reference
                ))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StoreKey {
        StoreKey::decode(&StoreKey::generate_encoded()).unwrap()
    }

    #[test]
    fn round_trip_and_every_byte_is_authenticated() {
        let k = key();
        let mut s = Store::default();
        s.secrets
            .insert("openai".into(), SecretValue::new("sk-live-123"));
        let bytes = s.encrypt(&k);
        assert!(!bytes.windows(11).any(|w| w == b"sk-live-123"));
        let back = Store::decrypt(&bytes, &k, "s").unwrap();
        assert_eq!(back.secrets["openai"].expose(), "sk-live-123");
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            let err = Store::decrypt(&t, &k, "s").err().expect("tamper detected");
            assert!(
                matches!(
                    err,
                    StoreError::Tampered(_) | StoreError::WrongKey(_) | StoreError::NotAStore(_)
                ),
                "byte {i}: {err}"
            );
        }
        assert_eq!(
            Store::decrypt(&bytes, &key(), "s").err(),
            Some(StoreError::WrongKey("s".into()))
        );
        assert!(matches!(
            Store::decrypt(&bytes[..bytes.len() - 1], &k, "s"),
            Err(StoreError::Tampered(_))
        ));
    }

    #[test]
    fn names() {
        assert!(valid_name("openai"));
        assert!(valid_name("prod/db.password"));
        for bad in ["", "/x", "a//b", "a/../b", "a b", "x\n"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
