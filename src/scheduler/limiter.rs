//! Adaptive concurrency for backends configured with `max_concurrency = "auto"`.
//!
//! A [`Limiter`] decides how many calls one backend may have in flight, from the calls that
//! finish on it. It is a pure state machine: the same sequence of samples always yields the same
//! limits, which is what makes it testable without a server.
//!
//! The raw duration of a call says little, since it grows with the length of the reply, so the
//! limiter reads length-normalised signals over a window of calls sent at one limit:
//!
//! - **output throughput**, by Little's law: with `L` calls kept in flight, the backend produces
//!   `L × Σ output tokens / Σ call seconds` tokens per second. Call seconds run from the request
//!   to the last token, so waiting in the server's own queue counts against the throughput.
//! - **per-token decode time**, the median of `1 / decode_tokens_per_second` over the window.
//! - **time to first token per prompt token**, which jumps when calls wait for a free slot on
//!   the server: a limit above the server's own slots only queues calls there.
//!
//! It starts at one call, which gives the baseline, and multiplies the limit by
//! [`SLOW_START_FACTOR`] after each window while the step pays: output throughput rises by at
//! least [`MIN_GAIN`], the per-token decode time rises by at most [`LATENCY_TOLERANCE`] per
//! doubling of the limit, and calls do not start queueing on the server. A step that does not
//! pay is bisected back towards the level that did, and the limit is held at the best level
//! found; after a few windows it probes one call more, and holds longer each time such a probe
//! fails. A held level whose throughput falls, whose per-token time rises or whose calls start
//! queueing is lowered by one and measured afresh, and a server that answers "busy" (HTTP 503
//! or 429) has its limit cut at once. The limit never leaves `1..=ceiling`.
//!
//! The latency tolerance applies per step, not against the single-call baseline: a server that
//! batches sublinearly (aggregate rate k^0.7 with k calls decoding) slows each call by 23% per
//! doubling while its output still rises by 62% per doubling, and a batch is judged on its
//! output. Against the baseline alone, 25% would stop such a server at two calls, at 61% of the
//! output it gives at four.

/// Least rise in output throughput for a higher limit to be kept (5%).
pub const MIN_GAIN: f64 = 0.05;
/// Largest rise in per-token decode time a step up may cause per doubling of the limit (25%),
/// relative to the level it came from.
pub const LATENCY_TOLERANCE: f64 = 1.25;
/// How much more the time to first token (per prompt token) may rise than the per-token decode
/// time before calls are taken to be waiting in the server's queue.
pub const QUEUE_TOLERANCE: f64 = 1.5;
/// Fall in output throughput, relative to the held level's reference, that lowers the limit.
pub const DEGRADATION: f64 = 0.15;
/// The factor by which the limit grows after each window of slow start.
pub const SLOW_START_FACTOR: usize = 4;
/// Windows held after a step that did not pay, before probing one call more; doubled after each
/// failed probe, up to [`MAX_HOLD_WINDOWS`].
pub const HOLD_WINDOWS: u32 = 4;
/// Longest hold between probes.
pub const MAX_HOLD_WINDOWS: u32 = 32;
/// Weight of a new window in the held level's reference, so slow drift is followed.
const SMOOTHING: f64 = 0.25;

/// What one finished call tells the limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// [`Limiter::epoch`] when the call was sent.
    pub epoch: u64,
    /// Whether the backend had as much work as its limit allowed when the call was sent: calls
    /// sent while work ran short say nothing about what more concurrency would bring.
    pub saturated: bool,
    /// Output tokens of the call.
    pub output_tokens: u64,
    /// Seconds from sending the request to its last token.
    pub seconds: f64,
    /// Seconds per token while decoding, `1 / decode_tokens_per_second`, where known.
    pub decode_seconds_per_token: Option<f64>,
    /// Prompt tokens of the call.
    pub prompt_tokens: u64,
    /// Seconds from sending the request to its first token.
    pub time_to_first_token: f64,
}

/// The figures of one limit, measured over a window of calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// Calls in flight.
    pub limit: usize,
    /// Output tokens per second of the backend as a whole.
    pub throughput: f64,
    /// Median seconds per token while decoding.
    pub seconds_per_token: f64,
    /// Seconds to the first token per prompt token (at least one token per call), over the
    /// window: prefill, plus any wait for a slot on the server.
    pub first_token_per_prompt_token: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Growing by [`SLOW_START_FACTOR`] after every window that pays.
    SlowStart,
    /// Measuring a level above the reference: one call more, or half way to a level that did
    /// not pay.
    Probe,
    /// Staying at the reference's limit for this many more windows.
    Hold(u32),
}

#[derive(Debug, Default, Clone)]
struct Window {
    samples: usize,
    tokens: u64,
    seconds: f64,
    per_token: Vec<f64>,
    first_token: f64,
    prompt_tokens: u64,
}

/// The concurrency limit of one backend, adapted to how it answers.
#[derive(Debug, Clone)]
pub struct Limiter {
    ceiling: usize,
    limit: usize,
    epoch: u64,
    /// The last change raised the limit, so calls of the epoch before still in flight run at
    /// the new level.
    rose: bool,
    phase: Phase,
    /// The last level kept, which the next step is measured against.
    reference: Option<Level>,
    window: Window,
    hold_windows: u32,
}

impl Limiter {
    /// A limiter that starts at one call and never goes above `ceiling`.
    pub fn new(ceiling: usize) -> Self {
        Limiter {
            ceiling: ceiling.max(1),
            limit: 1,
            epoch: 0,
            rose: false,
            phase: Phase::SlowStart,
            reference: None,
            window: Window::default(),
            hold_windows: HOLD_WINDOWS,
        }
    }

    /// Calls that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Changes every time the limit does; a call carries the epoch it was sent in, so that
    /// calls sent under an older limit are not taken as measurements of the new one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The level the limiter currently trusts, if it has measured one.
    pub fn reference(&self) -> Option<Level> {
        self.reference
    }

    /// Takes a finished call and returns the limit that follows.
    pub fn on_sample(&mut self, sample: Sample) -> usize {
        // A call sent just before a rise finishes with the new level's calls around it, and
        // counts with them; one sent before a cut ran at the old, higher level.
        let current = sample.epoch == self.epoch || (self.rose && sample.epoch + 1 == self.epoch);
        let usable = current
            && sample.saturated
            && sample.output_tokens > 0
            && sample.seconds.is_finite()
            && sample.seconds > 0.0;
        if !usable {
            return self.limit;
        }
        let w = &mut self.window;
        w.samples += 1;
        w.tokens += sample.output_tokens;
        w.seconds += sample.seconds;
        if let Some(per_token) = sample
            .decode_seconds_per_token
            .filter(|s| s.is_finite() && *s > 0.0)
        {
            w.per_token.push(per_token);
        }
        if sample.time_to_first_token.is_finite() {
            w.first_token += sample.time_to_first_token.max(0.0);
        }
        w.prompt_tokens += sample.prompt_tokens.max(1);
        if w.samples >= self.limit {
            let level = self.measure();
            self.decide(level);
        }
        self.limit
    }

    /// The backend said it is overloaded (HTTP 503 or 429): cut the limit by a quarter (at
    /// least one call) and measure again from there.
    pub fn on_overload(&mut self) -> usize {
        let cut = (self.limit / 4).max(1);
        let lower = self.limit.saturating_sub(cut).max(1);
        self.reference = None;
        self.phase = Phase::Hold(self.hold_windows);
        self.set_limit(lower);
        self.limit
    }

    fn measure(&mut self) -> Level {
        let w = std::mem::take(&mut self.window);
        let throughput = self.limit as f64 * w.tokens as f64 / w.seconds;
        let mut per_token = w.per_token;
        per_token.sort_by(f64::total_cmp);
        // Without decode rates, time per token over whole calls stands in; it moves the same way.
        let seconds_per_token = if per_token.is_empty() {
            w.seconds / w.tokens as f64
        } else {
            per_token[(per_token.len() - 1) / 2]
        };
        Level {
            limit: self.limit,
            throughput,
            seconds_per_token,
            first_token_per_prompt_token: w.first_token / w.prompt_tokens as f64,
        }
    }

    fn decide(&mut self, level: Level) {
        match (self.phase, self.reference) {
            (Phase::SlowStart | Phase::Probe, None) => {
                self.reference = Some(level);
                self.step_up();
            }
            (Phase::SlowStart | Phase::Probe, Some(reference)) => {
                if pays(&reference, &level) {
                    self.reference = Some(level);
                    self.hold_windows = HOLD_WINDOWS;
                    self.step_up();
                } else if level.limit > reference.limit + 1 {
                    // Half way back: the best level may lie between the two.
                    self.phase = Phase::Probe;
                    let middle = reference.limit + (level.limit - reference.limit) / 2;
                    self.set_limit(middle);
                } else {
                    // Back to the level that paid; probe again later, and later still if this
                    // was already a probe from a hold.
                    let hold = self.hold_windows;
                    self.hold_windows = (self.hold_windows * 2).min(MAX_HOLD_WINDOWS);
                    self.phase = Phase::Hold(hold);
                    self.set_limit(reference.limit);
                }
            }
            (Phase::Hold(_), None) => {
                self.reference = Some(level);
            }
            (Phase::Hold(left), Some(reference)) => {
                if degraded(&reference, &level) && self.limit > 1 {
                    self.reference = None;
                    self.phase = Phase::Probe;
                    self.set_limit(self.limit - 1);
                    return;
                }
                self.reference = Some(Level {
                    limit: self.limit,
                    throughput: blend(reference.throughput, level.throughput),
                    seconds_per_token: blend(reference.seconds_per_token, level.seconds_per_token),
                    first_token_per_prompt_token: blend(
                        reference.first_token_per_prompt_token,
                        level.first_token_per_prompt_token,
                    ),
                });
                if left > 1 {
                    self.phase = Phase::Hold(left - 1);
                } else if self.limit < self.ceiling {
                    self.phase = Phase::Probe;
                    self.set_limit(self.limit + 1);
                } else {
                    self.phase = Phase::Hold(self.hold_windows);
                }
            }
        }
    }

    fn step_up(&mut self) {
        if self.limit >= self.ceiling {
            self.phase = Phase::Hold(self.hold_windows);
            return;
        }
        let next = match self.phase {
            Phase::SlowStart => self.limit * SLOW_START_FACTOR,
            _ => self.limit + 1,
        };
        self.set_limit(next.min(self.ceiling));
    }

    fn set_limit(&mut self, limit: usize) {
        let limit = limit.clamp(1, self.ceiling);
        self.rose = limit > self.limit;
        self.limit = limit;
        self.epoch += 1;
        self.window = Window::default();
    }
}

/// Whether a higher level is worth its cost over the level it came from.
fn pays(from: &Level, to: &Level) -> bool {
    let doublings = (to.limit as f64 / from.limit as f64).log2().max(1.0);
    let slower = to.seconds_per_token / from.seconds_per_token;
    to.throughput >= from.throughput * (1.0 + MIN_GAIN)
        && slower <= LATENCY_TOLERANCE.powf(doublings)
        && !queueing(from, to)
}

/// Whether calls at `now` wait for a slot on the server, which `before` did not: their first
/// token comes much later while their decoding is hardly slower.
fn queueing(before: &Level, now: &Level) -> bool {
    let slower = (now.seconds_per_token / before.seconds_per_token).max(1.0);
    now.first_token_per_prompt_token
        > before.first_token_per_prompt_token * QUEUE_TOLERANCE * slower
}

/// Whether a held level now does clearly worse than it did.
fn degraded(reference: &Level, now: &Level) -> bool {
    now.throughput < reference.throughput * (1.0 - DEGRADATION)
        || now.seconds_per_token > reference.seconds_per_token * LATENCY_TOLERANCE
        || queueing(reference, now)
}

fn blend(old: f64, new: f64) -> f64 {
    old * (1.0 - SMOOTHING) + new * SMOOTHING
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated server: `slots` calls decode at once with aggregate rate `rate × f(k)`;
    /// calls beyond the slots wait in its queue. Every call has the same length.
    struct Server {
        slots: usize,
        rate: f64,
        curve: fn(usize) -> f64,
    }

    const TOKENS: u64 = 500;
    const PROMPT_TOKENS: u64 = 800;
    const PREFILL_SECONDS: f64 = 0.1;

    impl Server {
        /// The sample a call sent with `in_flight` calls kept in flight would give.
        fn sample(&self, in_flight: usize, epoch: u64) -> Sample {
            let decoding = in_flight.min(self.slots);
            let aggregate = self.rate * (self.curve)(decoding);
            let per_call = aggregate / decoding as f64;
            // Little's law: with `in_flight` calls always present, each lasts in_flight / X
            // seconds per token of the server's output; what is beyond its own decoding is
            // spent waiting for a slot.
            let seconds = TOKENS as f64 * in_flight as f64 / aggregate;
            let waiting = seconds - TOKENS as f64 / per_call;
            Sample {
                epoch,
                saturated: true,
                output_tokens: TOKENS,
                seconds,
                decode_seconds_per_token: Some(1.0 / per_call),
                prompt_tokens: PROMPT_TOKENS,
                time_to_first_token: PREFILL_SECONDS + waiting.max(0.0),
            }
        }
    }

    /// Feeds `calls` samples, each sent at the limit in force when it was sent, in rounds of
    /// as many calls as the limit; returns the limit after every call.
    fn run(limiter: &mut Limiter, server: &Server, calls: usize) -> Vec<usize> {
        let mut limits = Vec::new();
        while limits.len() < calls {
            let limit = limiter.limit();
            let epoch = limiter.epoch();
            for _ in 0..limit {
                limits.push(limiter.on_sample(server.sample(limit, epoch)));
            }
        }
        limits
    }

    /// The limit most often in force over the last `n` calls.
    fn settled(limits: &[usize], n: usize) -> usize {
        let tail = &limits[limits.len().saturating_sub(n)..];
        let mut counts = std::collections::BTreeMap::new();
        for &l in tail {
            *counts.entry(l).or_insert(0) += 1;
        }
        counts.into_iter().max_by_key(|&(_, c)| c).unwrap().0
    }

    fn linear(k: usize) -> f64 {
        k as f64
    }

    fn power07(k: usize) -> f64 {
        (k as f64).powf(0.7)
    }

    fn shared(_: usize) -> f64 {
        1.0
    }

    #[test]
    fn starts_at_one_call() {
        let limiter = Limiter::new(8);
        assert_eq!(limiter.limit(), 1);
        assert!(limiter.reference().is_none());
    }

    #[test]
    fn settles_at_the_knee_of_linear_batching_with_four_slots() {
        let server = Server {
            slots: 4,
            rate: 700.0,
            curve: linear,
        };
        let mut limiter = Limiter::new(8);
        let limits = run(&mut limiter, &server, 400);
        assert_eq!(settled(&limits, 200), 4, "{limits:?}");
        assert!(limits.iter().all(|&l| (1..=8).contains(&l)));
    }

    #[test]
    fn settles_at_the_knee_of_sublinear_batching() {
        let server = Server {
            slots: 4,
            rate: 740.0,
            curve: power07,
        };
        let mut limiter = Limiter::new(8);
        let limits = run(&mut limiter, &server, 400);
        assert_eq!(settled(&limits, 200), 4, "{limits:?}");
        // Slow start reaches the knee after the first call.
        assert_eq!(limits[0], 4);
    }

    #[test]
    fn stays_at_one_call_when_more_bring_no_output() {
        let server = Server {
            slots: 4,
            rate: 600.0,
            curve: shared,
        };
        let mut limiter = Limiter::new(8);
        let limits = run(&mut limiter, &server, 200);
        assert_eq!(settled(&limits, 100), 1, "{limits:?}");
    }

    #[test]
    fn stays_at_one_call_on_a_server_with_one_slot() {
        let server = Server {
            slots: 1,
            rate: 600.0,
            curve: linear,
        };
        let mut limiter = Limiter::new(8);
        let limits = run(&mut limiter, &server, 200);
        assert_eq!(settled(&limits, 100), 1, "{limits:?}");
    }

    #[test]
    fn finds_a_knee_between_two_steps_of_slow_start() {
        // Three slots: at four calls one waits in the server's queue, so slow start's step from
        // one to four is undone, two is measured half way, and probing one call at a time
        // finds three.
        let server = Server {
            slots: 3,
            rate: 500.0,
            curve: linear,
        };
        let mut limiter = Limiter::new(16);
        let limits = run(&mut limiter, &server, 600);
        assert_eq!(settled(&limits, 300), 3, "{limits:?}");
        assert!(limits[300..].iter().all(|&l| l <= 4), "{limits:?}");
    }

    #[test]
    fn does_not_keep_calls_waiting_in_the_servers_queue() {
        // Four slots and a ceiling of eight: eight calls bring the same output as four, with
        // four of them waiting; the limit comes back to four.
        let server = Server {
            slots: 4,
            rate: 700.0,
            curve: linear,
        };
        let mut limiter = Limiter::new(8);
        let limits = run(&mut limiter, &server, 300);
        assert!(limits.contains(&8), "{limits:?}");
        assert_eq!(settled(&limits, 150), 4, "{limits:?}");
        let reference = limiter.reference().unwrap();
        assert_eq!(reference.limit, 4);
    }

    #[test]
    fn refuses_a_step_that_slows_each_token_too_much() {
        // Doubling from one call to two raises output by 41% but slows every token by 41%
        // (aggregate 2^0.5): past the tolerance.
        let server = Server {
            slots: 2,
            rate: 500.0,
            curve: |k| (k as f64).sqrt(),
        };
        let mut limiter = Limiter::new(2);
        let limits = run(&mut limiter, &server, 100);
        assert_eq!(settled(&limits, 50), 1, "{limits:?}");
    }

    #[test]
    fn never_exceeds_its_ceiling() {
        let server = Server {
            slots: 64,
            rate: 100.0,
            curve: linear,
        };
        let mut limiter = Limiter::new(6);
        let limits = run(&mut limiter, &server, 300);
        assert!(limits.iter().all(|&l| l <= 6), "{limits:?}");
        assert_eq!(settled(&limits, 100), 6);
    }

    #[test]
    fn lowers_the_limit_when_the_server_loses_capacity() {
        let mut limiter = Limiter::new(8);
        let before = Server {
            slots: 4,
            rate: 700.0,
            curve: linear,
        };
        run(&mut limiter, &before, 200);
        assert_eq!(limiter.limit(), 4);
        // Half its slots gone (another client, a smaller batch size): four calls now bring what
        // two did.
        let after = Server {
            slots: 2,
            rate: 700.0,
            curve: linear,
        };
        let limits = run(&mut limiter, &after, 400);
        assert!(limits.iter().any(|&l| l < 4), "{limits:?}");
        assert!(settled(&limits, 200) <= 3, "{limits:?}");
    }

    #[test]
    fn cuts_the_limit_when_the_server_is_busy() {
        let server = Server {
            slots: 8,
            rate: 700.0,
            curve: linear,
        };
        let mut limiter = Limiter::new(8);
        run(&mut limiter, &server, 100);
        assert_eq!(limiter.limit(), 8);
        assert_eq!(limiter.on_overload(), 6);
        assert_eq!(limiter.on_overload(), 5);
        let mut limiter = Limiter::new(8);
        assert_eq!(limiter.on_overload(), 1);
    }

    #[test]
    fn ignores_stale_and_unsaturated_samples() {
        let server = Server {
            slots: 4,
            rate: 700.0,
            curve: linear,
        };
        let mut limiter = Limiter::new(8);
        let mut stale = server.sample(1, 0);
        stale.epoch = 7;
        assert_eq!(limiter.on_sample(stale), 1);
        let mut idle = server.sample(1, 0);
        idle.saturated = false;
        assert_eq!(limiter.on_sample(idle), 1);
        assert!(limiter.reference().is_none());
        assert_eq!(limiter.on_sample(server.sample(1, 0)), 4);
    }

    #[test]
    fn same_samples_give_the_same_limits() {
        let server = Server {
            slots: 3,
            rate: 640.0,
            curve: power07,
        };
        let a = run(&mut Limiter::new(8), &server, 300);
        let b = run(&mut Limiter::new(8), &server, 300);
        assert_eq!(a, b);
    }
}
