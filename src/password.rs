//! Room passwords: Argon2id hashes (PHC strings). One hash costs tens of
//! milliseconds and 19 MiB, so hashing is a bounded resource: a [`Hasher`]
//! runs at most `limits.password_hashes` at a time on tokio's blocking pool,
//! lets at most `limits.password_queue` more wait, and answers `rate_limited`
//! beyond that instead of queueing without end. Memory stays bounded under
//! any flood of password joins.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::protocol::{ErrorCode, Failure};

/// The server's one gate for Argon2 work.
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Hashes running or waiting.
    admitted: Arc<AtomicUsize>,
    /// Most hashes running or waiting at once.
    limit: usize,
}

/// Gives its place back when the hash ends or its request is dropped.
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hasher {
    /// `in_flight` hashes at a time (0 = one per core), `queue` waiting.
    pub fn new(in_flight: usize, queue: usize) -> Arc<Hasher> {
        let in_flight = if in_flight > 0 {
            in_flight
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        };
        Arc::new(Hasher {
            permits: Arc::new(Semaphore::new(in_flight)),
            admitted: Arc::new(AtomicUsize::new(0)),
            limit: in_flight + queue,
        })
    }

    /// Runs `work` on the blocking pool when a permit is free; `rate_limited`
    /// at once when the queue is full.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, Failure>> + Send + 'static {
        let admitted = self.admitted.fetch_add(1, Ordering::AcqRel) < self.limit;
        let admission = Admission(self.admitted.clone());
        let permits = self.permits.clone();
        async move {
            let _admission = admission;
            if !admitted {
                log::warn!("password hashing queue full: request refused");
                return Err(Failure::new(
                    ErrorCode::RateLimited,
                    "the server is busy checking passwords; try again in a moment",
                ));
            }
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| Failure::from(ErrorCode::Internal))?;
            tokio::task::spawn_blocking(work).await.map_err(|e| {
                log::error!("password hashing task failed: {e}");
                Failure::from(ErrorCode::Internal)
            })
        }
    }

    /// Hashes a password with Argon2id and a fresh salt.
    pub fn hash(
        &self,
        password: String,
    ) -> impl std::future::Future<Output = Result<String, Failure>> + Send + 'static {
        let work = self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        });
        async move {
            work.await?.map_err(|e| {
                log::error!("argon2: {e}");
                Failure::from(ErrorCode::Internal)
            })
        }
    }

    /// Checks a password against a stored hash; a damaged hash counts as a
    /// mismatch.
    pub fn verify(
        &self,
        hash: String,
        password: String,
    ) -> impl std::future::Future<Output = Result<bool, Failure>> + Send + 'static {
        self.run(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
    }
}
