//! A lane: one backend at run time, with its client, its concurrency limit and its health.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::Observer;
use super::breaker::{Breaker, BreakerSettings, Transition};
use super::limiter::{Limiter, Sample};
use crate::backend::{CallError, ChatClient, Role};
use crate::config::BackendConfig;
use crate::record::CallRecord;

/// How a lane's concurrency is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LaneLimit {
    /// Exactly this many calls at once.
    Fixed(usize),
    /// Adapted by a [`Limiter`] up to this ceiling.
    Auto(usize),
}

impl LaneLimit {
    fn ceiling(self) -> usize {
        match self {
            LaneLimit::Fixed(n) | LaneLimit::Auto(n) => n.max(1),
        }
    }
}

/// A backend at run time.
pub(super) struct Lane {
    /// The lane's position among the scheduler's lanes.
    pub index: usize,
    pub config: BackendConfig,
    /// The roles this lane takes calls for, its first role first.
    pub roles: Vec<Role>,
    pub client: ChatClient,
    /// Worker tasks; the one with index `i` takes calls only while `i` is below the allowance.
    pub workers: usize,
    limit: AtomicUsize,
    limiter: Option<Mutex<Limiter>>,
    breaker: Mutex<Breaker>,
    in_flight: AtomicUsize,
    /// A health probe is under way.
    pub probing: AtomicBool,
}

/// A call in flight on a lane; counted until dropped.
pub(super) struct Ticket<'a> {
    lane: &'a Lane,
    epoch: u64,
    saturated: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.lane.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Lane {
    pub fn new(
        index: usize,
        config: BackendConfig,
        roles: Vec<Role>,
        client: ChatClient,
        limit: LaneLimit,
        breaker: BreakerSettings,
    ) -> Lane {
        let (start, limiter) = match limit {
            LaneLimit::Fixed(n) => (n.max(1), None),
            LaneLimit::Auto(ceiling) => {
                let limiter = Limiter::new(ceiling);
                (limiter.limit(), Some(Mutex::new(limiter)))
            }
        };
        Lane {
            index,
            config,
            roles,
            client,
            workers: limit.ceiling(),
            limit: AtomicUsize::new(start),
            limiter,
            breaker: Mutex::new(Breaker::new(breaker)),
            in_flight: AtomicUsize::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// The lane's name: its backend's.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The concurrency limit in force, before the breaker's say.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    /// How many calls may be in flight now: the limit, one on probation, none when out.
    pub fn allowance(&self) -> usize {
        lock(&self.breaker).allowance(self.limit())
    }

    /// The breaker, for probing and outage checks.
    pub fn breaker(&self) -> MutexGuard<'_, Breaker> {
        lock(&self.breaker)
    }

    /// Counts a call in flight; `saturated` says the lane had more work waiting when it was
    /// taken, so its figures measure the limit.
    pub fn begin(&self, saturated: bool) -> Ticket<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let epoch = self.limiter.as_ref().map_or(0, |l| lock(l).epoch());
        Ticket {
            lane: self,
            epoch,
            saturated: saturated || now >= self.limit(),
        }
    }

    /// A call answered: the breaker resets, the limiter learns. Returns whether the allowance
    /// may have risen (so idle workers should look again).
    pub fn answered(&self, ticket: Ticket<'_>, call: &CallRecord, observer: &dyn Observer) -> bool {
        let transition = lock(&self.breaker).on_success();
        let restored = self.report(transition, observer);
        let sample = Sample {
            epoch: ticket.epoch,
            saturated: ticket.saturated,
            output_tokens: call.output_tokens,
            seconds: call.generation_time_seconds,
            decode_seconds_per_token: call
                .decode_tokens_per_second
                .filter(|r| *r > 0.0)
                .map(|r| 1.0 / r),
            prompt_tokens: call.prompt_tokens,
            time_to_first_token: call.time_to_first_token_seconds,
        };
        drop(ticket);
        let raised = match &self.limiter {
            Some(limiter) => {
                let limit = lock(limiter).on_sample(sample);
                self.set_limit(limit, observer)
            }
            None => false,
        };
        restored || raised
    }

    /// A call failed. Failures that speak against the backend count towards its breaker; a
    /// server that says it is busy has its adaptive limit cut.
    pub fn failed(&self, ticket: Ticket<'_>, error: &CallError, observer: &dyn Observer) {
        drop(ticket);
        // A prompt too long for the model says nothing about the server's health.
        if !matches!(error, CallError::ContextOverflow { .. }) {
            let transition = lock(&self.breaker).on_failure(&error.to_string(), Instant::now());
            self.report(transition, observer);
        }
        let busy = matches!(
            error,
            CallError::Http {
                status: 503 | 429,
                ..
            }
        );
        if busy && let Some(limiter) = &self.limiter {
            let limit = lock(limiter).on_overload();
            self.set_limit(limit, observer);
        }
    }

    /// The health probe's result.
    pub fn probed(&self, result: Result<(), CallError>, observer: &dyn Observer) -> bool {
        let result = result.map_err(|e| e.to_string());
        if let Err(error) = &result {
            tracing::debug!(backend = %self.name(), %error, "health probe failed");
        }
        let transition = lock(&self.breaker).on_probe(result, Instant::now());
        self.report(transition, observer)
    }

    fn set_limit(&self, limit: usize, observer: &dyn Observer) -> bool {
        let old = self.limit.swap(limit, Ordering::SeqCst);
        if old != limit {
            tracing::debug!(backend = %self.name(), from = old, to = limit, "concurrency limit");
            observer.limit_changed(self.name(), limit);
        }
        limit > old
    }

    /// Tells the observer about a breaker transition; true when the lane took calls again.
    fn report(&self, transition: Option<Transition>, observer: &dyn Observer) -> bool {
        match transition {
            None => false,
            Some(Transition::TakenOut(reason)) => {
                tracing::warn!(backend = %self.name(), %reason, "backend taken out of service");
                observer.backend_state(self.name(), false, &reason);
                false
            }
            Some(Transition::OnProbation) => {
                tracing::info!(backend = %self.name(), "health check answered; one trial call");
                observer.backend_state(
                    self.name(),
                    true,
                    "health check answered; one trial call at a time",
                );
                true
            }
            Some(Transition::Restored) => {
                tracing::info!(backend = %self.name(), "backend back in service");
                observer.backend_state(self.name(), true, "answered again");
                true
            }
        }
    }
}
