//! The scheduler: keeps every backend busy with the calls of a whole batch.
//!
//! Each submission becomes one call per role. Calls wait in a queue per role; each backend runs
//! as many workers as its concurrency allows, and a free worker takes the oldest ready call of
//! the roles its backend serves, its first role first (so a backend that declares a second role
//! helps there only when its own work has run out). Submissions are admitted through a window,
//! so the number held in memory is bounded however many wait in the inbox, and a submission's
//! calls are joined into its result as soon as both have finished.
//!
//! A call that fails in a way worth retrying is put back with a backoff and jitter, preferably
//! for another backend of its role; a backend that keeps failing is taken out of service and
//! probed on its health endpoint until it answers. A reply that does not validate is asked for
//! once more with the reason. Everything sent is counted in the call's `attempts`.
//!
//! [`Policy::OneAtATime`] reproduces the original system for comparison: one submission at a
//! time, its two calls in parallel, each role on its first backend.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backend::{CallError, ChatClient, ChatRequest, Role};
use crate::config::{BackendConfig, Concurrency};
use crate::diagnostics::{CallContext, call_record};
use crate::grading::{self, GradingPlan, ReplyError, RoleFailure, RoleResult, prompt};
use crate::record::{CallRecord, RetryNote};
use crate::submission::Submission;

/// How calls are spread over backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Work-conserving across submissions, every backend at its concurrency, roles shared.
    Tandem,
    /// The original scheme: one submission at a time, each role on its first backend.
    OneAtATime,
}

/// Consecutive failures after which a backend is taken out of service.
const BREAKER_THRESHOLD: u32 = 3;
/// First pause before a backend taken out of service is probed again; doubles up to the max.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(2);
const BREAKER_COOLDOWN_MAX: Duration = Duration::from_secs(30);
/// How long a role may have no backend in service before its waiting calls fail.
const OUTAGE_LIMIT: Duration = Duration::from_secs(90);
/// Base of the exponential backoff between attempts of a call.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// How often an idle worker looks again even without being woken.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// What the scheduler tells the outside world while it works.
pub trait Observer: Send + Sync {
    /// A call finished and its figures are known (whether or not its reply validated).
    fn call_finished(&self, _submission: &str, _call: &CallRecord) {}
    /// A call failed and will be tried again.
    fn call_retried(&self, _submission: &str, _role: Role, _server: &str, _error: &str) {}
    /// A backend was taken out of service, or brought back.
    fn backend_state(&self, _server: &str, _in_service: bool, _reason: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Observer for Quiet {}

/// A submission whose calls have all ended, with what each role yielded.
#[derive(Debug)]
pub struct Finished {
    pub submission: Arc<Submission>,
    pub results: Vec<RoleResult>,
}

/// Knobs of a scheduler run.
#[derive(Debug, Clone)]
pub struct Options {
    pub policy: Policy,
    /// Most submissions admitted at once; `None` sizes it from the backends' concurrency.
    pub window: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: Policy::Tandem,
            window: None,
        }
    }
}

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("backend `{name}`: {source}")]
    Client {
        name: String,
        #[source]
        source: CallError,
    },
    #[error("no backend serves the `{0}` role")]
    NoBackend(Role),
}

/// A backend at run time: its client, concurrency and health.
struct Lane {
    index: usize,
    config: BackendConfig,
    /// The roles this lane takes calls for, its first role first.
    roles: Vec<Role>,
    client: ChatClient,
    /// Workers with an index below this may take calls.
    limit: AtomicUsize,
    workers: usize,
    breaker: Mutex<Breaker>,
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    /// Out of service until this instant, then probed.
    open_until: Option<Instant>,
    cooldown: Duration,
    down_since: Option<Instant>,
    last_error: String,
}

impl Lane {
    fn in_service(&self) -> bool {
        self.breaker.lock().unwrap().open_until.is_none()
    }

    fn record_success(&self, observer: &dyn Observer) {
        let mut b = self.breaker.lock().unwrap();
        b.consecutive_failures = 0;
        if b.open_until.take().is_some() || b.down_since.is_some() {
            b.down_since = None;
            b.cooldown = Duration::ZERO;
            drop(b);
            observer.backend_state(&self.config.name, true, "answered again");
        }
    }

    fn record_failure(&self, error: &CallError, observer: &dyn Observer) {
        let mut b = self.breaker.lock().unwrap();
        b.consecutive_failures += 1;
        b.last_error = error.to_string();
        if b.consecutive_failures >= BREAKER_THRESHOLD && b.open_until.is_none() {
            b.cooldown = if b.cooldown.is_zero() {
                BREAKER_COOLDOWN
            } else {
                (b.cooldown * 2).min(BREAKER_COOLDOWN_MAX)
            };
            b.open_until = Some(Instant::now() + b.cooldown);
            b.down_since.get_or_insert_with(Instant::now);
            let reason = format!(
                "{} failures in a row, last: {}",
                b.consecutive_failures, b.last_error
            );
            drop(b);
            tracing::warn!(backend = %self.config.name, %reason, "backend taken out of service");
            observer.backend_state(&self.config.name, false, &reason);
        }
    }
}

/// One role's call for one submission, waiting or in flight.
struct Job {
    submission: Arc<Submission>,
    role: Role,
    request: ChatRequest,
    /// Requests already sent for this call.
    attempts: u32,
    /// Failed transport attempts so far, against the retry budget.
    transport_failures: u32,
    /// Corrective requests already made after invalid replies.
    corrections: u32,
    retries: Vec<RetryNote>,
    ready_at: Instant,
    /// The lane that failed this call last, avoided while another can take it.
    avoid: Option<usize>,
}

struct Pending {
    results: Vec<RoleResult>,
    remaining: usize,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Queues {
    waiting: HashMap<Role, VecDeque<Job>>,
    pending: HashMap<String, Pending>,
    /// The feeder has admitted every submission it will.
    fed_all: bool,
}

struct Shared {
    plan: Arc<GradingPlan>,
    lanes: Vec<Arc<Lane>>,
    queues: Mutex<Queues>,
    wake: Notify,
    output: mpsc::UnboundedSender<Finished>,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    retries: u32,
}

/// The scheduler for one batch.
pub struct Scheduler {
    shared: Arc<Shared>,
    window: usize,
}

impl Scheduler {
    /// Prepares lanes for the configuration's backends under a policy.
    pub fn new(
        plan: Arc<GradingPlan>,
        options: &Options,
        observer: Arc<dyn Observer>,
        cancel: CancellationToken,
        output: mpsc::UnboundedSender<Finished>,
    ) -> Result<Scheduler, SchedulerError> {
        let config = &plan.config;
        let mut lanes: Vec<Arc<Lane>> = Vec::new();
        let make_lane = |index: usize, b: &BackendConfig, roles: Vec<Role>, workers: usize| {
            let client = ChatClient::new(
                b,
                config.grading.connect_timeout,
                config.grading.read_timeout,
            )
            .map_err(|source| SchedulerError::Client {
                name: b.name.clone(),
                source,
            })?;
            let start = match b.max_concurrency {
                Concurrency::Fixed(n) => n.min(workers),
                Concurrency::Auto { .. } => 1,
            };
            Ok::<_, SchedulerError>(Arc::new(Lane {
                index,
                config: b.clone(),
                roles,
                client,
                limit: AtomicUsize::new(start.max(1)),
                workers,
                breaker: Mutex::new(Breaker::default()),
            }))
        };
        match options.policy {
            Policy::Tandem => {
                for (i, b) in config.backends.iter().enumerate() {
                    lanes.push(make_lane(
                        i,
                        b,
                        b.roles.clone(),
                        b.max_concurrency.ceiling(),
                    )?);
                }
            }
            Policy::OneAtATime => {
                for role in Role::ALL {
                    let b = config
                        .backends_for(role)
                        .next()
                        .ok_or(SchedulerError::NoBackend(role))?;
                    if let Some(lane) = lanes.iter().find(|l| l.config.name == b.name) {
                        // The same server is first for both roles: it serves both, one at a time
                        // per role, as the original system would have.
                        let mut roles = lane.roles.clone();
                        roles.push(role);
                        let index = lane.index;
                        lanes.retain(|l| l.config.name != b.name);
                        lanes.push(make_lane(index, b, roles, 2)?);
                    } else {
                        lanes.push(make_lane(lanes.len(), b, vec![role], 1)?);
                    }
                }
            }
        }
        for role in Role::ALL {
            if !lanes.iter().any(|l| l.roles.contains(&role)) {
                return Err(SchedulerError::NoBackend(role));
            }
        }
        let window = match options.policy {
            Policy::OneAtATime => 1,
            Policy::Tandem => options
                .window
                .unwrap_or_else(|| 2 * lanes.iter().map(|l| l.workers).sum::<usize>() + 2)
                .max(1),
        };
        let retries = config.grading.retries;
        Ok(Scheduler {
            shared: Arc::new(Shared {
                plan,
                lanes,
                queues: Mutex::new(Queues::default()),
                wake: Notify::new(),
                output,
                observer,
                cancel,
                retries,
            }),
            window,
        })
    }

    /// The most submissions held at once.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Grades every submission that arrives on `input`, sending each finished one to the
    /// output channel, until `input` closes and all are done or the run is cancelled.
    pub async fn run(self, mut input: mpsc::Receiver<Arc<Submission>>) {
        let shared = self.shared;
        let mut workers = tokio::task::JoinSet::new();
        for lane in &shared.lanes {
            for slot in 0..lane.workers {
                workers.spawn(worker(shared.clone(), lane.clone(), slot));
            }
        }

        let window = Arc::new(Semaphore::new(self.window));
        loop {
            let permit = tokio::select! {
                _ = shared.cancel.cancelled() => break,
                permit = window.clone().acquire_owned() => permit.expect("window is never closed"),
            };
            let submission = tokio::select! {
                _ = shared.cancel.cancelled() => break,
                next = input.recv() => match next {
                    Some(s) => s,
                    None => break,
                },
            };
            admit(&shared, submission, permit);
        }
        shared.queues.lock().unwrap().fed_all = true;
        shared.wake.notify_waiters();
        while workers.join_next().await.is_some() {}
    }
}

fn admit(shared: &Shared, submission: Arc<Submission>, permit: OwnedSemaphorePermit) {
    // In chain mode only the code analysis starts now; `complete` queues the feedback call.
    let jobs: Vec<Job> = shared
        .plan
        .first_roles()
        .iter()
        .map(|&role| fresh_job(&submission, role, shared.plan.request(role, &submission)))
        .collect();
    let mut q = shared.queues.lock().unwrap();
    q.pending.insert(
        submission.id.clone(),
        Pending {
            results: Vec::new(),
            remaining: Role::ALL.len(),
            _permit: permit,
        },
    );
    for job in jobs {
        q.waiting.entry(job.role).or_default().push_back(job);
    }
    drop(q);
    shared.wake.notify_waiters();
}

/// A call not yet sent.
fn fresh_job(submission: &Arc<Submission>, role: Role, request: ChatRequest) -> Job {
    Job {
        submission: submission.clone(),
        role,
        request,
        attempts: 0,
        transport_failures: 0,
        corrections: 0,
        retries: Vec::new(),
        ready_at: Instant::now(),
        avoid: None,
    }
}

/// What an idle worker should do next.
enum Next {
    Run(Box<Job>),
    Wait(Duration),
    Stop,
}

fn next_job(shared: &Shared, lane: &Lane, slot: usize) -> Next {
    if shared.cancel.is_cancelled() {
        return Next::Stop;
    }
    let now = Instant::now();
    let mut q = shared.queues.lock().unwrap();
    if q.fed_all && q.pending.is_empty() {
        return Next::Stop;
    }
    if slot >= lane.limit.load(Ordering::Relaxed) || !lane.in_service() {
        return Next::Wait(IDLE_POLL);
    }
    let mut soonest = IDLE_POLL;
    for role in &lane.roles {
        let others_can_take = shared
            .lanes
            .iter()
            .any(|l| l.index != lane.index && l.roles.contains(role) && l.in_service());
        let Some(queue) = q.waiting.get_mut(role) else {
            continue;
        };
        let pick = queue.iter().position(|job| {
            job.ready_at <= now && !(others_can_take && job.avoid == Some(lane.index))
        });
        if let Some(i) = pick {
            let job = queue.remove(i).expect("position is in range");
            return Next::Run(Box::new(job));
        }
        if let Some(wait) = queue
            .iter()
            .map(|j| j.ready_at.saturating_duration_since(now))
            .min()
            && !wait.is_zero()
        {
            soonest = soonest.min(wait);
        }
    }
    Next::Wait(soonest)
}

async fn worker(shared: Arc<Shared>, lane: Arc<Lane>, slot: usize) {
    loop {
        let wake = shared.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        match next_job(&shared, &lane, slot) {
            Next::Stop => return,
            Next::Wait(pause) => {
                if slot == 0 && !lane.in_service() {
                    probe_if_due(&shared, &lane).await;
                    fail_role_outages(&shared);
                }
                tokio::select! {
                    _ = wake => {}
                    _ = tokio::time::sleep(pause) => {}
                    _ = shared.cancel.cancelled() => return,
                }
            }
            Next::Run(job) => {
                let finished = tokio::select! {
                    done = call(&shared, &lane, *job) => done,
                    _ = shared.cancel.cancelled() => return,
                };
                if let Some((submission, result)) = finished {
                    complete(&shared, submission, result);
                }
            }
        }
    }
}

/// Sends one attempt of a job and decides what follows: a result, or the job back in a queue.
async fn call(shared: &Shared, lane: &Lane, mut job: Job) -> Option<(Arc<Submission>, RoleResult)> {
    let config = &shared.plan.config;
    let queue_wait = job.ready_at.elapsed();
    job.attempts += 1;
    tracing::debug!(
        submission = %job.submission.id, role = %job.role, backend = %lane.config.name,
        attempt = job.attempts, "sending call"
    );
    let outcome = lane.client.chat(&job.request).await;
    let threshold = config.thresholds.for_role(job.role);
    match outcome {
        Ok(outcome) => {
            lane.record_success(shared.observer.as_ref());
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
                    threshold,
                },
                &outcome,
            );
            shared.observer.call_finished(&job.submission.id, &record);
            let max_tokens = job.request.max_tokens;
            match grading::interpret(job.role, shared.plan.rubric(), &outcome, max_tokens) {
                Ok(output) => Some((
                    job.submission,
                    RoleResult {
                        role: job.role,
                        call: Some(record),
                        output: Ok(output),
                    },
                )),
                Err(problem) if job.corrections == 0 => {
                    job.corrections += 1;
                    job.retries.push(RetryNote {
                        server: lane.config.name.clone(),
                        kind: problem.kind().to_string(),
                        message: problem.to_string(),
                    });
                    shared.observer.call_retried(
                        &job.submission.id,
                        job.role,
                        &lane.config.name,
                        &problem.to_string(),
                    );
                    job.request = match problem {
                        // A cut-off answer gets a larger budget rather than a lecture.
                        ReplyError::Truncated { .. } => {
                            let mut request = job.request;
                            let worst =
                                prompt::worst_case_reply_tokens(job.role, shared.plan.rubric());
                            request.max_tokens = (request.max_tokens * 2).max(worst);
                            request
                        }
                        _ => {
                            prompt::corrective(job.request, &outcome.content, &problem.to_string())
                        }
                    };
                    requeue(shared, job, None, Duration::ZERO);
                    None
                }
                Err(problem) => Some((
                    job.submission,
                    RoleResult {
                        role: job.role,
                        call: Some(record),
                        output: Err(RoleFailure {
                            role: job.role,
                            kind: problem.kind().to_string(),
                            message: format!(
                                "{problem} (from {} after {} requests)",
                                lane.config.name, job.attempts
                            ),
                        }),
                    },
                )),
            }
        }
        Err(error) => {
            lane.record_failure(&error, shared.observer.as_ref());
            job.transport_failures += 1;
            if error.is_retryable() && job.transport_failures <= shared.retries {
                job.retries.push(RetryNote {
                    server: lane.config.name.clone(),
                    kind: error.kind().to_string(),
                    message: error.to_string(),
                });
                shared.observer.call_retried(
                    &job.submission.id,
                    job.role,
                    &lane.config.name,
                    &error.to_string(),
                );
                tracing::warn!(
                    submission = %job.submission.id, role = %job.role,
                    backend = %lane.config.name, %error, "call failed; retrying"
                );
                let backoff = backoff(job.transport_failures);
                requeue(shared, job, Some(lane.index), backoff);
                None
            } else {
                let message = if error.is_retryable() {
                    format!("{error} (after {} requests)", job.attempts)
                } else {
                    error.to_string()
                };
                Some((
                    job.submission,
                    RoleResult {
                        role: job.role,
                        call: None,
                        output: Err(RoleFailure {
                            role: job.role,
                            kind: error.kind().to_string(),
                            message,
                        }),
                    },
                ))
            }
        }
    }
}

/// Exponential backoff with full jitter: a random pause up to base × 2^(n−1), capped at 8 s.
fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(4));
    let ceiling = ceiling.min(Duration::from_secs(8));
    let jitter = rand::rng().random_range(0.5..=1.0);
    ceiling.mul_f64(jitter)
}

fn requeue(shared: &Shared, mut job: Job, avoid: Option<usize>, after: Duration) {
    job.avoid = avoid;
    job.ready_at = Instant::now() + after;
    let mut q = shared.queues.lock().unwrap();
    // A retried call goes to the front: its submission has waited longest.
    q.waiting.entry(job.role).or_default().push_front(job);
    drop(q);
    shared.wake.notify_waiters();
}

fn complete(shared: &Shared, submission: Arc<Submission>, result: RoleResult) {
    // Chain mode: a code analysis is followed by its feedback call, which joins the back of the
    // feedback queue, so the feedback backends work on earlier submissions while the code
    // analysis of later ones runs.
    let follow_up = shared.plan.follow_up(&submission, &result);
    let mut q = shared.queues.lock().unwrap();
    let Some(pending) = q.pending.get_mut(&submission.id) else {
        return;
    };
    pending.results.push(result);
    pending.remaining -= 1;
    match follow_up {
        Some(grading::FollowUp::Skip(skipped)) => {
            pending.results.push(*skipped);
            pending.remaining -= 1;
        }
        Some(grading::FollowUp::Call { role, request }) => {
            let job = fresh_job(&submission, role, request);
            q.waiting.entry(role).or_default().push_back(job);
        }
        None => {}
    }
    let pending = q.pending.get_mut(&submission.id).expect("present above");
    if pending.remaining == 0 {
        let pending = q.pending.remove(&submission.id).expect("present above");
        drop(q);
        let mut results = pending.results;
        results.sort_by_key(|r| r.role);
        let _ = shared.output.send(Finished {
            submission,
            results,
        });
        // Dropping the pending entry frees its window permit for the next submission.
    } else {
        drop(q);
    }
    shared.wake.notify_waiters();
}

/// Probes a backend that is out of service once its cooldown has passed.
async fn probe_if_due(shared: &Shared, lane: &Lane) {
    let due = {
        let b = lane.breaker.lock().unwrap();
        matches!(b.open_until, Some(until) if until <= Instant::now())
    };
    if !due {
        return;
    }
    match crate::backend::probe_health(&lane.client).await {
        Ok(()) => lane.record_success(shared.observer.as_ref()),
        Err(error) => {
            let mut b = lane.breaker.lock().unwrap();
            b.cooldown = (b.cooldown * 2).clamp(BREAKER_COOLDOWN, BREAKER_COOLDOWN_MAX);
            b.open_until = Some(Instant::now() + b.cooldown);
            b.last_error = error.to_string();
            tracing::debug!(backend = %lane.config.name, %error, "health probe failed");
        }
    }
}

/// Fails the waiting calls of a role whose every backend has been out of service too long.
fn fail_role_outages(shared: &Shared) {
    for role in Role::ALL {
        let lanes: Vec<&Arc<Lane>> = shared
            .lanes
            .iter()
            .filter(|l| l.roles.contains(&role))
            .collect();
        let mut last_error = String::new();
        let all_down_too_long = lanes.iter().all(|l| {
            let b = l.breaker.lock().unwrap();
            last_error = b.last_error.clone();
            b.open_until.is_some()
                && b.down_since
                    .is_some_and(|since| since.elapsed() >= OUTAGE_LIMIT)
        });
        if !all_down_too_long {
            continue;
        }
        let jobs: Vec<Job> = {
            let mut q = shared.queues.lock().unwrap();
            q.waiting
                .get_mut(&role)
                .map(|w| w.drain(..).collect())
                .unwrap_or_default()
        };
        for job in jobs {
            let message = format!(
                "no backend for the {role} role answered for {} s; last error: {last_error}",
                OUTAGE_LIMIT.as_secs()
            );
            complete(
                shared,
                job.submission,
                RoleResult {
                    role,
                    call: None,
                    output: Err(RoleFailure {
                        role,
                        kind: "backend_down".into(),
                        message,
                    }),
                },
            );
        }
    }
}
