//! Hand-written SVG charts for the batch page: a timeline of calls per server, stacked bars over
//! time, histograms and small bar charts.
//!
//! Every chart is a string of SVG with its own `viewBox`, sized by the page's CSS, using no
//! script, font file or external reference, so the page renders offline and identically
//! everywhere. The arithmetic behind the charts (axis ticks, time buckets, histogram bins, lane
//! rows) is in pure functions tested on their own; the drawing functions only place shapes.

use std::fmt::Write;

/// Colours for servers, in the order they are listed; repeated past the last.
pub const SERVER_COLOURS: [&str; 6] = [
    "#3366cc", "#e8833a", "#2a9d8f", "#b5479a", "#8c6d1f", "#5b6770",
];
/// Colours for the roles' calls on the timeline: code analysis, feedback.
pub const ROLE_COLOURS: [&str; 2] = ["#3366cc", "#e8833a"];

const TEXT: &str = "#333a44";
const MUTED: &str = "#6b7280";
const GRID: &str = "#e3e6ea";
const LANE: &str = "#f2f4f6";

/// The colour of the `i`-th server.
pub fn server_colour(i: usize) -> &'static str {
    SERVER_COLOURS[i % SERVER_COLOURS.len()]
}

/// Text made safe for SVG and HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than tab and newline are not allowed in XML.
            c if c.is_control() && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A step for about `count` ticks from 0 to `max`: 1, 2 or 5 times a power of ten.
pub fn nice_step(max: f64, count: usize) -> f64 {
    if !(max.is_finite() && max > 0.0) || count == 0 {
        return 1.0;
    }
    let raw = max / count as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// Ticks from 0 up to the first multiple of a nice step at or above `max`.
pub fn nice_ticks(max: f64, count: usize) -> Vec<f64> {
    let step = nice_step(max, count);
    let top = if max > 0.0 && max.is_finite() {
        (max / step).ceil().max(1.0)
    } else {
        1.0
    } as usize;
    (0..=top).map(|i| i as f64 * step).collect()
}

/// A bucket length in seconds that cuts `wall` seconds into at most about `count` buckets,
/// chosen among lengths that read well on a clock.
pub fn bucket_seconds(wall: f64, count: usize) -> f64 {
    const LENGTHS: [f64; 15] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        14400.0,
    ];
    let wanted = wall / count.max(1) as f64;
    LENGTHS
        .into_iter()
        .find(|l| *l >= wanted)
        .unwrap_or(LENGTHS[LENGTHS.len() - 1])
}

/// Spreads each span's tokens evenly over its [start, end] seconds and adds them up per bucket.
///
/// Returns one total per bucket of `bucket` seconds from 0 to `wall`. A span with no length puts
/// all its tokens in the bucket it falls in.
pub fn tokens_per_bucket(spans: &[(f64, f64, f64)], wall: f64, bucket: f64) -> Vec<f64> {
    let n = ((wall / bucket).ceil() as usize).max(1);
    let mut totals = vec![0.0; n];
    for &(start, end, tokens) in spans {
        if end <= start {
            let i = ((start / bucket) as usize).min(n - 1);
            totals[i] += tokens;
            continue;
        }
        let per_second = tokens / (end - start);
        let first = ((start / bucket).floor() as usize).min(n - 1);
        let last = ((end / bucket).ceil() as usize).clamp(first + 1, n);
        for (i, total) in totals.iter_mut().enumerate().take(last).skip(first) {
            let lo = start.max(i as f64 * bucket);
            let hi = end.min((i + 1) as f64 * bucket);
            if hi > lo {
                *total += per_second * (hi - lo);
            }
        }
    }
    totals
}

/// Bins of a histogram: `(step, counts)` with bin `i` holding values in [i·step, (i+1)·step),
/// over `series` groups of values; about `count` bins up to the largest value.
pub fn histogram(series: &[Vec<f64>], count: usize) -> (f64, Vec<Vec<usize>>) {
    let max = series
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let step = nice_step(max, count);
    let bins = ((max / step).floor() as usize + 1).max(1);
    let counts = series
        .iter()
        .map(|values| {
            let mut row = vec![0; bins];
            for v in values.iter().filter(|v| v.is_finite()) {
                let i = ((v.max(0.0) / step).floor() as usize).min(bins - 1);
                row[i] += 1;
            }
            row
        })
        .collect();
    (step, counts)
}

/// Rows within a lane so that no two overlapping spans share a row: each span (start, end), in
/// the given order, takes the lowest row free at its start. Returns each span's row.
pub fn lane_rows(spans: &[(f64, f64)]) -> Vec<usize> {
    let mut row_ends: Vec<f64> = Vec::new();
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by(|&a, &b| spans[a].0.total_cmp(&spans[b].0));
    let mut rows = vec![0; spans.len()];
    for i in order {
        let (start, end) = spans[i];
        let row = match row_ends.iter().position(|&e| e <= start) {
            Some(row) => row,
            None => {
                row_ends.push(f64::NEG_INFINITY);
                row_ends.len() - 1
            }
        };
        row_ends[row] = end.max(start);
        rows[i] = row;
    }
    rows
}

/// Seconds as a clock reading: `0:45`, `12:05`, `1:02:30`.
pub fn clock(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// A tick label: whole numbers without decimals, others with as few as the step needs.
pub fn tick_label(value: f64, step: f64) -> String {
    if step >= 1.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{value:.decimals$}")
    }
}

/// One call on the timeline, in seconds since the batch's first request.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineCall {
    /// When the request was sent.
    pub start: f64,
    /// When its first token came.
    pub first: f64,
    /// When its last token came.
    pub end: f64,
    /// Index into [`ROLE_COLOURS`].
    pub role: usize,
    /// The tooltip.
    pub label: String,
}

/// One server's lane on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineLane {
    /// The server's name.
    pub name: String,
    /// The second line under the name (its utilisation, say).
    pub note: String,
    pub calls: Vec<TimelineCall>,
}

const ROW: f64 = 16.0;
const ROW_GAP: f64 = 3.0;
const LANE_PAD: f64 = 8.0;

/// The timeline: a lane per server, a bar per call (its wait for the first token paler), stacked
/// in rows where calls overlap, over `wall` seconds.
pub fn timeline(lanes: &[TimelineLane], wall: f64, width: f64) -> String {
    let left = 170.0;
    let right = 20.0;
    let top = 10.0;
    let axis = 34.0;
    let plot = width - left - right;
    let wall = if wall > 0.0 { wall } else { 1.0 };
    let x = |t: f64| left + plot * (t / wall).clamp(0.0, 1.0);

    let rows: Vec<Vec<usize>> = lanes
        .iter()
        .map(|lane| {
            lane_rows(
                &lane
                    .calls
                    .iter()
                    .map(|c| (c.start, c.end))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let heights: Vec<f64> = rows
        .iter()
        .map(|r| {
            let n = r.iter().max().map_or(1, |m| m + 1) as f64;
            (n * (ROW + ROW_GAP) - ROW_GAP + 2.0 * LANE_PAD).max(40.0)
        })
        .collect();
    let height = top + heights.iter().map(|h| h + 6.0).sum::<f64>() + axis;

    let mut svg = open(width, height, "Timeline of calls per server");
    let ticks = time_ticks(wall);
    let bottom = height - axis;
    for &t in &ticks {
        let _ = write!(
            svg,
            r#"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{bottom:.1}" stroke="{GRID}"/>"#,
            x(t)
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{MUTED}">{}</text>"#,
            x(t),
            bottom + 15.0,
            clock(t)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{MUTED}">time since the first request (m:ss)</text>"#,
        left + plot / 2.0,
        bottom + 30.0
    );

    let mut y = top;
    for ((lane, rows), h) in lanes.iter().zip(&rows).zip(&heights) {
        let _ = write!(
            svg,
            r#"<rect x="{left}" y="{y:.1}" width="{plot:.1}" height="{h:.1}" fill="{LANE}" rx="3"/>"#
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="13" font-weight="600" fill="{TEXT}">{}</text>"#,
            left - 10.0,
            y + h / 2.0 - 2.0,
            escape(&lane.name)
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="{MUTED}">{}</text>"#,
            left - 10.0,
            y + h / 2.0 + 12.0,
            escape(&lane.note)
        );
        for (call, &row) in lane.calls.iter().zip(rows) {
            let colour = ROLE_COLOURS[call.role % ROLE_COLOURS.len()];
            let by = y + LANE_PAD + row as f64 * (ROW + ROW_GAP);
            let (x0, x1, x2) = (x(call.start), x(call.first), x(call.end));
            let _ = write!(svg, "<g><title>{}</title>", escape(&call.label));
            let _ = write!(
                svg,
                r#"<rect x="{x0:.2}" y="{by:.1}" width="{:.2}" height="{ROW}" fill="{colour}" fill-opacity="0.35"/>"#,
                (x1 - x0).max(0.0)
            );
            let _ = write!(
                svg,
                r#"<rect x="{x1:.2}" y="{by:.1}" width="{:.2}" height="{ROW}" fill="{colour}"/>"#,
                (x2 - x1).max(0.8)
            );
            svg.push_str("</g>");
        }
        y += h + 6.0;
    }
    svg.push_str("</svg>");
    svg
}

/// Stacked bars over time: `series[s][i]` is series `s`'s value in bucket `i` of `bucket`
/// seconds; `y_label` names the value.
pub fn stacked_time_bars(
    series: &[(String, Vec<f64>)],
    bucket: f64,
    y_label: &str,
    width: f64,
) -> String {
    let buckets = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let totals: Vec<f64> = (0..buckets)
        .map(|i| {
            series
                .iter()
                .map(|(_, v)| v.get(i).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let max = totals.iter().copied().fold(0.0, f64::max);
    let frame = Frame::new(width, 240.0);
    let ticks = nice_ticks(max, 5);
    let top_value = *ticks.last().unwrap_or(&1.0);
    let step = ticks.get(1).copied().unwrap_or(1.0);
    let mut svg = open(width, frame.height, y_label);
    frame.y_axis(&mut svg, &ticks, top_value, step, y_label);

    let slot = frame.plot_width() / buckets.max(1) as f64;
    let bar = (slot * 0.85).max(1.0);
    for i in 0..buckets {
        let mut base = 0.0;
        let x = frame.left + slot * i as f64 + (slot - bar) / 2.0;
        for (s, (name, values)) in series.iter().enumerate() {
            let v = values.get(i).copied().unwrap_or(0.0);
            if v <= 0.0 {
                continue;
            }
            let y0 = frame.y(base + v, top_value);
            let y1 = frame.y(base, top_value);
            let _ = write!(
                svg,
                r#"<rect x="{x:.2}" y="{y0:.2}" width="{bar:.2}" height="{:.2}" fill="{}"><title>{} · {}–{}: {:.0}</title></rect>"#,
                y1 - y0,
                server_colour(s),
                escape(name),
                clock(i as f64 * bucket),
                clock((i + 1) as f64 * bucket),
                v
            );
            base += v;
        }
    }
    let label_every = (buckets as f64 / 8.0).ceil().max(1.0) as usize;
    for i in (0..=buckets).step_by(label_every) {
        let x = frame.left + slot * i as f64;
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{MUTED}">{}</text>"#,
            frame.bottom() + 15.0,
            clock(i as f64 * bucket)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{MUTED}">time since the first request (m:ss), {} s per bar</text>"#,
        frame.left + frame.plot_width() / 2.0,
        frame.bottom() + 30.0,
        bucket
    );
    svg.push_str("</svg>");
    svg
}

/// A histogram stacked by series, with dashed markers (label, value) such as p50 and p95.
pub fn stacked_histogram(
    series: &[(String, Vec<f64>)],
    bins: usize,
    x_label: &str,
    markers: &[(&str, f64)],
    width: f64,
) -> String {
    let values: Vec<Vec<f64>> = series.iter().map(|(_, v)| v.clone()).collect();
    let (step, counts) = histogram(&values, bins);
    let n = counts.first().map_or(1, Vec::len);
    let totals: Vec<usize> = (0..n).map(|i| counts.iter().map(|c| c[i]).sum()).collect();
    let max = totals.iter().copied().max().unwrap_or(0) as f64;
    let frame = Frame::new(width, 220.0);
    let ticks = nice_ticks(max.max(1.0), 4);
    let ticks: Vec<f64> = ticks.into_iter().filter(|t| t.fract() == 0.0).collect();
    let top_value = *ticks.last().unwrap_or(&1.0);
    let mut svg = open(width, frame.height, x_label);
    frame.y_axis(&mut svg, &ticks, top_value, 1.0, "calls");

    let span = step * n as f64;
    let x = |v: f64| frame.left + frame.plot_width() * (v / span).clamp(0.0, 1.0);
    for i in 0..n {
        let mut base = 0usize;
        let x0 = x(i as f64 * step) + 1.0;
        let w = (x((i + 1) as f64 * step) - x(i as f64 * step) - 2.0).max(1.0);
        for (s, row) in counts.iter().enumerate() {
            let c = row[i];
            if c == 0 {
                continue;
            }
            let y0 = frame.y((base + c) as f64, top_value);
            let y1 = frame.y(base as f64, top_value);
            let _ = write!(
                svg,
                r#"<rect x="{x0:.2}" y="{y0:.2}" width="{w:.2}" height="{:.2}" fill="{}"><title>{} · {}–{}: {} calls</title></rect>"#,
                y1 - y0,
                server_colour(s),
                escape(&series[s].0),
                tick_label(i as f64 * step, step),
                tick_label((i + 1) as f64 * step, step),
                c
            );
            base += c;
        }
    }
    let x_ticks = nice_ticks(span, 8);
    let x_step = x_ticks.get(1).copied().unwrap_or(step);
    for t in x_ticks.into_iter().filter(|t| *t <= span + 1e-9) {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{MUTED}">{}</text>"#,
            x(t),
            frame.bottom() + 15.0,
            tick_label(t, x_step)
        );
    }
    for (k, (label, value)) in markers.iter().enumerate() {
        let mx = x(*value);
        // Labels near the right edge go on the left of their line, so they stay inside.
        let (lx, anchor) = if mx > frame.left + 0.75 * frame.plot_width() {
            (mx - 4.0, "end")
        } else {
            (mx + 4.0, "start")
        };
        let _ = write!(
            svg,
            r#"<line x1="{mx:.1}" y1="{:.1}" x2="{mx:.1}" y2="{:.1}" stroke="{TEXT}" stroke-dasharray="4 3"/>"#,
            frame.top,
            frame.bottom()
        );
        let _ = write!(
            svg,
            r#"<text x="{lx:.1}" y="{:.1}" text-anchor="{anchor}" font-size="11" fill="{TEXT}" stroke="white" stroke-width="3" paint-order="stroke">{} {}</text>"#,
            frame.top + 10.0 + 13.0 * k as f64,
            escape(label),
            tick_label(*value, step / 10.0)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{MUTED}">{}</text>"#,
        frame.left + frame.plot_width() / 2.0,
        frame.bottom() + 30.0,
        escape(x_label)
    );
    svg.push_str("</svg>");
    svg
}

/// A small bar chart of how many submissions got each score: `counts` holds (score, count).
pub fn score_bars(title: &str, counts: &[(f64, usize)], colour: &str) -> String {
    let width = 300.0;
    let frame = Frame {
        width,
        height: 170.0,
        left: 34.0,
        right: 10.0,
        top: 26.0,
        bottom_margin: 30.0,
    };
    let max = counts.iter().map(|c| c.1).max().unwrap_or(0) as f64;
    let ticks: Vec<f64> = nice_ticks(max.max(1.0), 3)
        .into_iter()
        .filter(|t| t.fract() == 0.0)
        .collect();
    let top_value = *ticks.last().unwrap_or(&1.0);
    let mut svg = open(width, frame.height, title);
    let _ = write!(
        svg,
        r#"<text x="4" y="15" font-size="12" font-weight="600" fill="{TEXT}">{}</text>"#,
        escape(title)
    );
    frame.y_axis(&mut svg, &ticks, top_value, 1.0, "");
    let slot = frame.plot_width() / counts.len().max(1) as f64;
    let bar = (slot * 0.7).min(36.0);
    for (i, &(score, count)) in counts.iter().enumerate() {
        let cx = frame.left + slot * (i as f64 + 0.5);
        if count > 0 {
            let y0 = frame.y(count as f64, top_value);
            let _ = write!(
                svg,
                r#"<rect x="{:.2}" y="{y0:.2}" width="{bar:.2}" height="{:.2}" fill="{colour}"><title>{}: {count}</title></rect>"#,
                cx - bar / 2.0,
                frame.bottom() - y0,
                tick_label(score, 0.5)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{MUTED}">{}</text>"#,
            frame.bottom() + 14.0,
            score_label(score)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn score_label(score: f64) -> String {
    if score.fract() == 0.0 {
        format!("{score:.0}")
    } else {
        format!("{score}")
    }
}

fn time_ticks(wall: f64) -> Vec<f64> {
    // Clock-friendly steps, so that ticks fall on whole seconds and minutes.
    let step = bucket_seconds(wall, 8);
    let n = (wall / step).floor() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

fn open(width: f64, height: f64, label: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="{}" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif">"#,
        escape(label)
    )
}

/// A chart's plot area inside its margins.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom_margin: f64,
}

impl Frame {
    fn new(width: f64, height: f64) -> Self {
        Frame {
            width,
            height,
            left: 64.0,
            right: 20.0,
            top: 12.0,
            bottom_margin: 38.0,
        }
    }

    fn plot_width(&self) -> f64 {
        self.width - self.left - self.right
    }

    fn bottom(&self) -> f64 {
        self.height - self.bottom_margin
    }

    fn y(&self, value: f64, top_value: f64) -> f64 {
        let share = if top_value > 0.0 {
            value / top_value
        } else {
            0.0
        };
        self.bottom() - (self.bottom() - self.top) * share.clamp(0.0, 1.0)
    }

    fn y_axis(&self, svg: &mut String, ticks: &[f64], top_value: f64, step: f64, label: &str) {
        for &t in ticks {
            let y = self.y(t, top_value);
            let _ = write!(
                svg,
                r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{GRID}"/>"#,
                self.left,
                self.width - self.right
            );
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="{MUTED}">{}</text>"#,
                self.left - 6.0,
                y + 4.0,
                tick_label(t, step)
            );
        }
        if !label.is_empty() {
            let cy = (self.top + self.bottom()) / 2.0;
            let _ = write!(
                svg,
                r#"<text x="14" y="{cy:.1}" text-anchor="middle" font-size="11" fill="{MUTED}" transform="rotate(-90 14 {cy:.1})">{}</text>"#,
                escape(label)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(100.0, 5), 20.0);
        assert_eq!(nice_step(7.0, 5), 2.0);
        assert_eq!(nice_step(0.9, 4), 0.5);
        assert_eq!(nice_step(0.0, 4), 1.0);
        assert_eq!(nice_ticks(95.0, 5), [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
    }

    #[test]
    fn buckets_read_well_on_a_clock() {
        assert_eq!(bucket_seconds(20.0, 40), 1.0);
        assert_eq!(bucket_seconds(3600.0, 40), 120.0);
        assert_eq!(bucket_seconds(8.0 * 3600.0, 40), 900.0);
    }

    #[test]
    fn spreads_tokens_evenly_over_their_buckets() {
        // 100 tokens over [5, 15] with 10-second buckets: half in each of the first two.
        let totals = tokens_per_bucket(&[(5.0, 15.0, 100.0), (25.0, 25.0, 7.0)], 30.0, 10.0);
        assert_eq!(totals, vec![50.0, 50.0, 7.0]);
        let sum: f64 = tokens_per_bucket(&[(0.3, 9.7, 42.0)], 10.0, 1.0)
            .iter()
            .sum();
        assert!((sum - 42.0).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn histogram_puts_each_value_in_one_bin() {
        let (step, counts) = histogram(&[vec![0.1, 0.4, 1.2], vec![1.9, 2.0]], 4);
        assert_eq!(step, 0.5);
        assert_eq!(counts[0], vec![2, 0, 1, 0, 0]);
        assert_eq!(counts[1], vec![0, 0, 0, 1, 1]);
    }

    #[test]
    fn overlapping_calls_take_separate_rows_and_later_ones_reuse_free_rows() {
        let rows = lane_rows(&[(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (16.0, 18.0)]);
        assert_eq!(rows, vec![0, 1, 0, 1]);
    }

    #[test]
    fn clock_readings() {
        assert_eq!(clock(45.4), "0:45");
        assert_eq!(clock(725.0), "12:05");
        assert_eq!(clock(3750.0), "1:02:30");
    }

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(escape("a<b & \"c\"\u{7}"), "a&lt;b &amp; &quot;c&quot; ");
    }
}
