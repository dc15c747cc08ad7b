//! A bound on the memory held by requests and fetch responses in flight
//! (Kafka's `queued.max.request.bytes`, extended to fetched data).
//!
//! A connection takes a lease for a request's frame before allocating it,
//! and keeps it until the answer is written; while the pool is used up, no
//! connection reads another request (Kafka mutes its sockets the same way).
//! A fetch takes, without waiting, what is free up to its budget and reads
//! no more than that; with nothing free it answers without records, and the
//! client fetches again. Its lease lives until the response is written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The pool; `None` inside means unbounded (`queued.max.request.bytes=-1`).
#[derive(Debug)]
pub struct MemoryPool {
    bounded: Option<Bounded>,
}

#[derive(Debug)]
struct Bounded {
    capacity: u32,
    free: Arc<Semaphore>,
    /// The most ever leased at once, for tests and metrics.
    peak: Arc<AtomicUsize>,
}

/// Memory leased from the pool; returned when dropped.
#[derive(Debug, Default)]
pub struct MemoryLease {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl MemoryPool {
    /// A pool of `capacity` bytes (at most 4 GiB - 1), or an unbounded one.
    pub fn new(capacity: Option<usize>) -> Self {
        let bounded = capacity.map(|c| {
            let capacity = u32::try_from(c).unwrap_or(u32::MAX).max(1);
            Bounded {
                capacity,
                free: Arc::new(Semaphore::new(capacity as usize)),
                peak: Arc::new(AtomicUsize::new(0)),
            }
        });
        Self { bounded }
    }

    /// Waits until `bytes` are free, in arrival order. A request larger than
    /// the whole pool waits for all of it, so it runs alone rather than never.
    pub async fn acquire(&self, bytes: usize) -> MemoryLease {
        let Some(pool) = &self.bounded else {
            return MemoryLease::unbounded(bytes);
        };
        let n = u32::try_from(bytes).unwrap_or(u32::MAX).min(pool.capacity);
        match pool.free.clone().acquire_many_owned(n).await {
            Ok(permit) => pool.leased(permit, bytes),
            // The semaphore is never closed.
            Err(_) => MemoryLease::unbounded(bytes),
        }
    }

    /// Takes what is free now, up to `bytes`, without waiting (0 when the
    /// pool is used up).
    pub fn try_acquire_up_to(&self, bytes: usize) -> MemoryLease {
        let Some(pool) = &self.bounded else {
            return MemoryLease::unbounded(bytes);
        };
        loop {
            let free = pool.free.available_permits().min(bytes);
            if free == 0 {
                return MemoryLease::default();
            }
            let n = u32::try_from(free).unwrap_or(u32::MAX);
            // Another task may have taken some since: ask again.
            if let Ok(permit) = pool.free.clone().try_acquire_many_owned(n) {
                return pool.leased(permit, n as usize);
            }
        }
    }

    /// The most ever leased at once (0 for an unbounded pool).
    pub fn peak(&self) -> usize {
        self.bounded
            .as_ref()
            .map_or(0, |p| p.peak.load(Ordering::Relaxed))
    }

    /// Bytes leased now (0 for an unbounded pool).
    pub fn in_use(&self) -> usize {
        self.bounded.as_ref().map_or(0, |p| {
            (p.capacity as usize).saturating_sub(p.free.available_permits())
        })
    }
}

impl Bounded {
    fn leased(&self, permit: OwnedSemaphorePermit, bytes: usize) -> MemoryLease {
        let in_use = (self.capacity as usize).saturating_sub(self.free.available_permits());
        self.peak.fetch_max(in_use, Ordering::Relaxed);
        MemoryLease {
            permit: Some(permit),
            bytes,
        }
    }
}

impl MemoryLease {
    fn unbounded(bytes: usize) -> Self {
        Self {
            permit: None,
            bytes,
        }
    }

    /// The bytes this lease covers.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `other` to this lease.
    pub fn absorb(&mut self, other: MemoryLease) {
        self.bytes += other.bytes;
        match (&mut self.permit, other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    /// Returns what is above `bytes` to the pool.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes >= self.bytes {
            return;
        }
        if let Some(permit) = &mut self.permit {
            let keep = permit.num_permits().min(bytes);
            if let Some(rest) = permit.split(permit.num_permits() - keep) {
                drop(rest);
            }
        }
        self.bytes = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_wait_for_room_and_give_back_what_they_do_not_use() {
        let pool = MemoryPool::new(Some(100));
        let mut a = pool.acquire(60).await;
        assert_eq!(pool.try_acquire_up_to(80).bytes(), 40, "only what is free");
        assert_eq!(pool.in_use(), 60, "the lease above went back when dropped");
        // Larger than the whole pool: waits for all of it, then runs alone.
        let big = tokio::spawn({
            let pool = Arc::new(pool);
            async move {
                let lease = pool.acquire(500).await;
                (lease.bytes(), pool.in_use(), pool)
            }
        });
        tokio::task::yield_now().await;
        a.shrink_to(10);
        assert_eq!(a.bytes(), 10);
        let more = MemoryLease::default();
        a.absorb(more);
        drop(a);
        let (bytes, in_use, pool) = big.await.unwrap();
        assert_eq!((bytes, in_use), (500, 100));
        assert_eq!(pool.peak(), 100);
        assert_eq!(
            MemoryPool::new(None).acquire(1 << 40).await.bytes(),
            1 << 40
        );
    }
}
