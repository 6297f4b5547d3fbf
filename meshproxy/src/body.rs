//! A response body that knows when it ends: [`Tracked`] wraps the body of an upstream response
//! to hold what the request occupies until its last byte (a connection slot, an active-request
//! count, the connection itself for its pool), to cut it at the route's deadline, and to run
//! one callback with how it ended. [`Downstream`] wraps a request body received from a
//! downstream so that its failure is remembered ([`BodyFault`]): an upstream send that fails
//! because of it is the downstream's fault, not the endpoint's.

use std::any::Any;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::http::{Body, BoxError};
use crate::reply::ProxyError;

/// Runs once when the body ends: `true` after its last frame, `false` when it failed, was cut
/// at the deadline or was dropped unfinished.
pub type OnEnd = Box<dyn FnOnce(bool) + Send + Sync>;

/// The route timeout expired while the response body was still streaming.
#[derive(Debug, thiserror::Error)]
#[error("route timeout: the response body of {service} did not finish in time")]
pub struct BodyTimeout {
    pub service: String,
}

/// A response body with a deadline, things to hold until it ends, and end callbacks.
pub struct Tracked {
    inner: Body,
    deadline: Option<(Pin<Box<Sleep>>, String)>,
    on_end: Vec<OnEnd>,
    held: Vec<Box<dyn Any + Send + Sync>>,
}

impl Tracked {
    pub fn new(inner: Body) -> Tracked {
        Tracked {
            inner,
            deadline: None,
            on_end: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Fails the body (the client sees a reset, not a short success) if it has not ended by
    /// `at`; `service` names the upstream in the error.
    pub fn deadline(mut self, at: Instant, service: &str) -> Tracked {
        self.deadline = Some((Box::pin(tokio::time::sleep_until(at)), service.to_string()));
        self
    }

    /// Runs `f` once when the body ends (see [`OnEnd`]).
    pub fn on_end(mut self, f: impl FnOnce(bool) + Send + Sync + 'static) -> Tracked {
        self.on_end.push(Box::new(f));
        self
    }

    /// Keeps `v` alive until the body ends.
    pub fn hold(mut self, v: impl Any + Send + Sync) -> Tracked {
        self.held.push(Box::new(v));
        self
    }

    pub fn boxed(self) -> Body {
        http_body_util::BodyExt::boxed(self)
    }

    fn finish(&mut self, complete: bool) {
        self.deadline = None;
        for f in self.on_end.drain(..) {
            f(complete);
        }
        self.held.clear();
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some((sleep, service)) = &mut this.deadline
            && sleep.as_mut().poll(cx).is_ready()
        {
            let service = std::mem::take(service);
            this.finish(false);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout { service }))));
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.finish(true),
            Some(Err(_)) => this.finish(false),
            Some(Ok(_)) if this.inner.is_end_stream() => this.finish(true),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.on_end.is_empty() {
            // hyper may never poll a body that is empty from the start.
            let complete = self.inner.is_end_stream();
            self.finish(complete);
        }
    }
}

/// Whether (and how) a [`Downstream`] body failed; shared with whoever sent it on. It also
/// counts the body's bytes for the request's telemetry record when the record asked for it
/// (a body of unannounced length: [`crate::telemetry::BodyBytes`]).
#[derive(Debug, Clone, Default)]
pub struct BodyFault {
    err: Arc<OnceLock<ProxyError>>,
    received: Option<crate::telemetry::BodyBytes>,
}

impl BodyFault {
    /// The fault of the body of the request with these extensions, counting its bytes where
    /// the telemetry record put a [`crate::telemetry::BodyBytes`] counter.
    pub fn for_request(ext: &http::Extensions) -> BodyFault {
        BodyFault {
            err: Arc::default(),
            received: ext.get::<crate::telemetry::BodyBytes>().cloned(),
        }
    }

    /// `n` more bytes of the body were received (read some other way than through
    /// [`Downstream`]).
    pub fn received(&self, n: usize) {
        if let Some(c) = &self.received {
            c.add(n);
        }
    }

    /// The error to answer when the body failed (`400 DPE` or `400 DC`).
    pub fn take(&self) -> Option<ProxyError> {
        self.err.get().cloned()
    }
}

/// A request body received from a downstream, recording its failure in a [`BodyFault`]
/// before passing the error on (the upstream send then fails, but not by the upstream).
pub struct Downstream {
    inner: hyper::body::Incoming,
    fault: BodyFault,
}

impl Downstream {
    /// `body` as one the proxy sends, recording its failure in `fault`.
    pub fn wrap(body: hyper::body::Incoming, fault: BodyFault) -> Body {
        http_body_util::BodyExt::boxed(Downstream { inner: body, fault })
    }
}

impl HttpBody for Downstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Err(e)) => {
                let err = ProxyError::downstream_body(&e);
                tracing::debug!(error = %err, "downstream request body failed");
                let _ = self.fault.err.set(err);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    self.fault.received(d.len());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
