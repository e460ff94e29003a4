//! The scheduler: keeps every backend busy with the calls of a whole batch.
//!
//! Each submission becomes one call per role. Calls wait in a queue per role, in the order
//! their submissions were admitted (the batch admits larger submissions first, so the night
//! does not end with one long call running alone). Each backend is a lane with as many workers
//! as its concurrency allows; a free worker takes the oldest ready call of the roles its
//! backend serves, its first role first, so a backend that declares a second role helps there
//! as soon as its own work runs out. Submissions are admitted through a window, so the number
//! held in memory is bounded however many wait in the inbox, and a submission's calls are
//! joined into its result as soon as they have all ended.
//!
//! A backend's concurrency is fixed by its configuration or, with `max_concurrency = "auto"`,
//! adapted by a [`limiter::Limiter`] to what the server delivers. A request that fails in a way
//! worth retrying is put back with a backoff and jitter, free to go at once to another backend
//! of its role; a backend that keeps failing is taken out of service by its
//! [`breaker::Breaker`], probed on its health endpoint and brought back when it answers. A
//! reply that does not validate is asked for once more with the reason. Every request is
//! counted in its call's `attempts`, and a call that never answers leaves a
//! [`crate::record::FailedCall`] in the record.
//!
//! [`Policy::OneAtATime`] reproduces the original system for comparison: one submission at a
//! time, its calls in parallel, each role on its own backend.

pub mod breaker;
mod lane;
pub mod limiter;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backend::{CallError, ChatClient, Role};
use crate::config::{BackendConfig, Concurrency};
use crate::grading::{GradingPlan, RoleResult};
use crate::record::CallRecord;
use crate::submission::Submission;
pub use breaker::BreakerSettings;
use lane::{Lane, LaneLimit};
use worker::Job;

/// How calls are spread over backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Work-conserving across submissions, every backend at its concurrency, roles shared.
    Tandem,
    /// The original scheme: one submission at a time, its calls in parallel, each role on the
    /// first backend whose first role it is (else the first that serves it).
    OneAtATime,
}

/// What the scheduler tells the outside world while it works.
pub trait Observer: Send + Sync {
    /// A call finished and its figures are known (whether or not its reply validated).
    fn call_finished(&self, _submission: &str, _call: &CallRecord) {}
    /// A call failed and will be tried again.
    fn call_retried(&self, _submission: &str, _role: Role, _server: &str, _error: &str) {}
    /// A backend was taken out of service, or brought back.
    fn backend_state(&self, _server: &str, _in_service: bool, _reason: &str) {}
    /// An adaptive backend's concurrency limit changed.
    fn limit_changed(&self, _server: &str, _limit: usize) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Observer for Quiet {}

/// A submission whose calls have all ended, with what each role yielded.
#[derive(Debug)]
pub struct Finished {
    /// The submission, as admitted.
    pub submission: Arc<Submission>,
    /// One result per role, in [`Role::ALL`] order.
    pub results: Vec<RoleResult>,
}

/// Pauses and thresholds of retries, the circuit breaker and outages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// The first backoff before a failed request is sent again to the same backend; doubles
    /// with each failure of the call.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
    /// When a backend is taken out of service and probed.
    pub breaker: BreakerSettings,
    /// How long a role may have no backend in service before its waiting calls fail.
    pub outage_limit: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            breaker: BreakerSettings::default(),
            outage_limit: Duration::from_secs(90),
        }
    }
}

/// Knobs of a scheduler run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How calls are spread over backends.
    pub policy: Policy,
    /// Most submissions admitted at once; `None` sizes it from the backends' concurrency.
    pub window: Option<usize>,
    /// Retry, breaker and outage timing.
    pub timing: Timing,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: Policy::Tandem,
            window: None,
            timing: Timing::default(),
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

/// A submission admitted and not yet finished.
struct Pending {
    results: Vec<RoleResult>,
    remaining: usize,
    /// Frees a place in the window when the submission is done.
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Queues {
    waiting: HashMap<Role, VecDeque<Job>>,
    pending: HashMap<String, Pending>,
    /// The feeder has admitted every submission it will.
    fed_all: bool,
}

/// What the lanes, their workers and the feeder share.
struct Shared {
    plan: Arc<GradingPlan>,
    lanes: Vec<Arc<Lane>>,
    queues: Mutex<Queues>,
    wake: Notify,
    output: mpsc::UnboundedSender<Finished>,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    retries: u32,
    timing: Timing,
}

impl Shared {
    fn lock_queues(&self) -> MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a submission's calls, one per role.
    fn admit(&self, submission: Arc<Submission>, permit: OwnedSemaphorePermit) {
        // In chain mode only the code analysis starts now; `complete` queues the feedback call.
        let jobs: Vec<Job> = self
            .plan
            .first_roles()
            .iter()
            .map(|&role| {
                Job::new(
                    submission.clone(),
                    role,
                    self.plan.request(role, &submission),
                )
            })
            .collect();
        let mut q = self.lock_queues();
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
        self.wake.notify_waiters();
    }

    /// Puts a job back in its queue, ahead of the others (its submission has waited longest).
    fn requeue(&self, mut job: Job, avoid: Option<(usize, std::time::Instant)>) {
        job.avoid = avoid;
        job.waiting_since = std::time::Instant::now();
        let mut q = self.lock_queues();
        q.waiting.entry(job.role).or_default().push_front(job);
        drop(q);
        self.wake.notify_waiters();
    }

    /// Joins a role's result into its submission, and sends the submission on once all its
    /// roles have ended.
    fn complete(&self, submission: Arc<Submission>, result: RoleResult) {
        // Chain mode: a code analysis is followed by its feedback call, which joins the back of
        // the feedback queue, so the feedback backends work on earlier submissions while the
        // code analysis of later ones runs.
        let follow_up = self.plan.follow_up(&submission, &result);
        let mut q = self.lock_queues();
        let Some(pending) = q.pending.get_mut(&submission.id) else {
            return;
        };
        pending.results.push(result);
        pending.remaining -= 1;
        match follow_up {
            Some(crate::grading::FollowUp::Skip(skipped)) => {
                pending.results.push(*skipped);
                pending.remaining -= 1;
            }
            Some(crate::grading::FollowUp::Call { role, request }) => {
                let job = Job::new(submission.clone(), role, request);
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
            let _ = self.output.send(Finished {
                submission,
                results,
            });
            // Dropping the pending entry frees its window permit for the next submission.
        } else {
            drop(q);
        }
        self.wake.notify_waiters();
    }
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
        let config = plan.config.clone();
        let breaker = options.timing.breaker;
        let make_lane = |index: usize, b: &BackendConfig, roles: Vec<Role>, limit: LaneLimit| {
            let client = ChatClient::new(
                b,
                config.grading.connect_timeout,
                config.grading.read_timeout,
            )
            .map_err(|source| SchedulerError::Client {
                name: b.name.clone(),
                source,
            })?;
            Ok::<_, SchedulerError>(Arc::new(Lane::new(
                index,
                b.clone(),
                roles,
                client,
                limit,
                breaker,
            )))
        };

        let mut lanes: Vec<Arc<Lane>> = Vec::new();
        match options.policy {
            Policy::Tandem => {
                for (i, b) in config.backends.iter().enumerate() {
                    let limit = match b.max_concurrency {
                        Concurrency::Fixed(n) => LaneLimit::Fixed(n),
                        Concurrency::Auto { ceiling } => LaneLimit::Auto(ceiling),
                    };
                    lanes.push(make_lane(i, b, b.roles.clone(), limit)?);
                }
            }
            Policy::OneAtATime => {
                // Each role on its own server, one call at a time: the first backend whose first
                // role it is, else the first that serves it. A backend chosen for both roles gets
                // both calls of the submission at once, as the original system sent them.
                let mut firsts: Vec<(&BackendConfig, Vec<Role>)> = Vec::new();
                for role in Role::ALL {
                    let b = config
                        .backends_for(role)
                        .find(|b| b.roles.first() == Some(&role))
                        .or_else(|| config.backends_for(role).next())
                        .ok_or(SchedulerError::NoBackend(role))?;
                    match firsts.iter_mut().find(|(f, _)| f.name == b.name) {
                        Some((_, roles)) => roles.push(role),
                        None => firsts.push((b, vec![role])),
                    }
                }
                for (i, (b, roles)) in firsts.into_iter().enumerate() {
                    let calls = roles.len().min(b.max_concurrency.ceiling());
                    lanes.push(make_lane(i, b, roles, LaneLimit::Fixed(calls))?);
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
            // Twice what the backends can run at once, so that every lane finds work waiting
            // the moment it frees a slot.
            Policy::Tandem => options
                .window
                .unwrap_or_else(|| 2 * lanes.iter().map(|l| l.workers).sum::<usize>() + 2)
                .max(1),
        };
        Ok(Scheduler {
            shared: Arc::new(Shared {
                plan,
                lanes,
                queues: Mutex::new(Queues::default()),
                wake: Notify::new(),
                output,
                observer,
                cancel,
                retries: config.grading.retries,
                timing: options.timing.clone(),
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
    ///
    /// Submissions are admitted in the order they arrive, as places in the window free up.
    pub async fn run(self, mut input: mpsc::Receiver<Arc<Submission>>) {
        let shared = self.shared;
        let mut workers = tokio::task::JoinSet::new();
        for lane in &shared.lanes {
            for slot in 0..lane.workers {
                workers.spawn(worker::worker(shared.clone(), lane.clone(), slot));
            }
        }
        let monitor = tokio::spawn(worker::monitor(shared.clone()));

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
            shared.admit(submission, permit);
        }
        shared.lock_queues().fed_all = true;
        shared.wake.notify_waiters();
        while workers.join_next().await.is_some() {}
        monitor.abort();
        let _ = monitor.await;
    }
}
