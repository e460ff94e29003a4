//! The circuit breaker of one backend: when to stop sending it calls, and when to try again.
//!
//! A backend starts in service (closed). After [`BreakerSettings::threshold`] failed calls in a
//! row it is taken out (open) for a cooldown, after which its health endpoint is probed. A probe
//! that answers puts the backend on probation (half-open): it gets one call at a time, and the
//! first one that answers puts it fully back in service, while a failure takes it out again
//! with a doubled cooldown. A probe that fails doubles the cooldown too, up to a maximum.
//!
//! The breaker only keeps state; the scheduler probes, and passes the time in, which keeps this
//! module free of clocks and easy to test.

use std::time::{Duration, Instant};

/// When a backend is taken out of service and how long it stays out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failed calls in a row that take a backend out.
    pub threshold: u32,
    /// The first pause before a backend taken out is probed.
    pub cooldown: Duration,
    /// The longest pause between probes.
    pub cooldown_max: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            threshold: 3,
            cooldown: Duration::from_secs(2),
            cooldown_max: Duration::from_secs(30),
        }
    }
}

/// Where a backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// In service.
    Closed,
    /// Out of service; probed once the instant has passed.
    Open { until: Instant },
    /// Answered its health probe; one call at a time until a call answers.
    HalfOpen,
}

/// A change worth telling the outside world about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Taken out of service, with the reason.
    TakenOut(String),
    /// Its health endpoint answered: it gets a trial call.
    OnProbation,
    /// A call answered: fully back in service.
    Restored,
}

/// The breaker of one backend.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    consecutive_failures: u32,
    cooldown: Duration,
    down_since: Option<Instant>,
    last_error: String,
}

impl Breaker {
    /// A breaker for a backend in service.
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            state: State::Closed,
            consecutive_failures: 0,
            cooldown: Duration::ZERO,
            down_since: None,
            last_error: String::new(),
        }
    }

    /// Where the backend stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether calls may be sent to the backend at all.
    pub fn in_service(&self) -> bool {
        !matches!(self.state, State::Open { .. })
    }

    /// The most calls the breaker lets through at once, whatever the backend's own limit.
    pub fn allowance(&self, limit: usize) -> usize {
        match self.state {
            State::Closed => limit,
            State::HalfOpen => limit.min(1),
            State::Open { .. } => 0,
        }
    }

    /// What the last failure was.
    pub fn last_error(&self) -> &str {
        &self.last_error
    }

    /// How long the backend has been out of service (probation included), if it is.
    pub fn down_for(&self, now: Instant) -> Option<Duration> {
        self.down_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// Whether the backend is out and its cooldown has passed, so it should be probed.
    pub fn probe_due(&self, now: Instant) -> bool {
        matches!(self.state, State::Open { until } if until <= now)
    }

    /// A call answered.
    pub fn on_success(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        if self.state == State::Closed {
            return None;
        }
        self.state = State::Closed;
        self.cooldown = Duration::ZERO;
        self.down_since = None;
        Some(Transition::Restored)
    }

    /// A call failed in a way that speaks against the backend.
    pub fn on_failure(&mut self, error: &str, now: Instant) -> Option<Transition> {
        self.consecutive_failures += 1;
        self.last_error = error.to_string();
        let trip = match self.state {
            State::Closed => self.consecutive_failures >= self.settings.threshold,
            State::HalfOpen => true,
            State::Open { .. } => false,
        };
        if !trip {
            return None;
        }
        self.open(now);
        Some(Transition::TakenOut(format!(
            "{} failures in a row, last: {}",
            self.consecutive_failures, self.last_error
        )))
    }

    /// The health probe's result.
    pub fn on_probe(&mut self, result: Result<(), String>, now: Instant) -> Option<Transition> {
        if !matches!(self.state, State::Open { .. }) {
            return None;
        }
        match result {
            Ok(()) => {
                self.state = State::HalfOpen;
                Some(Transition::OnProbation)
            }
            Err(error) => {
                self.last_error = error;
                self.open(now);
                None
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.cooldown = if self.cooldown.is_zero() {
            self.settings.cooldown
        } else {
            (self.cooldown * 2).min(self.settings.cooldown_max)
        };
        self.state = State::Open {
            until: now + self.cooldown,
        };
        self.down_since.get_or_insert(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            threshold: 3,
            cooldown: Duration::from_secs(2),
            cooldown_max: Duration::from_secs(10),
        }
    }

    #[test]
    fn opens_after_the_threshold_of_failures_in_a_row() {
        let now = Instant::now();
        let mut b = Breaker::new(settings());
        assert_eq!(b.on_failure("refused", now), None);
        assert_eq!(b.on_failure("refused", now), None);
        assert!(b.in_service());
        let t = b.on_failure("refused", now);
        assert!(matches!(t, Some(Transition::TakenOut(ref r)) if r.contains("3 failures")));
        assert!(!b.in_service());
        assert_eq!(b.allowance(4), 0);
        assert_eq!(
            b.down_for(now + Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let now = Instant::now();
        let mut b = Breaker::new(settings());
        b.on_failure("x", now);
        b.on_failure("x", now);
        assert_eq!(b.on_success(), None);
        b.on_failure("x", now);
        b.on_failure("x", now);
        assert!(b.in_service());
    }

    #[test]
    fn probes_after_the_cooldown_then_takes_one_trial_call() {
        let now = Instant::now();
        let mut b = Breaker::new(settings());
        for _ in 0..3 {
            b.on_failure("x", now);
        }
        assert!(!b.probe_due(now + Duration::from_millis(1999)));
        assert!(b.probe_due(now + Duration::from_secs(2)));
        let later = now + Duration::from_secs(2);
        assert_eq!(b.on_probe(Ok(()), later), Some(Transition::OnProbation));
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.allowance(4), 1);
        assert_eq!(b.on_success(), Some(Transition::Restored));
        assert_eq!(b.allowance(4), 4);
        assert_eq!(b.down_for(later), None);
    }

    #[test]
    fn a_failed_probe_or_trial_doubles_the_cooldown_up_to_the_maximum() {
        let now = Instant::now();
        let mut b = Breaker::new(settings());
        for _ in 0..3 {
            b.on_failure("x", now);
        }
        b.on_probe(Err("503 loading".into()), now);
        assert_eq!(
            b.state(),
            State::Open {
                until: now + Duration::from_secs(4)
            }
        );
        assert_eq!(b.last_error(), "503 loading");
        b.on_probe(Ok(()), now);
        assert!(matches!(
            b.on_failure("500", now),
            Some(Transition::TakenOut(_))
        ));
        assert_eq!(
            b.state(),
            State::Open {
                until: now + Duration::from_secs(8)
            }
        );
        b.on_probe(Err("refused".into()), now);
        b.on_probe(Err("refused".into()), now);
        assert_eq!(
            b.state(),
            State::Open {
                until: now + Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn recovery_resets_the_cooldown() {
        let now = Instant::now();
        let mut b = Breaker::new(settings());
        for _ in 0..3 {
            b.on_failure("x", now);
        }
        b.on_probe(Err("x".into()), now);
        b.on_probe(Ok(()), now);
        b.on_success();
        for _ in 0..3 {
            b.on_failure("x", now);
        }
        assert_eq!(
            b.state(),
            State::Open {
                until: now + Duration::from_secs(2)
            }
        );
    }
}
