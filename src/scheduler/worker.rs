//! The workers of each lane, and what happens to a call: sent, answered, retried or failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::task::JoinSet;

use super::lane::Lane;
use super::{Shared, Timing};
use crate::backend::{CallError, ChatRequest, Role};
use crate::diagnostics::{CallContext, call_record};
use crate::grading::{self, ReplyError, RoleFailure, RoleResult, prompt};
use crate::record::{FailedCall, RetryNote};
use crate::submission::Submission;

/// How often an idle worker looks again even without being woken.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How often breakers are checked for a due probe and roles for an outage.
const MONITOR_TICK: Duration = Duration::from_millis(50);

/// One role's call for one submission, waiting or in flight.
pub(super) struct Job {
    pub submission: Arc<Submission>,
    pub role: Role,
    pub request: ChatRequest,
    /// Requests already sent for this call.
    pub attempts: u32,
    /// Failed transport attempts so far, against the retry budget.
    pub transport_failures: u32,
    /// Corrective requests already made after invalid replies.
    pub corrections: u32,
    pub retries: Vec<RetryNote>,
    /// Since when the call has been waiting for a backend.
    pub waiting_since: Instant,
    /// The lane that failed this call last, with the end of its backoff. Any other lane of
    /// the role may take the call at once; this one only when no other is in service, and not
    /// before the backoff has passed.
    pub avoid: Option<(usize, Instant)>,
}

impl Job {
    pub fn new(submission: Arc<Submission>, role: Role, request: ChatRequest) -> Job {
        Job {
            submission,
            role,
            request,
            attempts: 0,
            transport_failures: 0,
            corrections: 0,
            retries: Vec::new(),
            waiting_since: Instant::now(),
            avoid: None,
        }
    }

    /// Whether `lane` may take this job now, given whether another lane of its role is in
    /// service; `Err` holds when it may, if it ever may without another failure elsewhere.
    fn ready_for(
        &self,
        lane: usize,
        others_in_service: bool,
        now: Instant,
    ) -> Result<(), Option<Instant>> {
        match self.avoid {
            Some((avoided, _)) if avoided == lane && others_in_service => Err(None),
            Some((avoided, until)) if avoided == lane && until > now => Err(Some(until)),
            _ => Ok(()),
        }
    }

    /// The role's failure, with the record of every request the call made.
    fn fail(self, server: &str, kind: &str, message: String) -> RoleResult {
        let failed_call = (self.attempts > 0).then(|| FailedCall {
            role: self.role,
            server: server.to_string(),
            attempts: self.attempts,
            retries: self.retries,
            last_error: RetryNote {
                server: server.to_string(),
                kind: kind.to_string(),
                message: message.clone(),
            },
        });
        RoleResult {
            role: self.role,
            call: None,
            failed_call,
            output: Err(RoleFailure {
                role: self.role,
                kind: kind.to_string(),
                message,
            }),
        }
    }
}

/// What an idle worker should do next.
enum Next {
    /// Send this job; the flag says more work was waiting for the lane.
    Run(Box<Job>, bool),
    Wait(Duration),
    Stop,
}

fn next_job(shared: &Shared, lane: &Lane, slot: usize) -> Next {
    if shared.cancel.is_cancelled() {
        return Next::Stop;
    }
    let now = Instant::now();
    let mut q = shared.lock_queues();
    if q.fed_all && q.pending.is_empty() {
        return Next::Stop;
    }
    if slot >= lane.allowance() {
        return Next::Wait(IDLE_POLL);
    }
    let others_in_service: Vec<bool> = lane
        .roles
        .iter()
        .map(|role| {
            shared.lanes.iter().any(|other| {
                other.index != lane.index && other.roles.contains(role) && other.allowance() > 0
            })
        })
        .collect();
    let mut soonest = IDLE_POLL;
    for (role, &others) in lane.roles.iter().zip(&others_in_service) {
        let Some(queue) = q.waiting.get_mut(role) else {
            continue;
        };
        let mut pick = None;
        for (i, job) in queue.iter().enumerate() {
            match job.ready_for(lane.index, others, now) {
                Ok(()) => {
                    pick = Some(i);
                    break;
                }
                Err(Some(until)) => soonest = soonest.min(until - now),
                Err(None) => {}
            }
        }
        if let Some(i) = pick {
            let job = queue.remove(i).expect("position is in range");
            let more = lane
                .roles
                .iter()
                .zip(&others_in_service)
                .any(|(r, &others)| {
                    q.waiting.get(r).is_some_and(|w| {
                        w.iter()
                            .any(|j| j.ready_for(lane.index, others, now).is_ok())
                    })
                });
            return Next::Run(Box::new(job), more);
        }
    }
    Next::Wait(soonest)
}

/// One worker of a lane: takes calls while its slot is within the lane's allowance.
pub(super) async fn worker(shared: Arc<Shared>, lane: Arc<Lane>, slot: usize) {
    loop {
        let wake = shared.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        match next_job(&shared, &lane, slot) {
            Next::Stop => return,
            Next::Wait(pause) => {
                tokio::select! {
                    _ = wake => {}
                    _ = tokio::time::sleep(pause) => {}
                    _ = shared.cancel.cancelled() => return,
                }
            }
            Next::Run(job, saturated) => {
                let submission = job.submission.clone();
                let done = tokio::select! {
                    done = attempt(&shared, &lane, *job, saturated) => done,
                    _ = shared.cancel.cancelled() => return,
                };
                if let Some(result) = done {
                    shared.complete(submission, result);
                }
            }
        }
    }
}

/// Sends one request of a job and decides what follows: the role's result, or (`None`) the job
/// back in its queue.
async fn attempt(
    shared: &Shared,
    lane: &Lane,
    mut job: Job,
    saturated: bool,
) -> Option<RoleResult> {
    let config = &shared.plan.config;
    let queue_wait = job.waiting_since.elapsed();
    job.attempts += 1;
    tracing::debug!(
        submission = %job.submission.id, role = %job.role, backend = %lane.name(),
        attempt = job.attempts, "sending call"
    );
    let ticket = lane.begin(saturated);
    let outcome = lane.client.chat(&job.request).await;
    let observer = shared.observer.as_ref();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            lane.failed(ticket, &error, observer);
            return failed_attempt(shared, lane, job, error);
        }
    };

    let prompt_chars = job.request.messages.iter().map(|m| m.content.len()).sum();
    let record = call_record(
        CallContext {
            role: job.role,
            backend: &lane.config,
            server_url: lane.client.base_url(),
            prompt_chars,
            queue_wait,
            attempts: job.attempts,
            retries: job.retries.clone(),
            threshold: config.thresholds.for_role(job.role),
        },
        &outcome,
    );
    if lane.answered(ticket, &record, observer) {
        shared.wake.notify_waiters();
    }
    observer.call_finished(&job.submission.id, &record);

    let max_tokens = job.request.max_tokens;
    let problem = match grading::interpret(job.role, shared.plan.rubric(), &outcome, max_tokens) {
        Ok(output) => {
            return Some(RoleResult {
                role: job.role,
                call: Some(record),
                failed_call: None,
                output: Ok(output),
            });
        }
        Err(problem) => problem,
    };
    if job.corrections > 0 {
        let message = format!(
            "{problem} (from {} after {} requests)",
            lane.name(),
            job.attempts
        );
        return Some(RoleResult {
            role: job.role,
            call: Some(record),
            failed_call: None,
            output: Err(RoleFailure {
                role: job.role,
                kind: problem.kind().to_string(),
                message,
            }),
        });
    }

    // One more request, with the reason: a cut-off answer gets a larger budget, anything else
    // is shown its reply and what was wrong with it.
    job.corrections += 1;
    job.retries.push(RetryNote {
        server: lane.name().to_string(),
        kind: problem.kind().to_string(),
        message: problem.to_string(),
    });
    observer.call_retried(
        &job.submission.id,
        job.role,
        lane.name(),
        &problem.to_string(),
    );
    job.request = match problem {
        ReplyError::Truncated { .. } => {
            let mut request = job.request;
            let worst = prompt::worst_case_reply_tokens(job.role, shared.plan.rubric());
            request.max_tokens = (request.max_tokens * 2).max(worst);
            request
        }
        _ => prompt::corrective(job.request, &outcome.content, &problem.to_string()),
    };
    shared.requeue(job, None);
    None
}

/// A request that got no answer: retried (on another backend of the role when there is one)
/// while the error allows and the budget lasts, else the call fails with this error.
fn failed_attempt(
    shared: &Shared,
    lane: &Lane,
    mut job: Job,
    error: CallError,
) -> Option<RoleResult> {
    job.transport_failures += 1;
    if !error.is_retryable() {
        return Some(job.fail(lane.name(), error.kind(), error.to_string()));
    }
    if job.transport_failures > shared.retries {
        let message = format!("{error} (after {} requests)", job.attempts);
        return Some(job.fail(lane.name(), error.kind(), message));
    }
    job.retries.push(RetryNote {
        server: lane.name().to_string(),
        kind: error.kind().to_string(),
        message: error.to_string(),
    });
    shared.observer.call_retried(
        &job.submission.id,
        job.role,
        lane.name(),
        &error.to_string(),
    );
    tracing::warn!(
        submission = %job.submission.id, role = %job.role, backend = %lane.name(), %error,
        "call failed; retrying"
    );
    let pause = backoff(&shared.timing, job.transport_failures);
    shared.requeue(job, Some((lane.index, Instant::now() + pause)));
    None
}

/// Exponential backoff with jitter: a random pause between half and all of
/// base × 2^(n−1), capped at the maximum.
pub(super) fn backoff(timing: &Timing, failures: u32) -> Duration {
    let doubling = 1u32 << failures.saturating_sub(1).min(16);
    let ceiling = timing
        .backoff_base
        .saturating_mul(doubling)
        .min(timing.backoff_max);
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// Probes backends whose cooldown has passed and fails the calls of roles left without any
/// backend for too long, until the scheduler's workers are done.
pub(super) async fn monitor(shared: Arc<Shared>) {
    let mut probes = JoinSet::new();
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(MONITOR_TICK) => {}
        }
        while probes.try_join_next().is_some() {}
        let now = Instant::now();
        for lane in &shared.lanes {
            let due = lane.breaker().probe_due(now);
            if due && !lane.probing.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let shared = shared.clone();
                let lane = lane.clone();
                probes.spawn(async move {
                    let result = crate::backend::probe_health(&lane.client).await;
                    if lane.probed(result, shared.observer.as_ref()) {
                        shared.wake.notify_waiters();
                    }
                    lane.probing
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                });
            }
        }
        fail_role_outages(&shared, now);
    }
}

/// Fails the waiting calls of a role whose every backend has been out of service too long.
fn fail_role_outages(shared: &Shared, now: Instant) {
    for role in Role::ALL {
        let mut last_error = String::new();
        let mut lanes = shared.lanes.iter().filter(|l| l.roles.contains(&role));
        let all_down_too_long = lanes.all(|lane| {
            let breaker = lane.breaker();
            last_error = breaker.last_error().to_string();
            !breaker.in_service()
                && breaker
                    .down_for(now)
                    .is_some_and(|down| down >= shared.timing.outage_limit)
        });
        if !all_down_too_long {
            continue;
        }
        let jobs: Vec<Job> = {
            let mut q = shared.lock_queues();
            q.waiting
                .get_mut(&role)
                .map(|w| w.drain(..).collect())
                .unwrap_or_default()
        };
        for job in jobs {
            let message = format!(
                "no backend for the {role} role answered for {} s; last error: {last_error}",
                shared.timing.outage_limit.as_secs()
            );
            let server = job
                .retries
                .last()
                .map(|note| note.server.clone())
                .unwrap_or_default();
            let submission = job.submission.clone();
            shared.complete(submission, job.fail(&server, "backend_down", message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let timing = Timing {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..Timing::default()
        };
        for _ in 0..50 {
            let first = backoff(&timing, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&timing, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let tenth = backoff(&timing, 10);
            assert!(tenth >= Duration::from_millis(250) && tenth <= Duration::from_millis(500));
        }
        let spread: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff(&timing, 2)).collect();
        assert!(spread.len() > 1, "no jitter: {spread:?}");
    }
}
