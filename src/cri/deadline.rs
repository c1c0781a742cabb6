//! The client's deadline (`grpc-timeout`) answered with DEADLINE_EXCEEDED.
//!
//! tonic's server enforces the header itself, but answers a call that
//! outlives it with CANCELLED (its `GrpcTimeout` turns `TimeoutExpired`
//! into `Status::cancelled`). The gRPC spec, grpc-go and so containerd and
//! CRI-O answer DEADLINE_EXCEEDED, and critest's "public image should
//! timeout if requested" expects that code (4) for a PullImage with a 1 ms
//! deadline.
//!
//! [`ClientDeadlineLayer`] sits inside tonic's timeout and races each call
//! against the same deadline, one timer tick early. It always answers
//! first: its timer is armed before tonic's (tonic calls the inner service,
//! which arms this one, before it makes its own timer) and is due a tick
//! sooner, and tonic polls the inner future before its timer, so once this
//! one has fired its answer is what goes out. The call's future is dropped, as tonic would
//! drop it; work a handler handed to a task of its own (a pull) goes on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

/// Adds [`ClientDeadline`] to every service of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientDeadlineLayer;

impl<S> Layer<S> for ClientDeadlineLayer {
    type Service = ClientDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientDeadline { inner }
    }
}

/// Answers DEADLINE_EXCEEDED once the client's `grpc-timeout` has passed.
#[derive(Debug, Clone)]
pub struct ClientDeadline<S> {
    inner: S,
}

/// tokio's timer resolution. Armed first, this layer's timer is due no
/// later than tonic's, but due in the same tick both can fire, and on a
/// busy multi-threaded runtime tonic's can be seen first (its CANCELLED
/// then goes out): one tick early, this one is always seen first. A call
/// that finishes in time still wins, as `timeout` polls the call before
/// its timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, RB> Service<http::Request<B>> for ClientDeadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: Default + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let Some(timeout) = timeout else {
            return Box::pin(self.inner.call(request));
        };
        let rpc = request.uri().path().to_owned();
        // The deadline is fixed here, in `call`, not at the first poll, one
        // timer tick early (see [`TIMER_TICK`]).
        let call =
            tokio::time::timeout(timeout.saturating_sub(TIMER_TICK), self.inner.call(request));
        Box::pin(async move {
            match call.await {
                Ok(answer) => answer,
                Err(_) => {
                    tracing::debug!(rpc = %rpc, timeout_us = timeout.as_micros() as u64, "the client's deadline passed");
                    Ok(Status::deadline_exceeded(format!(
                        "{rpc}: the client's deadline ({timeout:?}) passed before the call finished"
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`), as the gRPC over HTTP/2 protocol spec defines it.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("999m"), Some(Duration::from_millis(999)));
        assert_eq!(
            parse_grpc_timeout("993592u"),
            Some(Duration::from_micros(993592))
        );
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99999999))
        );
        for bad in ["", "S", "1", "123456789S", "1s", "-1S", "1.5S", "1 S", "١S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    /// A service whose calls never finish.
    #[derive(Clone)]
    struct Never;

    impl Service<http::Request<()>> for Never {
        type Response = http::Response<String>;
        type Error = Infallible;
        type Future = std::future::Pending<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    fn never() -> ClientDeadline<Never> {
        ClientDeadlineLayer.layer(Never)
    }

    fn request(timeout: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri("/runtime.v1.ImageService/PullImage");
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(()).unwrap()
    }

    #[tokio::test]
    async fn past_the_deadline_is_deadline_exceeded() {
        let answer = never().call(request(Some("20m"))).await.unwrap();
        let status = Status::from_header_map(answer.headers()).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("PullImage"), "{status:?}");
    }

    #[tokio::test]
    async fn without_a_deadline_the_call_runs_on() {
        let call = never().call(request(None));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), call)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_answer_in_time_goes_through() {
        let mut svc =
            ClientDeadlineLayer.layer(tower::service_fn(|_req: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new("done".to_string()))
            }));
        let answer = svc.call(request(Some("10S"))).await.unwrap();
        assert_eq!(answer.body(), "done");
    }
}
