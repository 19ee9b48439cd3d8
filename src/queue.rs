//! The bounded frame queue between source and detector: drop-oldest, every drop counted.
//!
//! A line camera must never stall on a slow detector: when the queue is full the oldest frame
//! goes (it is the least relevant), the newest is kept, and the drop is counted for telemetry.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

pub struct DropOldest<T> {
    inner: Mutex<(VecDeque<T>, bool)>,
    notify: Notify,
    capacity: usize,
    dropped: AtomicU64,
}

impl<T> DropOldest<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((VecDeque::with_capacity(capacity), false)),
            notify: Notify::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Adds an item, dropping the oldest if full; false once the queue is closed.
    pub fn push(&self, item: T) -> bool {
        let mut g = self.inner.lock().expect("queue lock");
        if g.1 {
            return false;
        }
        if g.0.len() == self.capacity {
            g.0.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        g.0.push_back(item);
        drop(g);
        self.notify.notify_one();
        true
    }

    /// No more pushes; `pop` drains what is left, then returns `None`.
    pub fn close(&self) {
        self.inner.lock().expect("queue lock").1 = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    pub async fn pop(&self) -> Option<T> {
        loop {
            {
                let mut g = self.inner.lock().expect("queue lock");
                if let Some(item) = g.0.pop_front() {
                    return Some(item);
                }
                if g.1 {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("queue lock").0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_drops_the_oldest_and_counts_it() {
        let q = DropOldest::new(2);
        for i in 0..5 {
            assert!(q.push(i));
        }
        assert_eq!(q.dropped(), 3);
        q.close();
        assert!(!q.push(9));
        assert_eq!(q.pop().await, Some(3));
        assert_eq!(q.pop().await, Some(4));
        assert_eq!(q.pop().await, None);
    }
}
