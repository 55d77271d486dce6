//! Import progress, reported the way CDI shows it in `DataVolume.status.progress` ("45.34%").
//!
//! One import can have two stages: the transfer (bytes read from the source, measured against
//! Content-Length or the blob size) and, for images that need random access (qcow2 from a stream,
//! vmdk, ...), the conversion of the spooled copy (guest bytes converted, against the virtual
//! size). With both stages the transfer is the first half of the percentage and the conversion
//! the second, so the number only goes up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A snapshot of an import's progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Bytes read from the source so far (compressed bytes when the source is compressed).
    pub transferred: u64,
    /// Source length when known (Content-Length, blob size, file size).
    pub transfer_total: Option<u64>,
    /// Guest bytes converted so far, when a conversion stage runs.
    pub converted: u64,
    /// Virtual size being converted, when a conversion stage runs.
    pub convert_total: Option<u64>,
    /// Overall completion in percent (0..=100), when it can be known.
    pub percent: Option<f64>,
    /// True once the volume has been handed over.
    pub done: bool,
}

impl Progress {
    /// CDI's progress string: `"45.34%"`, or `"N/A"` while unknown.
    pub fn percent_string(&self) -> String {
        match self.percent {
            Some(p) => format_percent(p),
            None => "N/A".to_string(),
        }
    }
}

/// Formats a percentage as CDI does (two decimals, then `%`).
pub fn format_percent(p: f64) -> String {
    format!("{:.2}%", p.clamp(0.0, 100.0))
}

type Callback = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Where progress goes: nowhere, a callback, or a `watch` channel. Cheap to clone.
#[derive(Clone, Default)]
pub struct ProgressSink {
    callback: Option<Callback>,
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressSink")
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

impl ProgressSink {
    /// Discards progress.
    pub fn none() -> Self {
        Self::default()
    }

    /// Calls `f` with each (throttled) update. `f` runs on the importing thread: keep it short.
    pub fn from_fn(f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        Self {
            callback: Some(Arc::new(f)),
        }
    }

    /// A sink feeding a `watch` channel (the receiver always holds the latest update).
    pub fn watch() -> (Self, watch::Receiver<Progress>) {
        let (tx, rx) = watch::channel(Progress::default());
        let sink = Self::from_fn(move |p| {
            // A dropped receiver only means nobody is looking any more.
            let _ = tx.send(p.clone());
        });
        (sink, rx)
    }

    /// Passes `p` on to this sink (for a sink that feeds another).
    pub fn send(&self, p: &Progress) {
        self.emit(p);
    }

    fn emit(&self, p: &Progress) {
        if let Some(cb) = &self.callback {
            cb(p);
        }
    }
}

/// Throttling: an update goes out when the percentage moved by this much...
const MIN_STEP_PERCENT: f64 = 1.0;
/// ...or this long after the previous one.
const MIN_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct State {
    cur: Progress,
    two_stages: bool,
    last_sent: Option<(Instant, f64)>,
    max_percent: f64,
}

/// Shared progress state of one import; updated from the importing thread.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    sink: ProgressSink,
    state: Arc<Mutex<State>>,
}

impl Tracker {
    pub(crate) fn new(sink: ProgressSink) -> Self {
        Self {
            sink,
            state: Arc::new(Mutex::new(State {
                cur: Progress::default(),
                two_stages: false,
                last_sent: None,
                max_percent: 0.0,
            })),
        }
    }

    fn with(&self, f: impl FnOnce(&mut State)) {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut st);
        recompute(&mut st);
        let now = Instant::now();
        let pct = st.cur.percent.unwrap_or(0.0);
        let send = match st.last_sent {
            None => true,
            Some((t, p)) => {
                st.cur.done || pct - p >= MIN_STEP_PERCENT || now.duration_since(t) >= MIN_INTERVAL
            }
        };
        if send {
            st.last_sent = Some((now, pct));
            let snapshot = st.cur.clone();
            drop(st);
            self.sink.emit(&snapshot);
        }
    }

    pub(crate) fn set_transfer_total(&self, total: Option<u64>) {
        self.with(|st| st.cur.transfer_total = total);
    }

    /// Declares that a conversion stage follows the transfer.
    pub(crate) fn set_two_stages(&self) {
        self.with(|st| st.two_stages = true);
    }

    pub(crate) fn add_transferred(&self, n: u64) {
        self.with(|st| st.cur.transferred += n);
    }

    pub(crate) fn set_convert_total(&self, total: u64) {
        self.with(|st| st.cur.convert_total = Some(total));
    }

    pub(crate) fn set_converted(&self, done: u64) {
        self.with(|st| st.cur.converted = done);
    }

    pub(crate) fn finish(&self) {
        self.with(|st| {
            st.cur.done = true;
        });
    }

    pub(crate) fn snapshot(&self) -> Progress {
        match self.state.lock() {
            Ok(g) => g.cur.clone(),
            Err(p) => p.into_inner().cur.clone(),
        }
    }
}

fn frac(done: u64, total: Option<u64>) -> Option<f64> {
    match total {
        Some(0) => Some(1.0),
        Some(t) => Some((done as f64 / t as f64).min(1.0)),
        None => None,
    }
}

fn recompute(st: &mut State) {
    let c = &st.cur;
    let pct = if c.done {
        Some(100.0)
    } else if st.two_stages {
        let t = frac(c.transferred, c.transfer_total);
        let v = frac(c.converted, c.convert_total);
        match (t, v) {
            (Some(t), v) => Some(50.0 * t + 50.0 * v.unwrap_or(0.0)),
            (None, Some(v)) => Some(100.0 * v),
            (None, None) => None,
        }
    } else {
        frac(c.transferred, c.transfer_total)
            .or_else(|| frac(c.converted, c.convert_total))
            .map(|f| 100.0 * f)
    };
    // Never report 100% before the volume is handed over, and never go backwards.
    st.cur.percent = pct.map(|p| {
        let p = if st.cur.done { p } else { p.min(99.99) };
        let p = p.max(st.max_percent);
        st.max_percent = p;
        p
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_format() {
        assert_eq!(format_percent(45.3449), "45.34%");
        assert_eq!(format_percent(100.0), "100.00%");
        assert_eq!(Progress::default().percent_string(), "N/A");
    }

    #[test]
    fn monotonic_two_stages_and_final() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let t = Tracker::new(ProgressSink::from_fn(move |p| {
            s2.lock().unwrap().push(p.percent.unwrap_or(0.0))
        }));
        t.set_transfer_total(Some(1000));
        t.set_two_stages();
        for _ in 0..10 {
            t.add_transferred(100);
        }
        t.set_convert_total(4000);
        for i in 0..=40 {
            t.set_converted(i * 100);
        }
        t.finish();
        let seen = seen.lock().unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(*seen.last().unwrap(), 100.0);
        assert!(seen.len() < 60);
    }
}
