//! A unary handler's run: its future, bounded by the call's deadline, answering with
//! the call's id. A named `Unpin` future rather than an `async` block, so a connection
//! that polls its handlers itself keeps it in a slab slot without a box of its own (and
//! a spawned one is moved into its task as it is).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use polycall_core::{BoxFuture, Reply, Status};
use tokio::task::Unconstrained;
use tokio::time::Sleep;

/// Resolves to `(call id, the handler's answer)`, or `deadline_exceeded` once the
/// deadline passes first. `Unpin`: a connection keeps its inline runs in a slab.
pub(super) struct HandlerRun {
    call_id: u32,
    handler: BoxFuture,
    deadline: Option<Instant>,
    // Made at the first poll that does not finish (a handler that answers at once
    // needs none), so its timer is the one of the runtime that polls the run (a
    // spawned handler's, not the connection's); outside the task budget, so a handler
    // that spends the budget every poll is still stopped at its deadline.
    timer: Option<Pin<Box<Unconstrained<Sleep>>>>,
}

impl HandlerRun {
    /// Runs `handler` for call `call_id`, until `deadline` when there is one.
    pub(super) fn new(call_id: u32, handler: BoxFuture, deadline: Option<Instant>) -> Self {
        Self {
            call_id,
            handler,
            deadline,
            timer: None,
        }
    }
}

impl Future for HandlerRun {
    type Output = (u32, Result<Reply, Status>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // The handler first: an answer ready at the deadline still counts.
        if let Poll::Ready(result) = this.handler.as_mut().poll(cx) {
            return Poll::Ready((this.call_id, result));
        }
        if let Some(deadline) = this.deadline.take() {
            this.timer = Some(Box::pin(tokio::task::unconstrained(
                tokio::time::sleep_until(deadline.into()),
            )));
        }
        let expired = this
            .timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if expired {
            return Poll::Ready((
                this.call_id,
                Err(Status::deadline_exceeded(
                    "the handler did not finish before the call's deadline",
                )),
            ));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test(start_paused = true)]
    async fn answers_with_the_call_id_or_the_deadline() {
        let quick: BoxFuture =
            Box::pin(async { Ok(Reply::new(polycall_core::Payload::raw("ok"))) });
        let (id, answer) =
            HandlerRun::new(7, quick, Some(Instant::now() + Duration::from_secs(1))).await;
        assert_eq!(id, 7);
        assert_eq!(&answer.unwrap().payload.bytes[..], b"ok");

        let slow: BoxFuture = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Reply::new(polycall_core::Payload::raw("late")))
        });
        let (id, answer) =
            HandlerRun::new(8, slow, Some(Instant::now() + Duration::from_secs(1))).await;
        assert_eq!(id, 8);
        assert_eq!(
            answer.unwrap_err().code,
            polycall_core::Code::DeadlineExceeded
        );

        let no_deadline: BoxFuture = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Reply::new(polycall_core::Payload::raw("eventually")))
        });
        let (_, answer) = HandlerRun::new(9, no_deadline, None).await;
        assert_eq!(&answer.unwrap().payload.bytes[..], b"eventually");
    }

    #[test]
    fn its_timer_is_the_runtime_that_polls_it() {
        // Made inside one runtime (as a connection hands a handler to another runtime),
        // run on another that outlives it.
        let maker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let slow: BoxFuture = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Reply::new(polycall_core::Payload::raw("late")))
        });
        let run = {
            let _inside = maker.enter();
            HandlerRun::new(3, slow, Some(Instant::now() + Duration::from_millis(20)))
        };
        drop(maker);
        let runner = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (id, answer) = runner.block_on(runner.spawn(run)).unwrap();
        assert_eq!(id, 3);
        assert_eq!(
            answer.unwrap_err().code,
            polycall_core::Code::DeadlineExceeded
        );
    }

    #[tokio::test]
    async fn a_handler_that_spends_its_budget_every_poll_still_meets_its_deadline() {
        // Ready, yielding to the scheduler only through the task budget: it never ends.
        let busy: BoxFuture = Box::pin(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            loop {
                let _ = tx.send(());
                let _ = rx.recv().await;
            }
        });
        let run = HandlerRun::new(4, busy, Some(Instant::now() + Duration::from_millis(50)));
        let (_, answer) = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("stopped at its deadline");
        assert_eq!(
            answer.unwrap_err().code,
            polycall_core::Code::DeadlineExceeded
        );
    }
}
