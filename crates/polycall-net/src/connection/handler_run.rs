//! A unary handler's run: its future, bounded by the call's deadline, answering with
//! the call's id. A named future rather than an `async` block, so the connection keeps
//! it without a box of its own (the handler's future is boxed once, by the router).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use polycall_core::{BoxFuture, Reply, Status};
use tokio::time::Sleep;

pin_project_lite::pin_project! {
    /// Resolves to `(call id, the handler's answer)`, or `deadline_exceeded` once the
    /// deadline passes first.
    pub(super) struct HandlerRun {
        call_id: u32,
        handler: BoxFuture,
        #[pin]
        deadline: Option<Sleep>,
    }
}

impl HandlerRun {
    /// Runs `handler` for call `call_id`, until `deadline` when there is one.
    pub(super) fn new(
        call_id: u32,
        handler: BoxFuture,
        deadline: Option<std::time::Instant>,
    ) -> Self {
        Self {
            call_id,
            handler,
            deadline: deadline.map(|d| tokio::time::sleep_until(d.into())),
        }
    }
}

impl Future for HandlerRun {
    type Output = (u32, Result<Reply, Status>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The handler first: an answer ready at the deadline still counts.
        if let Poll::Ready(result) = this.handler.as_mut().poll(cx) {
            return Poll::Ready((*this.call_id, result));
        }
        let expired = this
            .deadline
            .as_pin_mut()
            .is_some_and(|deadline| deadline.poll(cx).is_ready());
        if expired {
            return Poll::Ready((
                *this.call_id,
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
}
