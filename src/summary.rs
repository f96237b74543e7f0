//! The run's totals: what was read, what was lost, what was found, per backend. Built from the
//! record stream (so it always agrees with what was printed) plus the reader's and the flow
//! tables' counters.

use crate::findings::{Kind, Severity};
use crate::flow::FlowStats;
use crate::record::{ConnId, Outcome, Record, Side};
use crate::retries::{self, About, Request, Retries};
use crate::time::Ts;
use crate::timeline::{Series, Timeline};
use indexmap::IndexMap;
use rustc_hash::FxBuildHasher;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A log-bucketed histogram of microsecond values: 8 buckets per power of two (relative
/// error under 12.5 %), fixed size, so percentiles cost no memory per sample. The smallest
/// and largest values are kept exactly: a quantile never falls outside them (one sample is
/// its own p50 and p99), and the top rank is the maximum itself.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    pub n: u64,
    pub min: u64,
    pub max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; 8 + 61 * 8],
            n: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    fn bucket(v: u64) -> usize {
        if v < 8 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize;
        let m = ((v >> (e - 3)) & 7) as usize;
        8 + (e - 3) * 8 + m
    }

    fn bucket_mid(i: usize) -> u64 {
        if i < 8 {
            return i as u64;
        }
        let e = (i - 8) / 8 + 3;
        let m = ((i - 8) % 8) as u64;
        let lo = (8 + m) << (e - 3);
        lo + (1u64 << (e - 3)) / 2
    }

    pub fn add(&mut self, v: u64) {
        let i = Self::bucket(v).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.n += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// The value at quantile `q` (0..=1), approximately.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        if rank == self.n {
            return Some(self.max);
        }
        if rank == 1 {
            return Some(self.min);
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::bucket_mid(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

#[derive(Clone, Debug, Default)]
pub struct BackendStats {
    pub connections: u64,
    pub exchanges: u64,
    pub errors: u64,
    pub warnings: u64,
    pub findings: BTreeMap<Kind, u64>,
    pub ttfb_us: Histogram,
}

/// What the reader saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadStats {
    pub files: u64,
    pub packets: u64,
    pub bytes: u64,
    pub tcp_packets: u64,
    pub non_tcp_packets: u64,
    pub malformed_packets: u64,
    /// Frames cut by the snaplen (their missing payload became capture gaps).
    pub snaplen_cut_frames: u64,
    /// Whole frames (not cut by the snaplen) shorter than their IP header declares: the
    /// packet itself was short; its missing payload became capture gaps too.
    pub short_ip_frames: u64,
    /// IP fragments of TCP packets: not reassembled, their bytes became capture gaps.
    pub tcp_fragments: u64,
    /// libpcap statistics in live mode.
    pub kernel_received: Option<u64>,
    pub kernel_dropped: Option<u64>,
    pub interface_dropped: Option<u64>,
}

/// A timer that ends exchanges, read off the findings it causes: when most of them ran the
/// same time, that time names a setting — the backend closing requests 30 s after they came
/// is a worker timeout (Gunicorn's default), the proxy giving up after 60 s of silence its
/// read timeout (nginx's default). A crash or an abort has no such regularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// The backend closed or reset the connection before answering:
    /// `closed_before_response` and `reset_before_response`, timed from the request.
    BackendClose,
    /// The proxy gave up waiting: `abandoned_by_client`, timed from the backend's last byte
    /// (or the request).
    ProxyGaveUp,
    /// The backend closed an idle keep-alive connection: connection records'
    /// `idle_close` by the server, and `keepalive_race` findings whose close crossed the
    /// request (the others are idle closes too, counted once through their connection),
    /// timed from the end of the connection's last exchange to the backend's close (its
    /// keep-alive timeout).
    BackendIdleClose,
    /// The proxy closed an idle keep-alive connection: connection records' `idle_close` by
    /// the client (its idle timeout for upstream connections).
    ProxyIdleClose,
}

/// Timers shorter than this are not timeouts anyone sets (an immediate rejection, an abort).
pub const MIN_TIMER_MS: f64 = 1000.0;

/// Runs of a timer kept for the median; the first ones (in output order, so the same for
/// any thread count).
const MAX_TIMER_SAMPLES: usize = 1024;

impl Timer {
    fn of(
        kind: Kind,
        evidence: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<(Timer, f64)> {
        let (timer, field) = match kind {
            Kind::ClosedBeforeResponse | Kind::ResetBeforeResponse => {
                (Timer::BackendClose, "after_request_ms")
            }
            Kind::AbandonedByClient => (Timer::ProxyGaveUp, "idle_before_close_ms"),
            Kind::KeepaliveRace => {
                // Idle before the request, less the close's lead on it (or plus its lag,
                // when the close crossed the request).
                let ms = |f: &str| evidence.get(f).and_then(serde_json::Value::as_f64);
                let idle = ms("idle_before_request_ms")?;
                // A close before the request is the connection's `idle_close`, counted from
                // its record; one that crossed the request is only here.
                if ms("server_close_before_request_ms").is_some() {
                    return None;
                }
                let after = ms("server_close_after_request_ms")?;
                return Some((Timer::BackendIdleClose, idle + after));
            }
            _ => return None,
        };
        evidence
            .get(field)
            .and_then(serde_json::Value::as_f64)
            .map(|ms| (timer, ms))
    }

    fn kinds(self) -> &'static str {
        match self {
            Timer::BackendClose => "closed_before_response, reset_before_response",
            Timer::ProxyGaveUp => "abandoned_by_client",
            Timer::BackendIdleClose => "connections' idle_close, keepalive_race",
            Timer::ProxyIdleClose => "connections' idle_close",
        }
    }

    /// What one run's end is, in words (plural).
    fn ends(self) -> &'static str {
        match self {
            Timer::BackendClose => "backend closes before any response byte",
            Timer::ProxyGaveUp => "proxy give-ups",
            Timer::BackendIdleClose => "backend closes of idle keep-alive connections",
            Timer::ProxyIdleClose => "proxy closes of idle keep-alive connections",
        }
    }
}

/// A bounded sample of a timer's runs, each with the backend it ran against.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    runs: Vec<(f64, SocketAddr)>,
    /// Runs in all (beyond the sample too).
    pub n: u64,
}

/// A timer's usual length: the median of its sampled runs, and the runs within 5 % of it.
struct Regular {
    median: f64,
    near: usize,
    sampled: usize,
    /// The backends of the runs near the median, in order of first appearance.
    backends: Vec<SocketAddr>,
}

impl Samples {
    fn add(&mut self, ms: f64, server: SocketAddr) {
        self.n += 1;
        if self.runs.len() < MAX_TIMER_SAMPLES {
            self.runs.push((ms, server));
        }
    }

    /// The time most runs took, if three or more and at least three in four of them lie
    /// within 5 % of their median, and it is long enough to be a setting.
    fn regular(&self) -> Option<Regular> {
        regular_of(&self.runs)
    }

    /// The timer's usual lengths: per backend where a backend's own runs agree (two pools
    /// with different timeouts each get theirs, where together neither reaches three in
    /// four), the backends whose runs agree on the same length together, and the runs of
    /// the other backends pooled (many backends with a run or two each, behind one proxy
    /// timeout). Without a backend of its own pattern, all runs together, as one.
    fn regulars(&self) -> Vec<Regular> {
        let mut groups: Vec<(SocketAddr, Vec<(f64, SocketAddr)>)> = Vec::new();
        for &(ms, server) in &self.runs {
            match groups.iter_mut().find(|(b, _)| *b == server) {
                Some((_, runs)) => runs.push((ms, server)),
                None => groups.push((server, vec![(ms, server)])),
            }
        }
        // Agreeing backends, each with its runs, those of the same length together (each
        // group with its median while it is still regular); the rest pooled, and then, if
        // they agree, taken as one more group.
        type Group = (Option<f64>, Vec<(f64, SocketAddr)>);
        let mut found: Vec<Group> = Vec::new();
        let mut rest: Vec<(f64, SocketAddr)> = Vec::new();
        let join = |found: &mut Vec<Group>, runs: Vec<(f64, SocketAddr)>| {
            let Some(r) = regular_of(&runs) else {
                return Err(runs);
            };
            let same = found
                .iter_mut()
                .find(|(median, _)| median.is_some_and(|g| (g - r.median).abs() <= g * 0.05));
            match same {
                Some((median, group)) => {
                    group.extend(runs);
                    *median = regular_of(group).map(|g| g.median);
                }
                None => found.push((Some(r.median), runs)),
            }
            Ok(())
        };
        for (_, runs) in groups {
            if let Err(runs) = join(&mut found, runs) {
                rest.extend(runs);
            }
        }
        if found.is_empty() {
            return self.regular().into_iter().collect();
        }
        let _ = join(&mut found, rest);
        found
            .iter()
            .filter_map(|(_, runs)| regular_of(runs))
            .collect()
    }
}

/// [`Samples::regular`] of some runs.
fn regular_of(runs: &[(f64, SocketAddr)]) -> Option<Regular> {
    if runs.len() < 3 {
        return None;
    }
    let mut v: Vec<f64> = runs.iter().map(|r| r.0).collect();
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    if median < MIN_TIMER_MS {
        return None;
    }
    let is_near = |x: f64| (x - median).abs() <= median * 0.05;
    let near = v.iter().filter(|&&x| is_near(x)).count();
    if near * 4 < v.len() * 3 {
        return None;
    }
    let mut backends: Vec<SocketAddr> = Vec::new();
    for &(ms, server) in runs {
        if is_near(ms) && !backends.contains(&server) {
            backends.push(server);
        }
    }
    Some(Regular {
        median,
        near,
        sampled: v.len(),
        backends,
    })
}

/// The backends a timer ran against, for its message: up to three by address.
fn at_backends(b: &[SocketAddr]) -> String {
    match b {
        [one] => format!("at {one}"),
        [_, _] | [_, _, _] => format!(
            "at {}",
            b.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => format!("at {} backends", b.len()),
    }
}

/// Well-known defaults of each timer's length: named when a timer ran within 5 % of one.
const KNOWN_TIMERS: &[(Timer, f64, &str)] = &[
    (
        Timer::BackendClose,
        30.0,
        "30 s is Gunicorn's default --timeout",
    ),
    (
        Timer::BackendClose,
        60.0,
        "60 s is the default of Puma's worker_timeout and Unicorn's timeout",
    ),
    (
        Timer::ProxyGaveUp,
        60.0,
        "60 s is nginx's default proxy_read_timeout (and an AWS ALB's idle timeout)",
    ),
    (
        Timer::ProxyGaveUp,
        15.0,
        "15 s is Envoy's default route timeout",
    ),
    (
        Timer::BackendIdleClose,
        5.0,
        "5 s is the default of Node.js's keepAliveTimeout and Apache's KeepAliveTimeout",
    ),
    (
        Timer::BackendIdleClose,
        2.0,
        "2 s is Gunicorn's default --keep-alive",
    ),
    (
        Timer::BackendIdleClose,
        20.0,
        "20 s is Puma's persistent_timeout",
    ),
    (
        Timer::BackendIdleClose,
        75.0,
        "75 s is nginx's default keepalive_timeout",
    ),
    (
        Timer::BackendIdleClose,
        350.0,
        "350 s is an AWS Network Load Balancer's TCP idle timeout (it resets the connection)",
    ),
    (
        Timer::ProxyIdleClose,
        60.0,
        "60 s is nginx's default keepalive_timeout for upstream connections",
    ),
    (
        Timer::ProxyIdleClose,
        3600.0,
        "1 h is Envoy's default idle_timeout for upstream connections",
    ),
];

/// What a timer that ran `ms` most likely is, the default it matches, and what to do.
fn timer_meaning(t: Timer, ms: f64) -> String {
    let known = KNOWN_TIMERS
        .iter()
        .find(|&&(k, s, _)| k == t && (ms - s * 1000.0).abs() <= s * 1000.0 * 0.05)
        .map_or(String::new(), |(_, _, what)| format!(" — {what}"));
    let (what, advice) = match t {
        Timer::BackendClose => (
            "a timer in the backend ends requests that take this long: a request timeout or a worker watchdog (Gunicorn --timeout, uWSGI harakiri, PHP-FPM request_terminate_timeout, Puma worker_timeout)",
            "raise it or make those requests faster",
        ),
        Timer::ProxyGaveUp => (
            "the proxy's read timeout is this long (nginx proxy_read_timeout, HAProxy timeout server, Envoy's route timeout)",
            "the backend needs longer than that for these requests",
        ),
        Timer::BackendIdleClose => (
            "the backend's keep-alive timeout is this long, and it closes idle connections before the proxy does: a request the proxy sends on one as it closes gets a reset or no answer, a 502 (keep-alive race)",
            "make it longer than the proxy's idle timeout for upstream connections (nginx keepalive_timeout in the upstream block, 60 s by default; an AWS ALB's 60 s idle timeout), or the proxy's shorter",
        ),
        Timer::ProxyIdleClose => (
            "the proxy's idle timeout for upstream connections is this long (nginx keepalive_timeout in the upstream block, Envoy's idle_timeout)",
            "the backend's keep-alive timeout must be longer, or the backend closes first and the proxy can reuse a connection as it closes (a keep-alive race)",
        ),
    };
    format!("{what}{known}; {advice}")
}

/// What the summary counts of a record: small, so that worker threads can hand it over
/// instead of the record. Heap data only for a finding a retry can follow (rare): the
/// request it is about, for its `retry` record.
#[derive(Clone, Debug)]
pub enum Observed {
    Finding {
        kind: Kind,
        severity: Severity,
        low: bool,
        server: SocketAddr,
        ts: Ts,
        /// For the kinds a timer ends (see [`Timer`]), how long it ran.
        timer: Option<(Timer, f64)>,
        /// The request it is about, if a retry can follow it (see [`crate::retries`]): its
        /// key for the matching, and who sent it and what it asked for, for its record.
        retryable: Option<(Request, Box<About>)>,
    },
    Exchange {
        server: SocketAddr,
        ttfb_ms: Option<f64>,
        request: Option<Request>,
        request_start: Option<Ts>,
        outcome: Outcome,
        status: Option<u16>,
    },
    Connection {
        server: SocketAddr,
        start: Ts,
        end: Ts,
        /// Who closed the connection while it was idle, and after how long.
        idle_close: Option<(Side, f64)>,
    },
}

/// The request a record is about, if it names one (method and target).
fn request(
    conn: ConnId,
    index: Option<u32>,
    client: SocketAddr,
    method: &Option<String>,
    target: &Option<String>,
) -> Option<Request> {
    Some(Request {
        conn,
        index: index?,
        proxy: client.ip(),
        key: retries::request_key(method.as_deref()?, target.as_deref()?),
    })
}

/// A finding a retry can follow: the request it is about, with who sent it and what it
/// asked for (rare: out of line).
#[cold]
#[inline(never)]
fn retryable(f: &crate::record::Finding) -> Option<(Request, Box<About>)> {
    let (method, target) = (f.method.as_deref()?, f.target.as_deref()?);
    let req = request(f.conn, f.exchange, f.client, &f.method, &f.target)?;
    Some((req, Box::new(About::new(f.client, method, target))))
}

impl Observed {
    pub fn of(r: &Record) -> Observed {
        match r {
            Record::Finding(f) => Observed::Finding {
                kind: f.kind,
                severity: f.severity,
                low: f.confidence == crate::findings::Confidence::Low,
                server: f.server,
                ts: f.ts,
                timer: Timer::of(f.kind, &f.evidence),
                retryable: retries::retryable(f.kind).then(|| retryable(f)).flatten(),
            },
            Record::Exchange(e) => Observed::Exchange {
                server: e.server,
                ttfb_ms: e.ttfb_ms,
                request: request(e.conn, Some(e.index), e.client, &e.method, &e.target),
                request_start: e.request_start,
                outcome: e.outcome,
                status: e.status,
            },
            Record::Connection(c) => Observed::Connection {
                server: c.server,
                start: c.start,
                end: c.end,
                idle_close: c.idle_close.map(|i| (i.by, i.idle_ms)),
            },
        }
    }

    pub fn is_finding(&self) -> bool {
        matches!(self, Observed::Finding { .. })
    }
}

impl ReadStats {
    /// Adds the frame counts of `o` (frames counted elsewhere); live statistics stay.
    pub fn add(&mut self, o: &ReadStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.tcp_packets += o.tcp_packets;
        self.non_tcp_packets += o.non_tcp_packets;
        self.malformed_packets += o.malformed_packets;
        self.snaplen_cut_frames += o.snaplen_cut_frames;
        self.short_ip_frames += o.short_ip_frames;
        self.tcp_fragments += o.tcp_fragments;
    }
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub read: ReadStats,
    pub flow: FlowStats,
    pub first_ts: Option<Ts>,
    pub last_ts: Option<Ts>,
    pub connections: u64,
    pub exchanges: u64,
    pub findings: BTreeMap<Kind, u64>,
    /// Findings by kind and the severity they were given (which depends on the case: an
    /// unsolicited response after a capture gap is only information).
    pub by_kind_severity: BTreeMap<(Kind, Severity), u64>,
    /// The packet times of the first and the last finding of each (kind, severity): a
    /// burst (a restart, a deploy) and a steady trickle read differently at 3 a.m.
    pub finding_span: BTreeMap<(Kind, Severity), (Ts, Ts)>,
    /// How long the timers that end exchanges ran (see [`Timer`]).
    pub timers: BTreeMap<Timer, Samples>,
    pub by_severity: BTreeMap<Severity, u64>,
    pub low_confidence: u64,
    /// Hashed with FxHash, like the flow table: looked up once per record written, and the
    /// keys are bounded ([`MAX_BACKENDS`]).
    pub backends: IndexMap<SocketAddr, BackendStats, FxBuildHasher>,
    /// Connections whose last packet is timestamped before their first.
    pub time_backwards: u64,
    /// Failed requests and whether the proxy sent them again (see [`crate::retries`]).
    pub retries: Retries,
    /// Errors, warnings and exchanges over time (see [`crate::timeline`]).
    pub timeline: Timeline,
    /// Problems with the input (unreadable file, truncated record...), one line each.
    pub input_errors: Vec<String>,
    /// Lines worth a user's attention about the run itself (drops, limits).
    pub warnings: Vec<String>,
}

/// A timer that ran about the same time in most of its runs.
#[derive(Clone, Debug)]
pub struct TimerPattern {
    pub timer: Timer,
    pub median_ms: f64,
    /// Runs within 5 % of the median, of those sampled.
    pub near: usize,
    pub sampled: usize,
    /// The backends of the runs near the median.
    pub backends: Vec<SocketAddr>,
    pub message: String,
}

/// Distinct backends tracked in the summary; more are folded into the last one.
const MAX_BACKENDS: usize = 4096;

impl Summary {
    fn backend(&mut self, addr: SocketAddr) -> &mut BackendStats {
        let n = self.backends.len();
        if n >= MAX_BACKENDS && !self.backends.contains_key(&addr) {
            return &mut self.backends[n - 1];
        }
        self.backends.entry(addr).or_default()
    }

    pub fn observe(&mut self, r: &Record) {
        self.note(&Observed::of(r));
    }

    /// Counts a record written to the output, from what the summary needs of it.
    pub fn note(&mut self, o: &Observed) {
        match *o {
            Observed::Finding {
                kind,
                severity,
                low,
                server,
                ts,
                timer,
                ref retryable,
            } => {
                if let Some((r, about)) = retryable {
                    self.retries.failure(kind, *r, about, server, ts);
                }
                if let Some((t, ms)) = timer {
                    self.timers.entry(t).or_default().add(ms, server);
                }
                *self.findings.entry(kind).or_default() += 1;
                *self.by_kind_severity.entry((kind, severity)).or_default() += 1;
                self.finding_span
                    .entry((kind, severity))
                    .and_modify(|(first, last)| {
                        *first = (*first).min(ts);
                        *last = (*last).max(ts);
                    })
                    .or_insert((ts, ts));
                *self.by_severity.entry(severity).or_default() += 1;
                if low {
                    self.low_confidence += 1;
                }
                let b = self.backend(server);
                *b.findings.entry(kind).or_default() += 1;
                let series = match severity {
                    Severity::Error => {
                        b.errors += 1;
                        Some(Series::Errors)
                    }
                    Severity::Warning => {
                        b.warnings += 1;
                        Some(Series::Warnings)
                    }
                    Severity::Info => None,
                };
                if let Some(series) = series {
                    self.timeline.add(series, ts);
                }
            }
            Observed::Exchange {
                server,
                ttfb_ms,
                request,
                request_start,
                outcome,
                status,
            } => {
                if let Some(r) = request {
                    self.retries
                        .exchange(r, server, request_start, outcome, status);
                }
                if let Some(t) = request_start {
                    self.timeline.add(Series::Exchanges, t);
                }
                self.exchanges += 1;
                let b = self.backend(server);
                b.exchanges += 1;
                if let Some(ms) = ttfb_ms {
                    b.ttfb_us.add((ms * 1000.0).round() as u64);
                }
            }
            Observed::Connection {
                server,
                start,
                end,
                idle_close,
            } => {
                if let Some((by, ms)) = idle_close {
                    let t = match by {
                        Side::Server => Timer::BackendIdleClose,
                        Side::Client => Timer::ProxyIdleClose,
                    };
                    self.timers.entry(t).or_default().add(ms, server);
                }
                self.connections += 1;
                self.backend(server).connections += 1;
                self.first_ts = Some(self.first_ts.map_or(start, |t| t.min(start)));
                self.last_ts = Some(self.last_ts.map_or(end, |t| t.max(end)));
                if end < start {
                    self.time_backwards += 1;
                }
            }
        }
    }

    pub fn errors(&self) -> u64 {
        self.by_severity.get(&Severity::Error).copied().unwrap_or(0)
    }

    /// Lines about the completeness of the analysis, for both report formats.
    pub fn completeness_notes(&self) -> Vec<String> {
        let mut v = self.warnings.clone();
        if let Some(d) = self.read.kernel_dropped.filter(|&d| d > 0) {
            v.push(format!(
                "the kernel dropped {d} packet(s) during the capture: findings may be incomplete (raise the buffer with --buffer-size or filter harder with -f)"
            ));
        }
        if let Some(d) = self.read.interface_dropped.filter(|&d| d > 0) {
            v.push(format!(
                "the interface dropped {d} packet(s): findings may be incomplete"
            ));
        }
        if self.flow.gap_bytes > 0 {
            v.push(format!(
                "{} byte(s) were missing from the capture (capture gaps); findings that touch them have confidence: low",
                self.flow.gap_bytes
            ));
        }
        if self.read.snaplen_cut_frames > 0 {
            v.push(format!(
                "{} frame(s) were cut by the snaplen; capture with -s 0 to see whole packets",
                self.read.snaplen_cut_frames
            ));
        }
        if self.read.short_ip_frames > 0 {
            v.push(format!(
                "{} frame(s) were shorter than their IP header declares although the capture kept all of their bytes (malformed or truncated packets, not the snaplen); the bytes they lack are capture gaps",
                self.read.short_ip_frames
            ));
        }
        if self.read.tcp_fragments > 0 {
            v.push(format!(
                "{} packet(s) were IP fragments of TCP segments, which gatescope does not reassemble: what they carried is missing from the analysis (a capture gap where the connection is otherwise seen); capture on the sending host, before fragmentation, or find the MTU mismatch that splits them",
                self.read.tcp_fragments
            ));
        }
        if self.flow.evicted > 0 {
            v.push(format!(
                "{} connection(s) were evicted to stay within --max-connections",
                self.flow.evicted
            ));
        }
        if self.flow.ooo_overflows > 0 {
            v.push(format!(
                "the out-of-order buffer overflowed {} time(s) (--max-ooo-bytes); holes were treated as capture gaps",
                self.flow.ooo_overflows
            ));
        }
        if self.time_backwards > 0 {
            v.push(format!(
                "{} connection(s) end before they start: packet timestamps run backwards in this capture (files merged out of order, or the clock stepped back); times and durations on them are wrong — sort the capture first (reordercap IN OUT)",
                self.time_backwards
            ));
        }
        if self.flow.synack_after_refusal > 0 {
            v.push(format!(
                "{} refused connection(s) got a SYN-ACK from the backend after the RST that refused them: that RST did not come from the backend's listener but from something on the path (a firewall, conntrack dropping packets as INVALID, a load balancer or an IPS) — check those devices' logs and counters (conntrack -S, the firewall's rejects)",
                self.flow.synack_after_refusal
            ));
        }
        if self.flow.refusal_ignored > 0 {
            v.push(format!(
                "{} of those the proxy went on with (it acknowledged the SYN-ACK: the RST did not match its connection, an injected or stale one): gatescope ended them at the RST, so what followed is not analysed and their connect_refused is not what the proxy saw",
                self.flow.refusal_ignored
            ));
        }
        if self.flow.unreachable_outlived > 0 {
            v.push(format!(
                "{} connect(s) got an ICMP destination unreachable and then a SYN-ACK (a transient error, or a proxy whose system retries after one): not reported as connect_unreachable",
                self.flow.unreachable_outlived
            ));
        }
        if self.flow.unreachable_other > 0 {
            v.push(format!(
                "{} ICMP destination-unreachable message(s) about TCP segments that were not a connect the capture shows failing (segments of established connections, which outlive such soft errors, or of connections not in the capture): counted, not reported as findings",
                self.flow.unreachable_other
            ));
        }
        if self.flow.late_data_packets > 0 {
            v.push(format!(
                "{} TCP packet(s) with data or a SYN came after their connection had ended (a RST or both FINs) and were not analysed: retransmissions after a reset, or a RST injected before the real answer (look for a SYN-ACK after a refused connection in Wireshark)",
                self.flow.late_data_packets
            ));
        }
        if self.read.tcp_packets == 0 && self.read.tcp_fragments == 0 {
            // An empty report must not read as a clean bill of health.
            v.push(format!(
                "no TCP packets were read ({} packet(s) in all), so nothing was analysed: check the capture filter (gatescope's -f, or tcpdump's) and that the capture is of the proxy-to-backend leg",
                self.read.packets
            ));
        }
        if let Some(&n) = self.findings.get(&Kind::LimitReached) {
            v.push(format!(
                "gatescope's own bounds were reached {n} time(s) (limit_reached findings name the flag): what they cut short got no verdict; raise the flag if the traffic is legitimate"
            ));
        }
        v
    }

    /// Per kind, the packet times of its first and last finding (whatever their severity).
    fn finding_times(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut by_kind: BTreeMap<Kind, (Ts, Ts)> = BTreeMap::new();
        for (&(kind, _), &(first, last)) in &self.finding_span {
            by_kind
                .entry(kind)
                .and_modify(|(f, l)| {
                    *f = (*f).min(first);
                    *l = (*l).max(last);
                })
                .or_insert((first, last));
        }
        by_kind
            .into_iter()
            .map(|(k, (f, l))| {
                (
                    k.name().to_string(),
                    serde_json::json!({"first": f.to_string(), "last": l.to_string()}),
                )
            })
            .collect()
    }

    /// Timers that ran about the same time in most of their runs (see [`Timer`]): what,
    /// how long, and what it most likely is.
    pub fn timer_patterns(&self) -> Vec<TimerPattern> {
        self.timers
            .iter()
            .flat_map(|(&t, s)| s.regulars().into_iter().map(move |r| (t, r)))
            .map(|(t, r)| {
                let Regular {
                    median,
                    near,
                    sampled,
                    backends,
                } = r;
                let message = format!(
                    "{near} of {sampled} {} ({}, {}) came {:.1} s after {}: {}",
                    t.ends(),
                    t.kinds(),
                    at_backends(&backends),
                    median / 1000.0,
                    match t {
                        Timer::BackendClose => "their request",
                        Timer::ProxyGaveUp =>
                            "the backend's last byte (or the request, before any)",
                        Timer::BackendIdleClose | Timer::ProxyIdleClose =>
                            "the connection's last exchange",
                    },
                    timer_meaning(t, median)
                );
                TimerPattern {
                    timer: t,
                    median_ms: median,
                    near,
                    sampled,
                    backends,
                    message,
                }
            })
            .collect()
    }

    /// The `"summary"` JSON record.
    pub fn to_json(&self) -> serde_json::Value {
        let backends: Vec<serde_json::Value> = self
            .backends
            .iter()
            .map(|(addr, b)| {
                let q = |p: f64| b.ttfb_us.quantile(p).map(|us| us as f64 / 1000.0);
                serde_json::json!({
                    "server": addr.to_string(),
                    "connections": b.connections,
                    "exchanges": b.exchanges,
                    "errors": b.errors,
                    "warnings": b.warnings,
                    "findings": b.findings.iter().map(|(k, n)| (k.name().to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
                    "ttfb_ms": {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": if b.ttfb_us.n > 0 { Some(b.ttfb_us.max as f64 / 1000.0) } else { None }},
                })
            })
            .collect();
        serde_json::json!({
            "type": "summary",
            "first_ts": self.first_ts.map(|t| t.to_string()),
            "last_ts": self.last_ts.map(|t| t.to_string()),
            "read": self.read,
            "connections": self.connections,
            "exchanges": self.exchanges,
            "findings": self.findings.iter().map(|(k, n)| (k.name().to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
            "finding_times": self.finding_times(),
            "timeouts": self.timer_patterns().iter().map(|p| serde_json::json!({
                "timer": match p.timer {
                    Timer::BackendClose => "backend_close",
                    Timer::ProxyGaveUp => "proxy_gave_up",
                    Timer::BackendIdleClose => "backend_idle_close",
                    Timer::ProxyIdleClose => "proxy_idle_close",
                },
                "kinds": p.timer.kinds(),
                "median_ms": p.median_ms,
                "near_median": p.near,
                "sampled": p.sampled,
                "backends": p.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
                "message": p.message,
            })).collect::<Vec<_>>(),
            "errors": self.errors(),
            "warnings": self.by_severity.get(&Severity::Warning).copied().unwrap_or(0),
            "low_confidence": self.low_confidence,
            "tcp": {
                "midstream_connections": self.flow.midstream,
                "resumed_connections": self.flow.resumed,
                "retransmitted_bytes": self.flow.retransmitted_bytes,
                "out_of_order_segments": self.flow.out_of_order_segments,
                "overlap_conflicts": self.flow.overlap_conflicts,
                "gap_bytes": self.flow.gap_bytes,
                "evicted_connections": self.flow.evicted,
                "idle_expired_connections": self.flow.idle_expired,
                "ooo_overflows": self.flow.ooo_overflows,
                "late_packets": self.flow.late_packets,
                "late_data_packets": self.flow.late_data_packets,
                "synack_after_refusal": self.flow.synack_after_refusal,
                "refusal_ignored": self.flow.refusal_ignored,
                "unreachable_other": self.flow.unreachable_other,
                "unreachable_outlived": self.flow.unreachable_outlived,
            },
            "backends": backends,
            "retries": self.retries.to_json(),
            "timeline": self.timeline.to_json(),
            "input_errors": self.input_errors,
            "notes": self.completeness_notes(),
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_timers_backends_are_named_up_to_three_then_counted() {
        let b: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8000)))
            .collect();
        assert_eq!(
            [1, 3, 4].map(|n| at_backends(&b[..n])),
            [
                "at 10.0.0.1:8000".to_string(),
                "at 10.0.0.1:8000, 10.0.0.2:8000, 10.0.0.3:8000".to_string(),
                "at 4 backends".to_string(),
            ]
        );
    }

    /// Runs near the median count; one outlier in four does not hide the timer, two do.
    #[test]
    fn a_timer_is_regular_when_three_in_four_runs_agree() {
        let server = SocketAddr::from(([10, 0, 0, 1], 8000));
        let regular = |runs: &[f64]| {
            let mut s = Samples::default();
            for &ms in runs {
                s.add(ms, server);
            }
            s.regular().map(|r| (r.median, r.near))
        };
        assert_eq!(
            [
                regular(&[30_000.0, 30_100.0, 29_900.0, 2_000.0]),
                regular(&[30_000.0, 30_100.0, 9_000.0, 2_000.0]),
                regular(&[300.0, 310.0, 305.0]),
            ],
            [Some((30_000.0, 3)), None, None]
        );
    }

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.add(v * 100);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.13, "{p50}");
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn quantiles_never_leave_the_values_seen() {
        // One sample is every percentile of itself.
        let mut one = Histogram::default();
        one.add(12_177_000);
        assert_eq!(
            [0.5, 0.95, 0.99].map(|q| one.quantile(q)),
            [Some(12_177_000); 3]
        );
        // Five samples: p95 and p99 are the largest, p50 lies within them.
        let mut five = Histogram::default();
        for v in [15_200, 15_900, 16_400, 17_100, 18_000] {
            five.add(v);
        }
        assert_eq!(five.quantile(0.95), Some(18_000));
        assert_eq!(five.quantile(0.99), Some(18_000));
        let p50 = five.quantile(0.5).unwrap_or_default();
        assert!((15_200..=18_000).contains(&p50), "{p50}");
        // Merged from two workers: the same.
        let mut a = Histogram::default();
        a.add(15_200);
        let mut b = Histogram::default();
        b.add(1_520);
        a.merge(&b);
        assert_eq!(a.quantile(0.5), Some(1_520));
        assert_eq!(a.quantile(0.99), Some(15_200));
    }
}
