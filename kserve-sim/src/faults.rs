//! Fault injection: what a loaded or flaky API server does to its clients.
//!
//! [`Faults`] is plain configuration, settable at start ([`crate::SimConfig::faults`], CLI
//! flags) and at run time ([`crate::SimHandle::set_faults`]). It applies to requests for the
//! InferenceService resource paths only (discovery stays healthy, as it is served from a
//! different cache in a real cluster): added latency first, then either a 500 `InternalError`
//! or a 429 `TooManyRequests` with `Retry-After`, chosen at random by rate or deterministically
//! for the next N requests. Watches can be cut — the connection is closed mid-stream without
//! the terminating chunk — after N events or after a time, which clients see as an unexpected
//! EOF and must resume from their last resourceVersion.

use rand::Rng;
use std::sync::Mutex;
use std::time::Duration;

/// Fault injection settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// Share (0.0–1.0) of resource requests answered 500 `InternalError`.
    pub fail_rate: f64,
    /// Share (0.0–1.0) of resource requests answered 429 `TooManyRequests`.
    pub throttle_rate: f64,
    /// The next N resource requests are answered 500 (counts down; checked before the rates).
    pub fail_next: u32,
    /// The next N resource requests are answered 429 (counts down, after `fail_next`).
    pub throttle_next: u32,
    /// `Retry-After` seconds sent with 429.
    pub retry_after_seconds: u32,
    /// Latency added to every resource request before it is handled.
    pub latency: Duration,
    /// Cut every watch after this many events (ADDED/MODIFIED/DELETED) were sent.
    pub cut_watches_after_events: Option<u32>,
    /// Cut every watch after it has been open this long.
    pub cut_watches_after: Option<Duration>,
    /// RBAC as a misconfigured cluster has it: requests with these verbs (`get`, `list`,
    /// `watch`, `create`, `update`, `patch`, `delete`; server-side apply is a `patch`) are
    /// answered 403 `Forbidden`, worded like the real API server's.
    pub forbidden_verbs: Vec<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            throttle_rate: 0.0,
            fail_next: 0,
            throttle_next: 0,
            retry_after_seconds: 1,
            latency: Duration::ZERO,
            cut_watches_after_events: None,
            cut_watches_after: None,
            forbidden_verbs: Vec::new(),
        }
    }
}

/// The fault chosen for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Answer 500.
    InternalError,
    /// Answer 429 with this `Retry-After`.
    Throttled(u32),
}

/// Run-time fault state.
#[derive(Debug, Default)]
pub struct FaultState {
    faults: Mutex<Faults>,
}

impl FaultState {
    /// State starting with `faults`.
    pub fn new(faults: Faults) -> Self {
        Self {
            faults: Mutex::new(faults),
        }
    }

    /// Current settings.
    pub fn get(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the settings.
    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Whether RBAC forbids `verb` (an RBAC verb name).
    pub fn forbids(&self, verb: &str) -> bool {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forbidden_verbs
            .iter()
            .any(|v| v == verb)
    }

    /// Decides the fate of one resource request: latency to add and fault to inject.
    pub fn decide(&self) -> (Duration, Option<Injected>) {
        let mut f = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let injected = if f.fail_next > 0 {
            f.fail_next -= 1;
            Some(Injected::InternalError)
        } else if f.throttle_next > 0 {
            f.throttle_next -= 1;
            Some(Injected::Throttled(f.retry_after_seconds))
        } else {
            let roll: f64 = rand::rng().random();
            if roll < f.fail_rate {
                Some(Injected::InternalError)
            } else if roll < f.fail_rate + f.throttle_rate {
                Some(Injected::Throttled(f.retry_after_seconds))
            } else {
                None
            }
        };
        (f.latency, injected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_come_first_then_rates() {
        let s = FaultState::new(Faults {
            fail_next: 1,
            throttle_next: 1,
            retry_after_seconds: 3,
            ..Faults::default()
        });
        assert_eq!(s.decide().1, Some(Injected::InternalError));
        assert_eq!(s.decide().1, Some(Injected::Throttled(3)));
        assert_eq!(s.decide().1, None);
        s.set(Faults {
            fail_rate: 1.0,
            ..Faults::default()
        });
        assert!((0..20).all(|_| s.decide().1 == Some(Injected::InternalError)));
    }
}
