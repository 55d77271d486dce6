//! KubeVirt's work-queue metrics (`kubevirt_workqueue_*`, client-go's workqueue metrics
//! provider under KubeVirt's prefix) for the controllers, which run on kube-runtime's
//! `Controller` rather than on a client-go work queue.
//!
//! [`instrument`] wraps a controller's reconcile function: each call is one item taken from the
//! queue named after KubeVirt's (`virt-controller-vm`, ...). What kube-runtime does not expose
//! is not served: `kubevirt_workqueue_depth` and `kubevirt_workqueue_queue_duration_seconds`
//! (its scheduler holds the queue and deduplicates triggers before a reconcile starts), see
//! `docs/observability.md`.

use kube::runtime::controller::Action;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Instant;

/// One queue's counts.
#[derive(Debug)]
struct Queue {
    adds: u64,
    retries: u64,
    /// client-go's buckets: 10 ns to 10 s, ×10 each.
    work_duration: Histogram,
    /// Items being processed: id → start.
    in_flight: BTreeMap<u64, Instant>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            adds: 0,
            retries: 0,
            work_duration: Histogram::new(exponential_buckets(1e-8, 10.0, 10)),
            in_flight: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Queues {
    by_name: BTreeMap<&'static str, Queue>,
    next_id: u64,
}

/// Every queue of this process, encoded on scrape (a collector, so the help texts are
/// KubeVirt's exactly and the in-flight gauges are computed at the moment of the scrape).
#[derive(Debug)]
struct Workqueues;

static QUEUES: LazyLock<Mutex<Queues>> = LazyLock::new(|| {
    crate::metrics::register_collector(Box::new(Workqueues));
    Mutex::default()
});

fn queues() -> MutexGuard<'static, Queues> {
    // A panic while the lock was held leaves counts that are still counts.
    QUEUES.lock().unwrap_or_else(|p| p.into_inner())
}

fn labels(name: &'static str) -> [(&'static str, &'static str); 1] {
    [("name", name)]
}

impl Collector for Workqueues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        let q = queues();
        let mut m = encoder.encode_descriptor(
            "kubevirt_workqueue_adds",
            "Total number of adds handled by workqueue",
            None,
            MetricType::Counter,
        )?;
        for (name, queue) in &q.by_name {
            ConstCounter::new(queue.adds).encode(m.encode_family(&labels(name))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "kubevirt_workqueue_retries",
            "Total number of retries handled by workqueue",
            None,
            MetricType::Counter,
        )?;
        for (name, queue) in &q.by_name {
            ConstCounter::new(queue.retries).encode(m.encode_family(&labels(name))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "kubevirt_workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            None,
            MetricType::Histogram,
        )?;
        for (name, queue) in &q.by_name {
            queue
                .work_duration
                .encode(m.encode_family(&labels(name))?)?;
        }
        let ages = |queue: &Queue| {
            queue
                .in_flight
                .values()
                .map(|t| now.duration_since(*t).as_secs_f64())
                .fold((0.0, 0.0), |(s, m): (f64, f64), a| (s + a, m.max(a)))
        };
        let mut m = encoder.encode_descriptor(
            "kubevirt_workqueue_unfinished_work_seconds",
            "How many seconds of work have been in progress without being observed by work_duration. Large values indicate stuck threads. The number of stuck threads can be deduced by observing the rate at which this value increases.",
            None,
            MetricType::Gauge,
        )?;
        for (name, queue) in &q.by_name {
            ConstGauge::new(ages(queue).0).encode(m.encode_family(&labels(name))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "kubevirt_workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            None,
            MetricType::Gauge,
        )?;
        for (name, queue) in &q.by_name {
            ConstGauge::new(ages(queue).1).encode(m.encode_family(&labels(name))?)?;
        }
        Ok(())
    }
}

/// Registers the families (so `/metrics` lists them before the first reconcile).
pub fn register_families() {
    drop(queues());
}

/// One item being processed; recorded as done (its duration observed) when dropped, so a
/// reconcile that panics or is cancelled is not left in flight forever.
struct Item {
    name: &'static str,
    id: u64,
    start: Instant,
}

impl Item {
    fn start(name: &'static str) -> Item {
        let mut q = queues();
        let id = q.next_id;
        q.next_id += 1;
        let start = Instant::now();
        let queue = q.by_name.entry(name).or_default();
        queue.adds += 1;
        queue.in_flight.insert(id, start);
        Item { name, id, start }
    }

    fn failed(&self) {
        queues().by_name.entry(self.name).or_default().retries += 1;
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        let mut q = queues();
        let queue = q.by_name.entry(self.name).or_default();
        queue
            .work_duration
            .observe(self.start.elapsed().as_secs_f64());
        queue.in_flight.remove(&self.id);
    }
}

/// `reconcile`, counted as work of the queue `name`: each call adds an item, its duration
/// is observed, and an error (which the controller's error policy requeues) is a retry.
pub fn instrument<K, C, E, Fut>(
    name: &'static str,
    reconcile: impl Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + 'static,
) -> impl Fn(Arc<K>, Arc<C>) -> futures::future::BoxFuture<'static, Result<Action, E>>
where
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    K: 'static,
    C: 'static,
{
    move |obj, ctx| {
        let work = reconcile(obj, ctx);
        Box::pin(async move {
            let item = Item::start(name);
            let result = work.await;
            if result.is_err() {
                item.failed();
            }
            drop(item);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> String {
        crate::metrics::encode().expect("encode")
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .expect("a number")
    }

    /// Reconciles that succeed, fail and are still running show up as KubeVirt's workqueue
    /// series of their queue: adds, retries (the failures), the duration histogram's count,
    /// and the in-flight item's unfinished and longest-running seconds.
    #[tokio::test]
    async fn reconciles_are_counted_as_work_queue_items() {
        let ok = instrument("test-queue-a", |_: Arc<()>, _: Arc<()>| async {
            Ok::<_, ()>(Action::await_change())
        });
        let fail = instrument("test-queue-a", |_: Arc<()>, _: Arc<()>| async {
            Err::<Action, ()>(())
        });
        ok(Arc::new(()), Arc::new(())).await.expect("ok");
        ok(Arc::new(()), Arc::new(())).await.expect("ok");
        assert!(fail(Arc::new(()), Arc::new(())).await.is_err());
        let release = Arc::new(tokio::sync::Notify::new());
        let slow = {
            let release = release.clone();
            instrument("test-queue-b", move |_: Arc<()>, _: Arc<()>| {
                let release = release.clone();
                async move {
                    release.notified().await;
                    Ok::<_, ()>(Action::await_change())
                }
            })
        };
        let running = tokio::spawn(slow(Arc::new(()), Arc::new(())));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let text = scrape();
        assert_eq!(
            value(
                &text,
                r#"kubevirt_workqueue_adds_total{name="test-queue-a"}"#
            ),
            3.0
        );
        assert_eq!(
            value(
                &text,
                r#"kubevirt_workqueue_retries_total{name="test-queue-a"}"#
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"kubevirt_workqueue_work_duration_seconds_count{name="test-queue-a"}"#
            ),
            3.0
        );
        let unfinished = value(
            &text,
            r#"kubevirt_workqueue_unfinished_work_seconds{name="test-queue-b"}"#,
        );
        assert!(unfinished >= 0.05, "{unfinished}");
        assert!(
            value(
                &text,
                r#"kubevirt_workqueue_longest_running_processor_seconds{name="test-queue-b"}"#
            ) >= 0.05
        );
        release.notify_one();
        running.await.expect("join").expect("ok");
        let text = scrape();
        assert_eq!(
            value(
                &text,
                r#"kubevirt_workqueue_unfinished_work_seconds{name="test-queue-b"}"#
            ),
            0.0
        );
        assert_eq!(
            value(
                &text,
                r#"kubevirt_workqueue_work_duration_seconds_count{name="test-queue-b"}"#
            ),
            1.0
        );
    }
}
