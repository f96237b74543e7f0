//! The human report: a summary (what was read, findings by kind, per-backend first-byte
//! times), then one block per connection that has findings, with its exchanges, each finding's
//! evidence, what the gateway would have logged, and a Wireshark filter to open it.
//!
//! Connection blocks are collected while the run goes (exchanges and findings per block are
//! capped) and printed after the summary; the JSON output is the unabridged record.

use crate::findings::Severity;
use crate::pipeline::Output;
use crate::record::{Connection, Exchange, Finding, Record};
use crate::summary::Summary;
use crate::time::Ts;
use rustc_hash::FxHashMap;
use std::io::{self, Write};
use tabled::settings::object::Columns;
use tabled::settings::{Style, Width};
use tabled::{builder::Builder, Table};

const MAX_EXCHANGES_SHOWN: usize = 40;
const MAX_FINDINGS_SHOWN: usize = 40;
/// Connection blocks printed (the worst kept when there are more): a screenful of tables per
/// block, so more than this is for `--format json`; and the blocks are held until the
/// summary, so the cap bounds the table's memory.
const MAX_BLOCKS: usize = 200;

#[derive(Default)]
struct Block {
    exchanges: Vec<Exchange>,
    more_exchanges: u64,
    findings: Vec<Finding>,
    more_findings: u64,
}

pub struct TableReport<W: Write + Send> {
    w: W,
    all: bool,
    open: FxHashMap<u64, Block>,
    done: Vec<(Connection, Block)>,
    more_blocks: u64,
    /// Live capture: each error and warning as a line here the moment it is found (the
    /// report itself waits for the end of the capture).
    feed: Option<Box<dyn Write + Send>>,
}

impl<W: Write + Send> TableReport<W> {
    /// `all`: show connections without findings too.
    pub fn new(w: W, all: bool) -> Self {
        TableReport {
            w,
            all,
            open: FxHashMap::default(),
            done: Vec::new(),
            more_blocks: 0,
            feed: None,
        }
    }

    /// Writes every error and warning to `feed` as one line as soon as it is found: in
    /// live mode the report comes only when the capture ends (Ctrl-C, `--duration`), and
    /// whoever is watching a 502 storm wants to see them while it lasts.
    pub fn with_feed(mut self, feed: Box<dyn Write + Send>) -> Self {
        self.feed = Some(feed);
        self
    }
}

/// One finding as one line: time, severity, kind, connection, exchange, what happened.
fn feed_line(f: &Finding) -> String {
    let ex = match (f.exchange, &f.method, &f.target) {
        (Some(i), Some(m), Some(t)) => {
            let t: String = t.chars().take(TEXT_COLUMN).collect();
            format!(" exchange {i} ({m} {t})")
        }
        (Some(i), _, _) => format!(" exchange {i}"),
        _ => String::new(),
    };
    format!(
        "{} {} {} {} → {}{ex}: {}",
        short_time(f.ts),
        f.severity.as_str().to_uppercase(),
        f.kind,
        f.client,
        f.server,
        f.message
    )
}

/// The time of day to the second: 2026-11-24T01:42:31.123456Z -> 01:42:31.
fn clock(t: Ts) -> String {
    let s = t.to_string();
    s.get(11..19).unwrap_or(&s).to_string()
}

fn short_time(t: Ts) -> String {
    // 2026-11-24T01:42:31.123456Z -> 01:42:31.123456
    let s = t.to_string();
    s.get(11..26).unwrap_or(&s).to_string()
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 1000.0 => format!("{:.2} s", x / 1000.0),
        Some(x) => format!("{x:.1} ms"),
        None => "-".into(),
    }
}

/// Widest a free-text column gets (the gateway's words, a request target): wider, and one
/// long value (a 200-character URL, HAProxy's two ways of logging a TLS mismatch) would
/// push the whole table past a terminal's width. The JSON output has them whole.
const TEXT_COLUMN: usize = 60;

/// Widest a request target gets in an exchange table (the other eight columns take ~80).
const TARGET_COLUMN: usize = 48;

/// Widest the summary's HAProxy and Envoy columns get (most entries are a two-letter
/// termination state; a few explain themselves).
const GATEWAY_COLUMN: usize = 28;

fn table(b: Builder) -> String {
    table_with(b, |_| {})
}

fn table_with(b: Builder, f: impl FnOnce(&mut Table)) -> String {
    let mut t: Table = b.build();
    t.with(Style::sharp());
    f(&mut t);
    t.to_string()
}

fn indent(s: &str, by: &str) -> String {
    s.lines()
        .map(|l| format!("{by}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl<W: Write + Send> Output for TableReport<W> {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        match r {
            Record::Finding(f) => {
                if let Some(feed) = self
                    .feed
                    .as_mut()
                    .filter(|_| f.severity >= Severity::Warning)
                {
                    // The feed is a courtesy: a closed stderr must not stop the report.
                    let _ = writeln!(feed, "{}", feed_line(f)).and_then(|()| feed.flush());
                }
                let b = self.open.entry(f.conn).or_default();
                if b.findings.len() < MAX_FINDINGS_SHOWN {
                    b.findings.push(f.clone());
                } else {
                    b.more_findings += 1;
                }
            }
            Record::Exchange(e) => {
                let b = self.open.entry(e.conn).or_default();
                if b.exchanges.len() < MAX_EXCHANGES_SHOWN {
                    b.exchanges.push(e.clone());
                } else {
                    b.more_exchanges += 1;
                }
            }
            Record::Connection(c) => {
                let b = self.open.remove(&c.id).unwrap_or_default();
                if self.all || !b.findings.is_empty() {
                    if self.done.len() < MAX_BLOCKS {
                        self.done.push((c.clone(), b));
                    } else {
                        // Full: the block shown is the worse one (an error seen late must
                        // not lose its place to the warnings of earlier connections; among
                        // equals, the earlier connection stays).
                        self.more_blocks += 1;
                        let least = self
                            .done
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, (c, b))| (worst(b), std::cmp::Reverse(c.id)))
                            .map(|(i, (_, kept))| (i, worst(kept)));
                        if let Some((i, kept)) = least {
                            if worst(&b) > kept {
                                if let Some(slot) = self.done.get_mut(i) {
                                    *slot = (c.clone(), b);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Live: what became of a failed request, under its finding's line in the feed — the
    /// ones a retry answered were no 502 for their clients.
    fn retry(&mut self, c: &crate::retries::Chain) -> io::Result<()> {
        if let Some(feed) = self.feed.as_mut() {
            let line = format!(
                "{} RETRY {} connection {} exchange {} ({} {}) → {}: {}",
                short_time(c.at),
                c.kind,
                c.conn,
                c.index,
                c.about.method,
                c.about.target,
                c.server,
                c.story(None)
            );
            let _ = writeln!(feed, "{line}").and_then(|()| feed.flush());
        }
        Ok(())
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        let w = &mut self.w;
        let span = match (s.first_ts, s.last_ts) {
            (Some(a), Some(b)) => format!("{a} → {b}"),
            _ => "no connections".into(),
        };
        writeln!(
            w,
            "gatescope: {} packets ({} TCP), {} connections, {} exchanges, {} error(s), {} warning(s)\ncapture: {span}",
            s.read.packets,
            s.read.tcp_packets,
            s.connections,
            s.exchanges,
            s.errors(),
            s.by_severity.get(&Severity::Warning).copied().unwrap_or(0),
        )?;
        if !s.findings.is_empty() {
            let mut b = Builder::default();
            b.push_record([
                "finding", "severity", "count", "when", "nginx", "HAProxy", "Envoy",
            ]);
            for (&(k, sev), n) in &s.by_kind_severity {
                let when = match s.finding_span.get(&(k, sev)) {
                    Some(&(first, last)) if clock(first) != clock(last) => {
                        format!("{}–{}", clock(first), clock(last))
                    }
                    Some(&(first, _)) => clock(first),
                    None => "-".into(),
                };
                let h = k.hint();
                let nginx = if h.nginx_status > 0 {
                    h.nginx_status.to_string()
                } else {
                    "passes it".into()
                };
                b.push_record([
                    k.name().to_string(),
                    sev.as_str().to_string(),
                    n.to_string(),
                    when,
                    nginx,
                    h.haproxy.to_string(),
                    h.envoy.to_string(),
                ]);
            }
            let wrapped = table_with(b, |t| {
                t.modify(
                    Columns::new(5..7),
                    Width::wrap(GATEWAY_COLUMN).keep_words(true),
                );
            });
            writeln!(w, "\n{wrapped}")?;
            write_timeline(w, &s.timeline)?;
        } else {
            writeln!(w, "\nno findings")?;
        }
        if !s.backends.is_empty() {
            let mut b = Builder::default();
            b.push_record([
                "backend",
                "conns",
                "exchanges",
                "errors",
                "warnings",
                "ttfb p50",
                "p95",
                "p99",
                "max",
                "findings",
            ]);
            for (addr, st) in &s.backends {
                let q = |p: f64| ms(st.ttfb_us.quantile(p).map(|u| u as f64 / 1000.0));
                b.push_record([
                    addr.to_string(),
                    st.connections.to_string(),
                    st.exchanges.to_string(),
                    st.errors.to_string(),
                    st.warnings.to_string(),
                    q(0.5),
                    q(0.95),
                    q(0.99),
                    ms((st.ttfb_us.n > 0).then(|| st.ttfb_us.max as f64 / 1000.0)),
                    st.findings
                        .iter()
                        .map(|(k, n)| format!("{k} ×{n}"))
                        .collect::<Vec<_>>()
                        // One per line: a backend with many kinds of findings would
                        // otherwise make a row hundreds of characters wide.
                        .join("\n"),
                ]);
            }
            writeln!(w, "\n{}", table(b))?;
        }
        let notes = s.completeness_notes();
        for e in &s.input_errors {
            writeln!(w, "input error: {e}")?;
        }
        for n in notes {
            writeln!(w, "note: {n}")?;
        }
        let timers = s.timer_patterns();
        if !timers.is_empty() {
            writeln!(w, "\ntimeouts:")?;
            for t in &timers {
                wrap_lines(w, &t.message)?;
            }
        }
        if let Some(m) = s.retries.message() {
            writeln!(w, "\nretries:")?;
            wrap_lines(w, &m)?;
        }
        if !s.findings.is_empty() {
            write_next_steps(w, s)?;
        }
        // Worst first (errors, then warnings), then in the order connections started.
        self.done
            .sort_by(|(c1, b1), (c2, b2)| worst(b2).cmp(&worst(b1)).then(c1.id.cmp(&c2.id)));
        for (c, b) in &self.done {
            write_block(w, c, b, s)?;
        }
        if self.more_blocks > 0 {
            writeln!(
                w,
                "\n… and {} more connection(s) with findings; use --format json for all of them",
                self.more_blocks
            )?;
        }
        w.flush()
    }
}

/// The incident's shape: errors and warnings per time bucket beside the exchanges, one
/// column per bucket — when there are findings over more than one bucket.
fn write_timeline<W: Write>(w: &mut W, t: &crate::timeline::Timeline) -> io::Result<()> {
    use crate::timeline::{sparkline, Series};
    let Some((start, all)) = t.series(Series::Exchanges) else {
        return Ok(());
    };
    if all.len() < 2 || !(t.has(Series::Errors) || t.has(Series::Warnings)) {
        return Ok(());
    }
    let width = t.width_s();
    let end = crate::time::Ts(start.0 + all.len() as i64 * width * 1_000_000);
    let unit = [(604_800, "week"), (86_400, "d"), (3_600, "h"), (60, "min")]
        .into_iter()
        .find(|(u, _)| width % u == 0)
        .map_or(format!("{width} s"), |(u, name)| {
            format!("{} {name}", width / u)
        });
    writeln!(
        w,
        "\ntimeline ({unit} per column, {} → {}):",
        clock(start),
        clock(end)
    )?;
    for series in Series::ALL {
        let Some((_, counts)) = t.series(series).filter(|_| t.has(series)) else {
            continue;
        };
        let max = counts.iter().copied().max().unwrap_or(0);
        writeln!(
            w,
            "  {:<9} │{}│ max {max} per column",
            series.name(),
            sparkline(&counts)
        )?;
    }
    Ok(())
}

/// A paragraph wrapped to 96 columns, its first line indented two spaces, the rest four.
fn wrap_lines<W: Write>(w: &mut W, text: &str) -> io::Result<()> {
    let text = tabled::settings::width::Wrap::wrap(text, 96, true);
    for (i, line) in text.lines().map(str::trim).enumerate() {
        let lead = if i == 0 { "  " } else { "    " };
        writeln!(w, "{lead}{line}")?;
    }
    Ok(())
}

/// Width of the "what to check next" text, after the kind's name.
const NEXT_STEP_WIDTH: usize = 72;

/// For each kind found, errors first, what to look at next, wrapped under its name.
fn write_next_steps<W: Write>(w: &mut W, s: &Summary) -> io::Result<()> {
    let mut kinds: Vec<(Severity, crate::findings::Kind)> = Vec::new();
    for &(k, sev) in s.by_kind_severity.keys() {
        match kinds.iter_mut().find(|(_, seen)| *seen == k) {
            Some(e) => e.0 = e.0.max(sev),
            None => kinds.push((sev, k)),
        }
    }
    kinds.sort_by_key(|&(sev, _)| std::cmp::Reverse(sev));
    let name_width = kinds.iter().map(|(_, k)| k.name().len()).max().unwrap_or(0);
    writeln!(w, "\nwhat to check next:")?;
    for (_, k) in kinds {
        let text = tabled::settings::width::Wrap::wrap(k.next_step(), NEXT_STEP_WIDTH, true);
        for (i, line) in text.lines().map(str::trim).enumerate() {
            let name = if i == 0 { k.name() } else { "" };
            writeln!(w, "  {name:<name_width$}  {line}")?;
        }
    }
    Ok(())
}

/// The most severe finding of a block.
fn worst(b: &Block) -> Option<Severity> {
    b.findings.iter().map(|f| f.severity).max()
}

fn write_block<W: Write>(w: &mut W, c: &Connection, b: &Block, s: &Summary) -> io::Result<()> {
    writeln!(
        w,
        "\n── connection {}  {} → {}  {} – {}  {}{}{}",
        c.id,
        c.client,
        c.server,
        short_time(c.start),
        short_time(c.end),
        c.close.describe(),
        // Only a close that could be a keep-alive timeout (one the summary's timers count):
        // a close right after the last response is the end of a short-lived connection.
        match &c.idle_close {
            Some(i) if i.idle_ms >= crate::summary::MIN_TIMER_MS => format!(
                "  ({} closed it after {:.1} s idle)",
                match i.by {
                    crate::record::Side::Server => "backend",
                    crate::record::Side::Client => "proxy",
                },
                i.idle_ms / 1000.0
            ),
            _ => String::new(),
        },
        match (&c.resumes, c.midstream) {
            (Some(r), _) => format!(
                "  (resumes connection {} after {:.1} s idle)",
                r.conn,
                r.idle_ms / 1000.0
            ),
            (None, true) => "  (picked up mid-stream)".to_string(),
            (None, false) => String::new(),
        }
    )?;
    writeln!(
        w,
        "   {} packets, {} B to server, {} B to client{}",
        c.packets,
        c.bytes_to_server,
        c.bytes_to_client,
        if c.gap_bytes > 0 {
            format!(", {} B missing from the capture", c.gap_bytes)
        } else {
            String::new()
        }
    )?;
    writeln!(
        w,
        "   wireshark: {}",
        super::wireshark_filter(&c.client, &c.server)
    )?;
    if !b.exchanges.is_empty() {
        let mut t = Builder::default();
        t.push_record([
            "#",
            "method",
            "target",
            "status",
            "first byte",
            "total",
            "req B",
            "resp B",
            "outcome",
        ]);
        for e in &b.exchanges {
            let outcome = serde_json::to_value(e.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            t.push_record([
                e.index.to_string(),
                e.method.clone().unwrap_or_else(|| "-".into()),
                e.target.clone().unwrap_or_else(|| "-".into()),
                e.status.map_or("-".into(), |s| s.to_string()),
                ms(e.ttfb_ms),
                // Request's first byte to response's last (nginx's $upstream_response_time,
                // less the connect): what a slow body download adds after the first byte.
                ms(e.total_ms),
                e.request_bytes.to_string(),
                e.response_bytes.to_string(),
                outcome,
            ]);
        }
        let t = table_with(t, |t| {
            t.modify(Columns::one(2), Width::truncate(TARGET_COLUMN).suffix("…"));
        });
        writeln!(w, "{}", indent(&t, "   "))?;
        if b.more_exchanges > 0 {
            writeln!(w, "   … {} more exchange(s)", b.more_exchanges)?;
        }
    }
    for f in &b.findings {
        let sev = f.severity.as_str().to_uppercase();
        let ex = f
            .exchange
            .map_or(String::new(), |i| format!(" exchange {i}"));
        let low = if f.confidence == crate::findings::Confidence::Low {
            " [low confidence: capture gap]"
        } else {
            ""
        };
        writeln!(
            w,
            "   {sev} {}{ex} at {} (frame {}){low}\n      {}",
            f.kind,
            short_time(f.ts),
            f.frame,
            f.message
        )?;
        if !f.evidence.is_empty() {
            let ev: Vec<String> = f
                .evidence
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}=\"{s}\""),
                    other => format!("{k}={other}"),
                })
                .collect();
            writeln!(w, "      evidence: {}", ev.join(" "))?;
        }
        let h = f.hint;
        let status = if h.nginx_status > 0 {
            format!(" → {}", h.nginx_status)
        } else {
            String::new()
        };
        // The gateways' words on lines of their own: nginx's error-log line alone is often
        // longer than a terminal.
        writeln!(
            w,
            "      nginx:   {}{status}\n      HAProxy: {} · Envoy: {}",
            h.nginx, h.haproxy, h.envoy
        )?;
        let retry = f
            .exchange
            .filter(|_| crate::retries::retryable(f.kind))
            .and_then(|i| s.retries.describe(f.conn, i));
        if let Some(r) = retry {
            writeln!(w, "      retry:   {r}")?;
        }
    }
    if b.more_findings > 0 {
        writeln!(w, "   … {} more finding(s)", b.more_findings)?;
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::findings::{Confidence, Kind};
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test can still read after handing it over.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().map_or(Ok(0), |mut v| {
                v.extend_from_slice(b);
                Ok(b.len())
            })
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            self.0
                .lock()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default()
        }
    }

    fn finding(kind: Kind, severity: Severity) -> Record {
        Record::Finding(Finding {
            kind,
            severity,
            confidence: Confidence::High,
            conn: 7,
            exchange: Some(2),
            ts: Ts(1_768_471_204_905_080),
            frame: 75,
            client: "10.0.0.1:40147".parse().unwrap_or_else(|_| unreachable!()),
            server: "10.0.0.2:8080".parse().unwrap_or_else(|_| unreachable!()),
            method: Some("GET".into()),
            target: Some("/api/users/2".into()),
            status: None,
            message: "request sent on a reused keep-alive connection".into(),
            evidence: serde_json::Map::new(),
            hint: kind.hint(),
            next_step: kind.next_step(),
        })
    }

    /// Live: an error shows on the feed the moment it is found, long before the report;
    /// info findings do not.
    #[test]
    fn a_live_feed_shows_errors_and_warnings_as_they_are_found() {
        let (report, feed) = (Shared::default(), Shared::default());
        let mut t = TableReport::new(report.clone(), false).with_feed(Box::new(feed.clone()));
        t.record(&finding(Kind::KeepaliveRace, Severity::Error))
            .unwrap_or_else(|e| panic!("{e}"));
        t.record(&finding(Kind::BackendErrorStatus, Severity::Info))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (feed.text(), report.text()),
            (
                "10:00:04.905080 ERROR keepalive_race 10.0.0.1:40147 → 10.0.0.2:8080 exchange 2 (GET /api/users/2): request sent on a reused keep-alive connection\n".to_string(),
                String::new()
            )
        );
    }

    /// Live: a race the proxy sent again and got answered shows as a RETRY line after it.
    #[test]
    fn a_live_feed_says_when_a_retry_answered_a_failed_request() {
        use crate::record::Outcome;
        use crate::retries::{About, Attempt, Chain, Fate};
        let (report, feed) = (Shared::default(), Shared::default());
        let mut t = TableReport::new(report.clone(), false).with_feed(Box::new(feed.clone()));
        let chain = Chain {
            conn: 1,
            index: 2,
            kind: Kind::KeepaliveRace,
            about: About::new(
                "10.0.0.1:40147".parse().unwrap_or_else(|e| panic!("{e}")),
                "GET",
                "/api/users/2",
            ),
            server: "10.0.0.2:8080".parse().unwrap_or_else(|e| panic!("{e}")),
            at: Ts(1_768_471_204_905_080),
            attempts: vec![Attempt {
                conn: 11,
                index: 1,
                server: "10.0.0.3:8080".parse().unwrap_or_else(|e| panic!("{e}")),
                after_ms: 0.47,
                outcome: Outcome::Complete,
                status: Some(200),
            }],
            more_attempts: 0,
            fate: Fate::Answered(Some(200)),
        };
        t.retry(&chain).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            feed.text(),
            "10:00:04.905080 RETRY keepalive_race connection 1 exchange 2 (GET /api/users/2) → 10.0.0.2:8080: sent again 0.5 ms later on connection 11 exchange 1 to 10.0.0.3:8080: answered 200: the client most likely got that\n"
        );
    }
}
