//! The handlers a connection runs inside its own task (`spawn_handlers = false`, or a
//! method marked inline): a slab of runs, each slot with a waker of its own made once
//! and reused by every run the slot holds.
//!
//! A call costs no allocation here once the slab has grown to the connection's
//! concurrency: no task node and no abort handle per call, as a `FuturesUnordered` of
//! `Abortable` runs would need. A slot's waker puts the slot's index on a shared ready
//! list (once until it is polled) and wakes the connection's task; the connection polls
//! the runs on that list. Cancelling a call drops its run where it stands.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use polycall_core::{Reply, Status};

use super::handler_run::HandlerRun;

/// The slab of runs, owned by the connection's task.
#[derive(Default)]
pub(super) struct InlineHandlers {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Slots to poll: new runs, and those whose waker fired (taken from `shared`).
    pending: VecDeque<usize>,
    shared: Arc<Shared>,
    running: usize,
}

struct Slot {
    run: Option<HandlerRun>,
    wake: Arc<SlotWake>,
    waker: Waker,
}

/// What the slots' wakers and the connection share.
#[derive(Default)]
struct Shared {
    ready: Mutex<Vec<usize>>,
    task: AtomicWaker,
}

struct SlotWake {
    index: usize,
    /// On the ready list (or about to be polled): a second wake adds nothing.
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.shared
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.index);
            self.shared.task.wake();
        }
    }
}

impl InlineHandlers {
    /// How many runs are in the slab.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.running
    }

    /// Adds a run; returns its slot (to [`cancel`](Self::cancel) it by). It is polled
    /// at the next [`poll_next`](Self::poll_next).
    pub(super) fn push(&mut self, run: HandlerRun) -> usize {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = self.slots.len();
                let wake = Arc::new(SlotWake {
                    index,
                    queued: AtomicBool::new(false),
                    shared: self.shared.clone(),
                });
                let waker = Waker::from(wake.clone());
                self.slots.push(Slot {
                    run: None,
                    wake,
                    waker,
                });
                index
            }
        };
        let slot = &mut self.slots[index];
        slot.run = Some(run);
        slot.wake.queued.store(true, Ordering::Release);
        self.pending.push_back(index);
        self.running += 1;
        index
    }

    /// Drops the run in `slot` (its call was cancelled); the slot is reused.
    pub(super) fn cancel(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot)
            && s.run.take().is_some()
        {
            self.free.push(slot);
            self.running -= 1;
        }
    }

    /// Polls the runs that were woken (each about once) until one finishes: its call id
    /// and answer. `Ready(None)` when the slab is empty; `Pending` when no woken run
    /// finished (the connection's task is woken when one is woken again, or at once
    /// when the budget of polls ran out first).
    pub(super) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(u32, Result<Reply, Status>)>> {
        if self.running == 0 {
            return Poll::Ready(None);
        }
        self.shared.task.register(cx.waker());
        // Each run at most about once per call: a run that wakes itself while polled
        // (a yield) is back on the list at once, and must not keep the connection's
        // task here. Past the budget, the task is woken to come back.
        let mut budget = self.running + 1;
        loop {
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let index = match self.pending.pop_front() {
                Some(index) => index,
                None => {
                    let mut ready = self.shared.ready.lock().unwrap_or_else(|e| e.into_inner());
                    if ready.is_empty() {
                        return Poll::Pending;
                    }
                    self.pending.extend(ready.drain(..));
                    continue;
                }
            };
            let slot = &mut self.slots[index];
            // A wake that raced a cancel: nothing to poll. (A duplicate entry for a
            // slot that was reused polls its run once more, harmlessly.)
            let Some(run) = slot.run.as_mut() else {
                continue;
            };
            slot.wake.queued.store(false, Ordering::Release);
            budget -= 1;
            let mut slot_cx = Context::from_waker(&slot.waker);
            if let Poll::Ready(answer) = std::pin::Pin::new(run).poll(&mut slot_cx) {
                slot.run = None;
                self.free.push(index);
                self.running -= 1;
                return Poll::Ready(Some(answer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polycall_core::{BoxFuture, Payload};
    use std::future::poll_fn;

    fn ready(text: &'static str) -> BoxFuture {
        Box::pin(async move { Ok(Reply::new(Payload::raw(text))) })
    }

    #[tokio::test]
    async fn runs_finish_in_turn_and_slots_are_reused() {
        let mut h = InlineHandlers::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting: BoxFuture = Box::pin(async move {
            rx.await.ok();
            Ok(Reply::new(Payload::raw("late")))
        });
        h.push(HandlerRun::new(1, waiting, None));
        h.push(HandlerRun::new(2, ready("now"), None));
        assert_eq!(h.len(), 2);
        let (id, answer) = poll_fn(|cx| h.poll_next(cx)).await.unwrap();
        assert_eq!((id, &answer.unwrap().payload.bytes[..]), (2, &b"now"[..]));
        // Nothing woken: pending, until the waiting run's waker fires.
        assert!(
            poll_fn(|cx| Poll::Ready(h.poll_next(cx)))
                .await
                .is_pending()
        );
        tx.send(()).unwrap();
        let (id, _) = poll_fn(|cx| h.poll_next(cx)).await.unwrap();
        assert_eq!(id, 1);
        assert!(poll_fn(|cx| Poll::Ready(h.poll_next(cx))).await.is_ready());
        // Both slots are free again: new runs take them, the slab does not grow.
        h.push(HandlerRun::new(3, ready("a"), None));
        h.push(HandlerRun::new(4, ready("b"), None));
        assert_eq!(h.slots.len(), 2);
    }

    #[tokio::test]
    async fn a_run_that_wakes_itself_does_not_hold_the_connection() {
        let mut h = InlineHandlers::default();
        // Yields forever: wakes itself and stays pending at every poll.
        let spinning: BoxFuture = Box::pin(std::future::poll_fn(|cx| {
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        h.push(HandlerRun::new(1, spinning, None));
        h.push(HandlerRun::new(2, ready("done"), None));
        let (id, _) = poll_fn(|cx| h.poll_next(cx)).await.unwrap();
        assert_eq!(id, 2);
        // The spinning run alone: the call returns (pending), the task woken to come back.
        let woken = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let waker = Waker::from(Arc::new(Flag(woken.clone())));
        assert!(h.poll_next(&mut Context::from_waker(&waker)).is_pending());
        assert!(woken.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_cancelled_run_is_dropped_and_its_late_wake_is_harmless() {
        let mut h = InlineHandlers::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let dropped = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Flag(dropped.clone());
        let waiting: BoxFuture = Box::pin(async move {
            let _flag = flag;
            rx.await.ok();
            Ok(Reply::new(Payload::raw("never")))
        });
        let slot = h.push(HandlerRun::new(1, waiting, None));
        assert!(
            poll_fn(|cx| Poll::Ready(h.poll_next(cx)))
                .await
                .is_pending()
        );
        h.cancel(slot);
        assert!(dropped.load(Ordering::SeqCst), "the run was dropped");
        assert_eq!(h.len(), 0);
        drop(tx);
        // The freed slot takes the next run.
        h.push(HandlerRun::new(2, ready("next"), None));
        let (id, _) = poll_fn(|cx| h.poll_next(cx)).await.unwrap();
        assert_eq!(id, 2);
        assert!(poll_fn(|cx| h.poll_next(cx)).await.is_none());
    }
}
