//! One-shot signals for connection tasks: the drain (SIGTERM: finish
//! in-flight requests, then close) and the stop (`--shutdown-grace` is
//! over: close now).
//!
//! A connection task is woken twice per request, and it must notice a
//! signal at any wake-up. tokio-util's `cancelled()` takes two locks per
//! poll (≈ 300 of an HTTP/1.1 request's 11 k instructions, measured with
//! `benches/callgrind.sh`), so a [`Signal`] is a flag plus a token: a task's
//! [`Watch`] polls the token's future once, to register its waker, and from
//! then on reads the flag, which [`Signal::fire`] sets before it wakes
//! anyone.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Fired once, seen by every task that watches it.
#[derive(Clone, Debug, Default)]
pub struct Signal {
    fired: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Signal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag, then wakes every watcher.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// For `select!` outside the per-request path (opaque copies,
    /// upgrades, hyper's connections).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A task's view of the signal; pin it where the task lives.
    pub fn watch(&self) -> Watch<'_> {
        Watch {
            fired: &self.fired,
            cancelled: self.token.cancelled(),
            registered: false,
        }
    }
}

pin_project! {
    /// Ready once the signal fired. Its waker is registered on the first
    /// pending poll only; later polls read the flag.
    pub struct Watch<'a> {
        fired: &'a AtomicBool,
        #[pin]
        cancelled: WaitForCancellationFuture<'a>,
        registered: bool,
    }
}

impl Future for Watch<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !*this.registered {
            *this.registered = true;
            return this.cancelled.poll(cx);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_watch_is_woken_once_and_then_ready() {
        let signal = Signal::new();
        let count = Arc::new(Count::default());
        let waker = Arc::clone(&count).into();
        let mut cx = Context::from_waker(&waker);
        let mut watch = pin!(signal.watch());
        // Pending polls, the first of which registers the waker.
        for _ in 0..3 {
            assert!(watch.as_mut().poll(&mut cx).is_pending());
        }
        assert!(!signal.is_fired());
        signal.fire();
        assert!(signal.is_fired());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "fire wakes the watcher");
        assert!(watch.as_mut().poll(&mut cx).is_ready());
        assert!(signal.token().is_cancelled());
    }

    #[test]
    fn a_watch_made_after_the_fire_is_ready_at_once() {
        let signal = Signal::new();
        signal.clone().fire();
        let waker = Arc::new(Count::default()).into();
        let mut cx = Context::from_waker(&waker);
        assert!(pin!(signal.watch()).poll(&mut cx).is_ready());
    }
}
