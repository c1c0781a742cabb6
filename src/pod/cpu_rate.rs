//! `usage_nano_cores` of ContainerStats and PodSandboxStats, computed as
//! containerd does: the change of the cumulative cpu usage between two
//! successive stats calls, divided by the time between them. The previous
//! sample is cached per container or pod; the first call answers 0.

use std::collections::HashMap;
use std::sync::Mutex;

/// The last cpu sample of each container and pod.
#[derive(Debug, Default)]
pub struct CpuRates {
    last: Mutex<HashMap<String, Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ns: i64,
    usage_ns: u64,
}

impl CpuRates {
    /// Records the sample (`usage_ns` cumulative cpu nanoseconds at
    /// `at_ns`) of `key` and returns the nanocores since the previous one
    /// (0 for the first sample, and when the clock or the counter went
    /// backwards, e.g. a restarted container).
    pub fn nano_cores(&self, key: &str, at_ns: i64, usage_ns: u64) -> u64 {
        let now = Sample { at_ns, usage_ns };
        let mut last = self.last.lock().expect("cpu rates lock");
        let prev = last.get(key).copied();
        match prev {
            Some(p) if at_ns <= p.at_ns => {
                // Two calls in the same instant: keep the older sample.
                rate(p, now).unwrap_or(0)
            }
            Some(p) => {
                last.insert(key.to_owned(), now);
                rate(p, now).unwrap_or(0)
            }
            None => {
                last.insert(key.to_owned(), now);
                0
            }
        }
    }

    /// Forgets `key` (a removed container or pod).
    pub fn forget(&self, key: &str) {
        self.last.lock().expect("cpu rates lock").remove(key);
    }
}

fn rate(prev: Sample, now: Sample) -> Option<u64> {
    let dt = u128::try_from(now.at_ns.checked_sub(prev.at_ns)?).ok()?;
    if dt == 0 {
        return None;
    }
    let du = u128::from(now.usage_ns.checked_sub(prev.usage_ns)?);
    u64::try_from(du * 1_000_000_000 / dt).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_is_zero_then_rate() {
        let r = CpuRates::default();
        assert_eq!(r.nano_cores("c", 1_000_000_000, 5_000), 0);
        // Half a core over one second.
        assert_eq!(
            r.nano_cores("c", 2_000_000_000, 5_000 + 500_000_000),
            500_000_000
        );
        // Two full cores over half a second.
        assert_eq!(
            r.nano_cores("c", 2_500_000_000, 5_000 + 1_500_000_000),
            2_000_000_000
        );
    }

    #[test]
    fn keys_are_separate_and_forget_resets() {
        let r = CpuRates::default();
        assert_eq!(r.nano_cores("a", 10, 0), 0);
        assert_eq!(r.nano_cores("b", 10, 0), 0);
        assert_eq!(r.nano_cores("a", 20, 10), 1_000_000_000);
        r.forget("a");
        assert_eq!(r.nano_cores("a", 30, 10), 0);
    }

    #[test]
    fn counter_or_clock_going_back_gives_zero() {
        let r = CpuRates::default();
        r.nano_cores("c", 100, 1_000);
        assert_eq!(r.nano_cores("c", 200, 500), 0);
        // Same instant again: no division by zero, older sample kept.
        assert_eq!(r.nano_cores("c", 200, 600), 0);
        assert_eq!(r.nano_cores("c", 300, 600), 1_000_000_000);
    }
}
