//! Room passwords: Argon2id hashes (PHC strings). One hash costs tens of
//! milliseconds and 19 MiB, so hashing is a bounded resource, and a
//! [`Hasher`] is the server's one gate for it:
//!
//! - at most `limits.password_hashes` run at a time on tokio's blocking
//!   pool, at most `limits.password_queue` more wait, and past that the
//!   request answers `rate_limited` instead of queueing without end;
//! - each user has one hash running or waiting at a time, so one account
//!   cannot fill the queue ahead of everyone else;
//! - wrong-password attempts are budgeted per user (across all rooms) and
//!   per client address ([`Hasher::attempt`]);
//! - the 19 MiB of Argon2 blocks are allocated once per running hash and
//!   reused: allocating them per hash on ever-changing blocking threads left
//!   the allocator holding about a gigabyte after a flood.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

use crate::protocol::{ErrorCode, Failure};
use crate::util::Windows;

/// The window of the attempt budgets.
const WINDOW: Duration = Duration::from_secs(60);

/// The server's one gate for Argon2 work.
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Hashes running or waiting.
    admitted: Arc<AtomicUsize>,
    /// Most hashes running or waiting at once.
    limit: usize,
    /// Users with a hash running or waiting.
    busy: Arc<Mutex<HashMap<String, ()>>>,
    /// Argon2 memory, one set of blocks per running hash, reused.
    blocks: Arc<Mutex<Vec<Vec<Block>>>>,
    attempts: Mutex<Attempts>,
    per_user: u32,
    per_ip: u32,
}

/// Attempts counted in the current window, by user and by address.
struct Attempts {
    users: Windows<String>,
    ips: Windows<IpAddr>,
}

/// One counted password attempt. A right password (or a check that never
/// ran) gives it back with [`Attempt::refund`].
pub struct Attempt {
    hasher: Arc<Hasher>,
    user: String,
    ip: IpAddr,
}

impl Attempt {
    pub fn refund(self) {
        let mut a = self.hasher.attempts.lock().expect("attempts lock");
        a.users.give_back(&self.user);
        a.ips.give_back(&crate::peers::budget_key(self.ip));
    }
}

/// Gives its places back when the hash ends or its request is dropped.
struct Admission {
    admitted: Arc<AtomicUsize>,
    busy: Arc<Mutex<HashMap<String, ()>>>,
    user: Option<String>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
        if let Some(user) = &self.user {
            self.busy.lock().expect("busy lock").remove(user);
        }
    }
}

fn busy_failure() -> Failure {
    Failure::new(
        ErrorCode::RateLimited,
        "the server is busy checking passwords; try again in a moment",
    )
}

impl Hasher {
    /// `in_flight` hashes at a time (0 = one per core), `queue` waiting;
    /// `per_user` and `per_ip` password attempts a minute.
    pub fn new(in_flight: usize, queue: usize, per_user: u32, per_ip: u32) -> Arc<Hasher> {
        let in_flight = if in_flight > 0 {
            in_flight
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        };
        Arc::new(Hasher {
            permits: Arc::new(Semaphore::new(in_flight)),
            admitted: Arc::new(AtomicUsize::new(0)),
            limit: in_flight + queue,
            busy: Arc::default(),
            blocks: Arc::default(),
            attempts: Mutex::new(Attempts {
                users: Windows::new(WINDOW, 100_000),
                ips: Windows::new(WINDOW, 100_000),
            }),
            per_user,
            per_ip,
        })
    }

    /// Counts one password attempt of `user` from `ip`; `rate_limited`
    /// past either budget. Counted before the hash runs, so racing attempts
    /// cannot exceed it.
    pub fn attempt(self: &Arc<Self>, user: &str, ip: IpAddr) -> Result<Attempt, Failure> {
        let mut a = self.attempts.lock().expect("attempts lock");
        let key = crate::peers::budget_key(ip);
        if !a.users.take(user.to_owned(), self.per_user) {
            return Err(Failure::new(
                ErrorCode::RateLimited,
                "too many password attempts; wait a minute",
            ));
        }
        if !a.ips.take(key, self.per_ip) {
            a.users.give_back(&user.to_owned());
            return Err(Failure::new(
                ErrorCode::RateLimited,
                "too many password attempts from your address; wait a minute",
            ));
        }
        Ok(Attempt {
            hasher: self.clone(),
            user: user.to_owned(),
            ip,
        })
    }

    /// Runs `work` with a set of Argon2 blocks on the blocking pool when a
    /// permit is free; `rate_limited` at once when the queue is full or
    /// `user` already has a hash running or waiting.
    fn run<T: Send + 'static>(
        &self,
        user: &str,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, Failure>> + Send + 'static {
        let admitted = self.admitted.fetch_add(1, Ordering::AcqRel) < self.limit;
        let first = admitted
            && self
                .busy
                .lock()
                .expect("busy lock")
                .insert(user.to_owned(), ())
                .is_none();
        let admission = Admission {
            admitted: self.admitted.clone(),
            busy: self.busy.clone(),
            user: first.then(|| user.to_owned()),
        };
        let (permits, blocks) = (self.permits.clone(), self.blocks.clone());
        let admitted_count = self.admitted.clone();
        async move {
            let _admission = admission;
            if !admitted {
                log::warn!("password hashing queue full: request refused");
                return Err(busy_failure());
            }
            if !first {
                return Err(busy_failure());
            }
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| Failure::from(ErrorCode::Internal))?;
            let queue = admitted_count.clone();
            tokio::task::spawn_blocking(move || {
                // At most one set per permit exists: a running hash takes
                // one, and gives it back when done.
                let mut mine = blocks
                    .lock()
                    .expect("blocks lock")
                    .pop()
                    .unwrap_or_default();
                let out = work(&mut mine);
                let mut pool = blocks.lock().expect("blocks lock");
                if queue.load(Ordering::Acquire) > 1 {
                    pool.push(mine);
                } else {
                    // Nothing else waits: give the memory back to the
                    // system rather than keep 19 MiB per thread for the
                    // next flood (glibc keeps freed large blocks otherwise).
                    pool.clear();
                    drop(mine);
                    release_free_memory();
                }
                out
            })
            .await
            .map_err(|e| {
                log::error!("password hashing task failed: {e}");
                Failure::from(ErrorCode::Internal)
            })
        }
    }

    /// Hashes `user`'s password with Argon2id and a fresh salt.
    pub fn hash(
        &self,
        user: &str,
        password: String,
    ) -> impl std::future::Future<Output = Result<String, Failure>> + Send + 'static {
        let work = self.run(user, move |blocks| hash_with(blocks, password.as_bytes()));
        async move {
            work.await?.map_err(|e| {
                log::error!("argon2: {e}");
                Failure::from(ErrorCode::Internal)
            })
        }
    }

    /// Checks `user`'s password against a stored hash; a damaged hash
    /// counts as a mismatch.
    pub fn verify(
        &self,
        user: &str,
        hash: String,
        password: String,
    ) -> impl std::future::Future<Output = Result<bool, Failure>> + Send + 'static {
        self.run(user, move |blocks| {
            verify_with(blocks, &hash, password.as_bytes()).unwrap_or(false)
        })
    }
}

/// Returns freed heap memory to the system (glibc keeps it otherwise).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `blocks` sized for `params` (grown once, then reused).
fn blocks_for<'b>(blocks: &'b mut Vec<Block>, params: &Params) -> &'b mut [Block] {
    let n = params.block_count();
    if blocks.len() < n {
        blocks.resize(n, Block::default());
    }
    &mut blocks[..n]
}

fn hash_with(blocks: &mut Vec<Block>, password: &[u8]) -> argon2::password_hash::Result<String> {
    let argon = Argon2::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let len = argon
        .params()
        .output_len()
        .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let memory = blocks_for(blocks, argon.params());
    let hash = Output::init_with(len, |out| {
        Ok(argon.hash_password_into_with_memory(password, salt_bytes, out, &mut *memory)?)
    })?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params())?,
        salt: Some(salt.as_salt()),
        hash: Some(hash),
    }
    .to_string())
}

fn verify_with(
    blocks: &mut Vec<Block>,
    stored: &str,
    password: &[u8],
) -> argon2::password_hash::Result<bool> {
    let parsed = PasswordHash::new(stored)?;
    let expected = parsed.hash.ok_or(argon2::password_hash::Error::Password)?;
    let salt = parsed.salt.ok_or(argon2::password_hash::Error::Password)?;
    let params = Params::try_from(&parsed)?;
    let algorithm = Algorithm::try_from(parsed.algorithm)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let memory = blocks_for(blocks, &params);
    let got = Output::init_with(expected.len(), |out| {
        Ok(argon.hash_password_into_with_memory(password, salt_bytes, out, &mut *memory)?)
    })?;
    // Output's equality is constant-time.
    Ok(got == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordVerifier;

    #[test]
    fn hashes_verify_here_and_with_the_argon2_crate() {
        let mut blocks = Vec::new();
        let phc = hash_with(&mut blocks, b"hunter2").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_with(&mut blocks, &phc, b"hunter2").unwrap());
        assert!(!verify_with(&mut blocks, &phc, b"hunter3").unwrap());
        // The same PHC string the crate's own API reads (hashes stored by
        // earlier versions stay valid, and the other way round).
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default()
            .verify_password(b"hunter2", &parsed)
            .is_ok());
        use argon2::password_hash::PasswordHasher;
        let old = Argon2::default()
            .hash_password(b"s3cret", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify_with(&mut blocks, &old, b"s3cret").unwrap());
        assert!(verify_with(&mut blocks, "not a hash", b"s3cret").is_err());
    }

    #[test]
    fn attempts_are_budgeted_per_user_and_per_address() {
        let h = Hasher::new(1, 1, 3, 5);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let mut kept = Vec::new();
        for _ in 0..3 {
            kept.push(h.attempt("mallory", ip).unwrap());
        }
        // Whatever the room, the user's budget is spent.
        assert!(h.attempt("mallory", other).is_err());
        // A right password gives its attempt back.
        kept.pop().unwrap().refund();
        assert!(h.attempt("mallory", other).is_ok());
        // Other accounts from one address share its budget.
        // (2 of the address's 5 are held by mallory's attempts)
        assert!(h.attempt("sybil-1", ip).is_ok());
        assert!(h.attempt("sybil-2", ip).is_ok());
        assert!(h.attempt("sybil-3", ip).is_ok());
        assert!(h.attempt("sybil-4", ip).is_err());
        assert!(h.attempt("honest", other).is_ok());
    }
}
