//! Retry delays after repeated failures, on one of two curves:
//!
//! - [`Curve::Quadratic`]: KubeVirt's VM crash-loop backoff (`calculateStartBackoffTime`,
//!   pkg/virt-controller/watch/vm/vm.go): `delay = base × n²`, plus up to half of it as
//!   jitter, capped at `max`. [`Backoff::kubevirt_crash_loop`] gives KubeVirt's numbers
//!   (`interval = max(max/30, 10 s)` = 10 s, `defaultMaxCrashLoopBackoffDelaySeconds` = 300 s).
//! - [`Curve::Exponential`]: `base × 2^(n-1)`, capped at `max`: the kubelet's crash-loop
//!   backoff, which CDI's importer pods restart with (10 s doubling up to 5 min).
//!
//! Tests shorten `base`/`max` and turn the jitter off to get exact delays.

use std::time::Duration;

/// How the delay grows with the number of consecutive failures `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// `base × n²`.
    Quadratic,
    /// `base × 2^(n-1)` (the exponent is capped at 16).
    Exponential,
}

/// A backoff: the delay before the next attempt after `n` consecutive failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub curve: Curve,
    /// The delay after the first failure (KubeVirt's crash loop and the kubelet: 10 s).
    pub base: Duration,
    /// The cap (KubeVirt's crash loop and the kubelet: 300 s).
    pub max: Duration,
    /// Add KubeVirt's jitter (`rand.Intn(delay/2 + 1)`) before capping; off makes delays
    /// exact for tests.
    pub jitter: bool,
}

impl Backoff {
    /// KubeVirt's VM crash-loop backoff: quadratic from 10 s, capped at 300 s, with jitter.
    pub fn kubevirt_crash_loop() -> Self {
        Backoff {
            curve: Curve::Quadratic,
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            jitter: true,
        }
    }

    /// `base × n²` capped at `max`, without jitter.
    pub fn quadratic(base: Duration, max: Duration) -> Self {
        Backoff {
            curve: Curve::Quadratic,
            base,
            max,
            jitter: false,
        }
    }

    /// `base × 2^(n-1)` capped at `max`, without jitter.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Backoff {
            curve: Curve::Exponential,
            base,
            max,
            jitter: false,
        }
    }

    /// The same backoff with the jitter turned on or off.
    pub fn with_jitter(self, jitter: bool) -> Self {
        Backoff { jitter, ..self }
    }

    /// The delay before the next attempt after `failures` consecutive failures (0 counts as
    /// 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let mut delay = match self.curve {
            Curve::Quadratic => {
                let n = u64::from(failures.max(1));
                self.base
                    .saturating_mul(u32::try_from(n * n).unwrap_or(u32::MAX))
            }
            Curve::Exponential => {
                let exp = failures.saturating_sub(1).min(16);
                self.base.saturating_mul(1u32 << exp)
            }
        };
        if self.jitter {
            let half_ms = u64::try_from(delay.as_millis() / 2).unwrap_or(u64::MAX);
            delay += Duration::from_millis(rand::random_range(0..=half_ms));
        }
        delay.min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_delays_follow_kubevirt() {
        let b = Backoff::kubevirt_crash_loop().with_jitter(false);
        let secs: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, vec![10, 40, 90, 160, 250, 300]);
        assert_eq!(b.delay(0), Duration::from_secs(10));
        let j = Backoff::kubevirt_crash_loop();
        for _ in 0..50 {
            let d = j.delay(2).as_secs_f64();
            assert!((40.0..=60.0).contains(&d), "{d}");
            assert!(j.delay(10).as_secs() == 300);
        }
    }

    #[test]
    fn quadratic_is_the_crash_loop_curve_without_jitter() {
        let b = Backoff::quadratic(Duration::from_secs(2), Duration::from_secs(12));
        assert!(!b.jitter);
        assert_eq!(b.delay(1), Duration::from_secs(2));
        assert_eq!(b.delay(2), Duration::from_secs(8));
        assert_eq!(b.delay(3), Duration::from_secs(12));
    }

    #[test]
    fn exponential_doubles_to_the_cap() {
        let b = Backoff::exponential(Duration::from_secs(10), Duration::from_secs(300));
        assert_eq!(b.delay(0), Duration::from_secs(10));
        assert_eq!(b.delay(1), Duration::from_secs(10));
        assert_eq!(b.delay(2), Duration::from_secs(20));
        assert_eq!(b.delay(4), Duration::from_secs(80));
        assert_eq!(b.delay(100), Duration::from_secs(300));
    }
}
