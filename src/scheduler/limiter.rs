//! Adaptive concurrency for backends configured with `max_concurrency = "auto"`.
//!
//! A [`Limiter`] decides how many calls one backend may have in flight, from the calls that
//! finish on it. It is a pure state machine: the same sequence of samples always yields the same
//! limits, which is what makes it testable without a server.
//!
//! The raw duration of a call says little, since it grows with the length of the reply, so the
//! limiter reads two length-normalised signals over a window of calls sent at one limit:
//!
//! - **output throughput**, by Little's law: with `L` calls kept in flight, the backend produces
//!   `L × Σ output tokens / Σ call seconds` tokens per second. Call seconds run from the request
//!   to the last token, so waiting in the server's own queue counts against the throughput.
//! - **per-token decode time**, the median of `1 / decode_tokens_per_second` over the window.
//!
//! It starts at one call, which gives the baseline, and doubles the limit after each window
//! while the throughput rises by at least [`MIN_GAIN`] and the per-token decode time stays
//! within [`LATENCY_TOLERANCE`] of the level it came from (slow start). The first step that does
//! not pay is undone, and the limit is held there; after a few windows it probes one call more,
//! and holds longer each time such a probe fails. A held level whose throughput falls or whose
//! per-token time rises beyond those bounds is lowered by one and measured afresh, and a server
//! that answers "busy" (HTTP 503 or 429) has its limit cut at once. The limit never leaves
//! `1..=ceiling`.
//!
//! The latency tolerance applies per step, not against the single-call baseline: a server that
//! batches sublinearly (aggregate rate k^0.7 with k calls decoding) slows each call by 23% per
//! doubling while its output still rises by 62%, and a batch is judged on its output.

/// Least rise in output throughput for a higher limit to be kept (5%).
pub const MIN_GAIN: f64 = 0.05;
/// Largest rise in per-token decode time a step up may cause, relative to the level it came
/// from (25%).
pub const LATENCY_TOLERANCE: f64 = 1.25;
/// Fall in output throughput, relative to the held level's reference, that lowers the limit.
pub const DEGRADATION: f64 = 0.15;
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Doubling after every window that pays.
    SlowStart,
    /// Measuring one call more than the reference.
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
}

/// The concurrency limit of one backend, adapted to how it answers.
#[derive(Debug, Clone)]
pub struct Limiter {
    ceiling: usize,
    limit: usize,
    epoch: u64,
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
        let usable = sample.epoch == self.epoch
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
                } else {
                    // Back to the level that paid; probe again later, and later still if this
                    // was already a one-call probe.
                    let hold = self.hold_windows;
                    if self.phase == Phase::Probe {
                        self.hold_windows = (self.hold_windows * 2).min(MAX_HOLD_WINDOWS);
                    }
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
            Phase::SlowStart => self.limit * 2,
            _ => self.limit + 1,
        };
        self.set_limit(next.min(self.ceiling));
    }

    fn set_limit(&mut self, limit: usize) {
        self.limit = limit.clamp(1, self.ceiling);
        self.epoch += 1;
        self.window = Window::default();
    }
}

/// Whether a higher level is worth its cost over the level it came from.
fn pays(from: &Level, to: &Level) -> bool {
    to.throughput >= from.throughput * (1.0 + MIN_GAIN)
        && to.seconds_per_token <= from.seconds_per_token * LATENCY_TOLERANCE
}

/// Whether a held level now does clearly worse than it did.
fn degraded(reference: &Level, now: &Level) -> bool {
    now.throughput < reference.throughput * (1.0 - DEGRADATION)
        || now.seconds_per_token > reference.seconds_per_token * LATENCY_TOLERANCE
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

    impl Server {
        /// The sample a call sent with `in_flight` calls kept in flight would give.
        fn sample(&self, in_flight: usize, epoch: u64) -> Sample {
            let decoding = in_flight.min(self.slots);
            let aggregate = self.rate * (self.curve)(decoding);
            let per_call = aggregate / decoding as f64;
            // Little's law: with `in_flight` calls always present, each lasts in_flight / X
            // seconds per token of the server's output.
            let seconds = TOKENS as f64 * in_flight as f64 / aggregate;
            Sample {
                epoch,
                saturated: true,
                output_tokens: TOKENS,
                seconds,
                decode_seconds_per_token: Some(1.0 / per_call),
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
        // Slow start reaches the knee within the first few windows: 1, 2, 4.
        assert_eq!(&limits[..3], &[2, 2, 4]);
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
    fn settles_within_one_call_of_a_knee_between_two_doublings() {
        // Throughput rises up to three calls and is flat beyond. Four calls still bring half as
        // much again as two, so slow start keeps 4; eight bring nothing more and are undone.
        // One call waiting in the server's queue costs latency, not output.
        let server = Server {
            slots: 3,
            rate: 500.0,
            curve: linear,
        };
        let mut limiter = Limiter::new(16);
        let limits = run(&mut limiter, &server, 600);
        let knee = settled(&limits, 300);
        assert!((3..=4).contains(&knee), "{limits:?}");
        assert!(limits[300..].iter().all(|&l| l <= 5), "{limits:?}");
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
        assert_eq!(limiter.on_sample(server.sample(1, 0)), 2);
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
