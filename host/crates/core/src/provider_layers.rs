//! What every cloud call needs whatever the cloud: a deadline, a back-off
//! while the cloud throttles, and a measurement. Each is a [`CloudProvider`]
//! wrapping another, so a provider implements only its cloud and these are
//! written once (the shape of Karpenter's `cloudprovider/metrics`).
//!
//! The controller puts every provider under [`Timed`] itself; the host adds
//! [`Measured`] (its sink is the Prometheus registry) and [`Retrying`] for
//! providers whose calls are one request each. AWS and GCE retry throttled
//! steps inside a call (one subnet or zone of a launch, not the whole
//! launch again) with the same [`ThrottleBackoff`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::provider::{CloudInstance, CloudProvider, LaunchRequest, ProviderError};

/// The three calls of [`CloudProvider`], as a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderCall {
    Launch,
    List,
    Terminate,
}

impl ProviderCall {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderCall::Launch => "launch",
            ProviderCall::List => "list",
            ProviderCall::Terminate => "terminate",
        }
    }
}

/// Each call under a deadline: listing under the observation timeout,
/// launching and terminating under the action timeout. A call past its
/// deadline is dropped and answers [`ProviderError::Timeout`] (a launch may
/// still have been carried out: the ledger keeps counting it).
pub struct Timed<P: ?Sized> {
    inner: Arc<P>,
    list: Duration,
    act: Duration,
}

impl<P: CloudProvider + ?Sized> Timed<P> {
    pub fn new(inner: Arc<P>, list: Duration, act: Duration) -> Self {
        Timed { inner, list, act }
    }

    async fn within<T>(
        deadline: Duration,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        tokio::time::timeout(deadline, call)
            .await
            .unwrap_or_else(|_| Err(ProviderError::Timeout(format!("no answer within {deadline:?}"))))
    }
}

#[async_trait]
impl<P: CloudProvider + ?Sized> CloudProvider for Timed<P> {
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        Self::within(self.act, self.inner.launch(request)).await
    }

    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        Self::within(self.list, self.inner.list(cluster)).await
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        Self::within(self.act, self.inner.terminate(instance_id)).await
    }
}

/// How a throttled call is tried again: after `first_wait`, doubling up to
/// `max_wait`, at most `retries` more times; then the throttling error is
/// the answer. Waits are on tokio's clock (virtual in tests).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleBackoff {
    pub retries: u32,
    pub first_wait: Duration,
    pub max_wait: Duration,
}

impl Default for ThrottleBackoff {
    fn default() -> Self {
        ThrottleBackoff { retries: 4, first_wait: Duration::from_millis(500), max_wait: Duration::from_secs(20) }
    }
}

impl ThrottleBackoff {
    /// Runs `call`, and again while `throttled` says its error is throttling.
    /// `what` names the call in the warning logged before each wait.
    pub async fn run<T, E, F, Fut>(&self, what: &str, throttled: impl Fn(&E) -> bool, mut call: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut wait = self.first_wait;
        let mut retries = 0;
        loop {
            match call().await {
                Err(e) if throttled(&e) && retries < self.retries => {
                    retries += 1;
                    tracing::warn!(call = what, retry = retries, ?wait, "the cloud throttled the call; backing off");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(self.max_wait);
                }
                other => return other,
            }
        }
    }
}

fn throttled(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Throttled(_))
}

/// Every call tried again while the cloud throttles it, per
/// [`ThrottleBackoff`]. Safe for launches: the retry carries the same
/// idempotency key.
pub struct Retrying<P: ?Sized> {
    inner: Arc<P>,
    backoff: ThrottleBackoff,
}

impl<P: CloudProvider + ?Sized> Retrying<P> {
    pub fn new(inner: Arc<P>, backoff: ThrottleBackoff) -> Self {
        Retrying { inner, backoff }
    }
}

#[async_trait]
impl<P: CloudProvider + ?Sized> CloudProvider for Retrying<P> {
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        self.backoff.run("launch", throttled, || self.inner.launch(request)).await
    }

    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        self.backoff.run("list", throttled, || self.inner.list(cluster)).await
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        self.backoff.run("terminate", throttled, || self.inner.terminate(instance_id)).await
    }
}

/// Where [`Measured`] reports each call: how long it took and, if it
/// failed, how. The host's implementation is its Prometheus registry.
pub trait ProviderCallSink: Send + Sync {
    fn record(&self, provider: &str, call: ProviderCall, took: Duration, error: Option<&ProviderError>);
}

/// Each call's duration and outcome reported to a [`ProviderCallSink`],
/// under the provider's configured name.
pub struct Measured<P: ?Sized> {
    name: String,
    inner: Arc<P>,
    sink: Arc<dyn ProviderCallSink>,
}

impl<P: CloudProvider + ?Sized> Measured<P> {
    pub fn new(name: impl Into<String>, inner: Arc<P>, sink: Arc<dyn ProviderCallSink>) -> Self {
        Measured { name: name.into(), inner, sink }
    }

    async fn measure<T>(
        &self,
        call: ProviderCall,
        run: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let started = Instant::now();
        let answer = run.await;
        self.sink.record(&self.name, call, started.elapsed(), answer.as_ref().err());
        answer
    }
}

#[async_trait]
impl<P: CloudProvider + ?Sized> CloudProvider for Measured<P> {
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        self.measure(ProviderCall::Launch, self.inner.launch(request)).await
    }

    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        self.measure(ProviderCall::List, self.inner.list(cluster)).await
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        self.measure(ProviderCall::Terminate, self.inner.terminate(instance_id)).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::provider::CloudState;

    /// Answers each call with the next scripted answer after `delay`.
    struct Scripted {
        delay: Duration,
        answers: Mutex<VecDeque<Result<(), ProviderError>>>,
        calls: Mutex<u32>,
    }

    impl Scripted {
        fn new(delay: Duration, answers: Vec<Result<(), ProviderError>>) -> Arc<Self> {
            Arc::new(Scripted { delay, answers: Mutex::new(answers.into()), calls: Mutex::new(0) })
        }

        async fn answer(&self) -> Result<(), ProviderError> {
            *self.calls.lock().unwrap() += 1;
            tokio::time::sleep(self.delay).await;
            self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }

        fn calls(&self) -> u32 {
            *self.calls.lock().unwrap()
        }
    }

    fn machine() -> CloudInstance {
        CloudInstance {
            id: "i-1".into(),
            resource: "a".into(),
            state: CloudState::Pending,
            launched_at: 0,
            launch_key: Some("k".into()),
            failure: None,
        }
    }

    #[async_trait]
    impl CloudProvider for Scripted {
        async fn launch(&self, _: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
            self.answer().await.map(|()| machine())
        }
        async fn list(&self, _: &str) -> Result<Vec<CloudInstance>, ProviderError> {
            self.answer().await.map(|()| vec![])
        }
        async fn terminate(&self, _: &str) -> Result<(), ProviderError> {
            self.answer().await
        }
    }

    fn request() -> LaunchRequest {
        LaunchRequest { cluster: "c".into(), resource: "a".into(), queues: vec![], idempotency_key: "k".into() }
    }

    fn throttle() -> Result<(), ProviderError> {
        Err(ProviderError::Throttled("slow down".into()))
    }

    /// Guard: a call past its deadline answers Timeout (not hang the tick),
    /// listing and acting each under their own deadline.
    #[tokio::test(start_paused = true)]
    async fn calls_past_their_deadline_answer_timeout() {
        let slow = Scripted::new(Duration::from_secs(60), vec![]);
        let timed = Timed::new(slow.clone(), Duration::from_secs(10), Duration::from_secs(300));
        let started = Instant::now();
        assert_eq!(timed.list("c").await, Err(ProviderError::Timeout("no answer within 10s".into())));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(timed.launch(&request()).await.map(|i| i.id), Ok("i-1".into()), "60 s is within 300 s");
    }

    /// Guard: throttling is waited out with a doubling back-off, on the same
    /// request, and only a bounded number of times.
    #[tokio::test(start_paused = true)]
    async fn throttled_calls_are_retried_with_a_growing_wait_then_given_up() {
        let cloud = Scripted::new(Duration::ZERO, vec![throttle(), throttle(), Ok(())]);
        let backoff =
            ThrottleBackoff { retries: 4, first_wait: Duration::from_secs(1), max_wait: Duration::from_secs(3) };
        let retrying = Retrying::new(cloud.clone(), backoff);
        let started = Instant::now();
        assert!(retrying.launch(&request()).await.is_ok());
        assert_eq!((cloud.calls(), started.elapsed()), (3, Duration::from_secs(1 + 2)));

        let always = Scripted::new(Duration::ZERO, vec![throttle(); 10]);
        let retrying = Retrying::new(always.clone(), backoff);
        let started = Instant::now();
        assert_eq!(retrying.terminate("i-1").await, throttle());
        assert_eq!((always.calls(), started.elapsed()), (5, Duration::from_secs(1 + 2 + 3 + 3)));

        // Anything but throttling is answered at once.
        let refused = Scripted::new(Duration::ZERO, vec![Err(ProviderError::Capacity("none".into()))]);
        assert!(Retrying::new(refused.clone(), backoff).list("c").await.is_err());
        assert_eq!(refused.calls(), 1);
    }

    type Call = (String, ProviderCall, Duration, Option<ProviderError>);

    #[derive(Default)]
    struct Recorded(Mutex<Vec<Call>>);

    impl ProviderCallSink for Recorded {
        fn record(&self, provider: &str, call: ProviderCall, took: Duration, error: Option<&ProviderError>) {
            self.0.lock().unwrap().push((provider.into(), call, took, error.cloned()));
        }
    }

    /// Guard: every call is reported with its provider, kind, duration and
    /// error, failures included.
    #[tokio::test(start_paused = true)]
    async fn every_call_is_measured_with_its_outcome() {
        let cloud = Scripted::new(Duration::from_millis(250), vec![Ok(()), throttle()]);
        let sink = Arc::new(Recorded::default());
        let measured = Measured::new("ec2", cloud, sink.clone());
        let _ = measured.launch(&request()).await;
        let _ = measured.terminate("i-1").await;
        let recorded = sink.0.lock().unwrap().clone();
        assert_eq!(
            recorded,
            [
                ("ec2".to_string(), ProviderCall::Launch, Duration::from_millis(250), None),
                ("ec2".to_string(), ProviderCall::Terminate, Duration::from_millis(250), Some(throttle().unwrap_err())),
            ]
        );
    }
}
