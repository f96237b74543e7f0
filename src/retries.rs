//! Did the client see the failure? A proxy sends a failed request again when it can: nginx's
//! `proxy_next_upstream` (by default on a connection error or a timeout, and once more for a
//! kept-alive connection that failed), HAProxy's `retry-on`, Envoy's retry policy. The
//! backend's failure is on the wire either way; whether the client got a 502 depends on what
//! the next attempt got. So the failures a retry could follow (those before any response
//! byte reached the proxy, the malformed heads, the timeouts) are matched with the same
//! request — method and target — that the same proxy address sent on another connection
//! soon after, and each failed request ends as *answered* by a later attempt (with its
//! status), *failed again*, or *not sent again* on any connection in the capture.
//!
//! Matching runs on the writing thread over the records in output order, so it is the same
//! for any number of threads. It is bounded: a failure waits for its retry at most
//! [`KEEP`] of packet time, at most [`MAX_OPEN`] wait at once, and [`MAX_LISTED`] chains are
//! kept in detail (the rest are counted).

use crate::findings::Kind;
use crate::record::{ConnId, Outcome};
use crate::time::Ts;
use rustc_hash::{FxHashMap, FxHasher};
use std::collections::{BTreeMap, VecDeque};
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

/// A retry is the same request sent within this long after the failure was on the wire.
/// nginx and HAProxy's layer-7 retries go out at once; Envoy backs off 25-250 ms by default.
pub const WINDOW_US: i64 = 2_000_000;

/// How long (packet time) a failure waits for the record of its retry: a retry's exchange
/// is written when its response ends, which a slow backend makes late.
const KEEP: i64 = 300_000_000;

/// Failures waiting at once; past this the oldest is given up on (counted as untracked).
pub const MAX_OPEN: usize = 65_536;

/// Chains kept in detail for the reports (the first ones, in output order).
pub const MAX_LISTED: usize = 1000;

/// Retries followed per chain (nginx's `proxy_next_upstream_tries` is unlimited by default;
/// past this, attempts are counted, not listed).
const MAX_ATTEMPTS_LISTED: usize = 8;

/// Bytes of a failed request's target kept for its `retry` record and the summary's
/// chains: up to [`MAX_OPEN`] requests wait at once, so a long target is cut (and marked).
pub const TARGET_KEPT: usize = 256;

/// Who sent a failed request and what it asked for: so that its `retry` record is a
/// self-contained event for a log pipeline (no join with the finding record needed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct About {
    pub client: SocketAddr,
    pub method: String,
    /// At most [`TARGET_KEPT`] bytes, then `…`.
    pub target: String,
}

impl About {
    pub fn new(client: SocketAddr, method: &str, target: &str) -> About {
        let target = if target.len() > TARGET_KEPT {
            let mut end = TARGET_KEPT;
            while !target.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", target.get(..end).unwrap_or_default())
        } else {
            target.to_string()
        };
        About {
            client,
            method: method.to_string(),
            target,
        }
    }
}

/// Identifies a request the proxy may send again: its method and target, hashed.
pub fn request_key(method: &str, target: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(method.as_bytes());
    h.write_u8(0xff);
    h.write(target.as_bytes());
    h.finish()
}

/// The failures after which a proxy can still send the request elsewhere: nothing of the
/// response has gone to the client yet (nginx: "only possible if nothing has been sent to a
/// client yet"). A body cut short is not among them: its head was passed on.
pub fn retryable(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ResetBeforeResponse
            | Kind::ClosedBeforeResponse
            | Kind::KeepaliveRace
            | Kind::TruncatedHead
            | Kind::MalformedStatusLine
            | Kind::MalformedHeader
            | Kind::HeadTooLarge
            | Kind::InvalidContentLength
            | Kind::DuplicateContentLength
            | Kind::ContentLengthWithChunked
            | Kind::UnsupportedTransferEncoding
            | Kind::ResetDuringRequest
            | Kind::AbandonedByClient
            | Kind::BackendErrorStatus
    )
}

/// One request on one connection, as the matcher sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    pub conn: ConnId,
    pub index: u32,
    /// The proxy's address: the client end of the connection.
    pub proxy: IpAddr,
    /// [`request_key`] of its method and target.
    pub key: u64,
}

/// An attempt after the first, as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub conn: ConnId,
    pub index: u32,
    pub server: SocketAddr,
    /// From the failure before it to this attempt's request.
    pub after_ms: f64,
    pub outcome: Outcome,
    pub status: Option<u16>,
}

/// How a failed request ended, over all its attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// A later attempt got a whole response (with this status): most likely what the client
    /// got.
    Answered(Option<u16>),
    /// Every later attempt failed too.
    FailedAgain,
    /// No attempt followed on any connection in the capture: the client got the gateway's
    /// error (or the retry went somewhere the capture does not show).
    NotRetried,
    /// The last attempt was still in flight, or lost in a capture gap, when the capture
    /// ended.
    Unknown,
}

impl Fate {
    pub fn name(self) -> &'static str {
        match self {
            Fate::Answered(_) => "answered",
            Fate::FailedAgain => "failed_again",
            Fate::NotRetried => "not_retried",
            Fate::Unknown => "unknown",
        }
    }
}

/// A failed request and what became of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub conn: ConnId,
    pub index: u32,
    pub kind: Kind,
    /// The failed request.
    pub about: About,
    /// The backend of the first failure.
    pub server: SocketAddr,
    pub at: Ts,
    pub attempts: Vec<Attempt>,
    /// Attempts beyond those listed.
    pub more_attempts: u32,
    pub fate: Fate,
}

impl Chain {
    /// The chain as a JSON object: the summary's `chains` entries, and (with `"type"`) the
    /// `retry` record.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.view(None)).unwrap_or_default()
    }

    fn view(&self, tag: Option<&'static str>) -> ChainJson<'_> {
        ChainJson {
            tag,
            conn: self.conn,
            exchange: self.index,
            kind: self.kind.name(),
            ts: self.at.to_string(),
            client: self.about.client.to_string(),
            server: self.server.to_string(),
            method: &self.about.method,
            target: &self.about.target,
            fate: self.fate.name(),
            status: match self.fate {
                Fate::Answered(s) => s,
                _ => None,
            },
            attempts: self
                .attempts
                .iter()
                .map(|a| AttemptJson {
                    conn: a.conn,
                    exchange: a.index,
                    server: a.server.to_string(),
                    after_ms: a.after_ms,
                    outcome: a.outcome,
                    status: a.status,
                })
                .collect(),
            more_attempts: self.more_attempts,
        }
    }

    /// The `retry` record, to serialise.
    pub fn record(&self) -> impl serde::Serialize + '_ {
        self.view(Some("retry"))
    }

    /// What became of the request after its first failure (`None`) or after its attempt
    /// at `pos` in [`Chain::attempts`], in words.
    pub fn story(&self, pos: Option<usize>) -> String {
        let after = match pos {
            Some(p) => self.attempts.get(p + 1..).unwrap_or_default(),
            None => &self.attempts[..],
        };
        let of = match pos {
            Some(p) => format!(
                "attempt {} of the request that failed first on connection {} exchange {}; ",
                p + 2,
                self.conn,
                self.index
            ),
            None => String::new(),
        };
        let Some(next) = after.first() else {
            return format!(
                "{of}not sent again on any connection in the capture: this failure reached the client"
            );
        };
        let fate = match self.fate {
            Fate::Answered(s) => format!(
                "answered {}: the client most likely got that",
                s.map_or("without a status".to_string(), |s| s.to_string())
            ),
            Fate::FailedAgain => "failed again: the client got the gateway's error".into(),
            Fate::Unknown => "no answer before the capture ended".into(),
            Fate::NotRetried => String::new(),
        };
        let more = match after.len() as u32 + self.more_attempts {
            1 => String::new(),
            k => format!(" ({k} attempts in all after this one)"),
        };
        format!(
            "{of}sent again {:.1} ms later on connection {} exchange {} to {}{more}: {fate}",
            next.after_ms, next.conn, next.index, next.server
        )
    }
}

/// A chain as written (field order as in the other records: `type` first).
#[derive(serde::Serialize)]
struct ChainJson<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    tag: Option<&'static str>,
    conn: ConnId,
    exchange: u32,
    kind: &'a str,
    ts: String,
    client: String,
    server: String,
    method: &'a str,
    target: &'a str,
    fate: &'static str,
    status: Option<u16>,
    attempts: Vec<AttemptJson>,
    more_attempts: u32,
}

#[derive(serde::Serialize)]
struct AttemptJson {
    conn: ConnId,
    exchange: u32,
    server: String,
    after_ms: f64,
    outcome: Outcome,
    status: Option<u16>,
}

/// A failure waiting for its retry.
#[derive(Clone, Debug)]
struct Open {
    /// The last failed attempt (the first failure, or a retry that failed too).
    last: Request,
    /// When the last attempt failed (or, until its finding comes, its request started).
    at: Ts,
    chain: Chain,
    /// The last attempt got a whole response, with this status (a 503 passed on can be
    /// sent again too, with `proxy_next_upstream http_503`; if it is not, it is the answer).
    answered: Option<Option<u16>>,
}

/// The matcher; its totals and listed chains go into the summary.
#[derive(Clone, Debug, Default)]
pub struct Retries {
    open: FxHashMap<u64, Open>,
    /// Open failures by proxy and request, oldest first.
    by_request: FxHashMap<(IpAddr, u64), VecDeque<u64>>,
    /// Open failures by their last attempt (conn, exchange).
    by_attempt: FxHashMap<(ConnId, u32), u64>,
    /// Open failures in the order they opened, to give up on those past [`KEEP`].
    order: VecDeque<(Ts, u64)>,
    next_id: u64,
    /// The latest packet time seen.
    now: Option<Ts>,
    pub fates: BTreeMap<Fate, u64>,
    /// Failed requests given up on without an answer because [`MAX_OPEN`] were waiting.
    pub untracked: u64,
    /// Attempts after the first, over all chains.
    pub attempts: u64,
    pub listed: Vec<Chain>,
    /// Chains ended since [`Retries::take_closed`] last took them: each is written as a
    /// `retry` record right after the record that ended it.
    closed: Vec<Chain>,
}

impl Retries {
    fn advance(&mut self, t: Ts) {
        if self.now.is_none_or(|n| t > n) {
            self.now = Some(t);
        }
        let Some(now) = self.now else { return };
        while let Some(&(opened, id)) = self.order.front() {
            let live = self.open.contains_key(&id);
            // (Merged chains leave their entries here: bounded too.)
            if live
                && opened.0.saturating_add(KEEP) > now.0
                && self.open.len() <= MAX_OPEN
                && self.order.len() <= 2 * MAX_OPEN
            {
                break;
            }
            self.order.pop_front();
            if live {
                // Not past its time: given up on for room.
                let evicted = opened.0.saturating_add(KEEP) > now.0;
                self.close(id, None, evicted);
            }
        }
    }

    /// A finding: if it is a failure a retry can follow, the request waits for its retry.
    pub fn failure(&mut self, kind: Kind, req: Request, about: &About, server: SocketAddr, at: Ts) {
        self.advance(at);
        if !retryable(kind) {
            return;
        }
        if let Some(&id) = self.by_attempt.get(&(req.conn, req.index)) {
            // A second finding on the same attempt, or the finding of a retry already
            // matched through its exchange: the failure time is the finding's.
            if let Some(o) = self.open.get_mut(&id) {
                if o.last == req && !o.chain.attempts.is_empty() && o.at < at {
                    o.at = at;
                }
            }
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let chain = Chain {
            conn: req.conn,
            index: req.index,
            kind,
            about: about.clone(),
            server,
            at,
            attempts: Vec::new(),
            more_attempts: 0,
            fate: Fate::NotRetried,
        };
        self.open.insert(
            id,
            Open {
                last: req,
                at,
                chain,
                answered: None,
            },
        );
        self.by_request
            .entry((req.proxy, req.key))
            .or_default()
            .push_back(id);
        self.by_attempt.insert((req.conn, req.index), id);
        self.order.push_back((at, id));
        self.advance(at);
    }

    /// An exchange record: a retry of a waiting failure if it is the same request from the
    /// same proxy on another connection, sent after the failure and within [`WINDOW_US`].
    pub fn exchange(
        &mut self,
        req: Request,
        server: SocketAddr,
        start: Option<Ts>,
        outcome: Outcome,
        status: Option<u16>,
    ) {
        let Some(start) = start else { return };
        self.advance(start);
        let own = self.by_attempt.get(&(req.conn, req.index)).copied();
        let Some(queue) = self.by_request.get(&(req.proxy, req.key)) else {
            return;
        };
        let found = queue.iter().copied().find(|id| {
            self.open.get(id).is_some_and(|o| {
                o.last.conn != req.conn
                    && start >= o.at
                    && start.0 <= o.at.0.saturating_add(WINDOW_US)
            })
        });
        let Some(id) = found else { return };
        self.attempts += 1;
        let Some(o) = self.open.get_mut(&id) else {
            return;
        };
        let attempt = Attempt {
            conn: req.conn,
            index: req.index,
            server,
            after_ms: start.ms_since(o.at),
            outcome,
            status,
        };
        if o.chain.attempts.len() < MAX_ATTEMPTS_LISTED {
            o.chain.attempts.push(attempt);
        } else {
            o.chain.more_attempts += 1;
        }
        // This attempt failed too if its own failure is waiting (its finding came first)
        // or its exchange did not complete.
        let failed_too = own.is_some() || !matches!(outcome, Outcome::Complete);
        if !failed_too {
            self.close(id, Some(Fate::Answered(status)), false);
            return;
        }
        if matches!(outcome, Outcome::InFlight | Outcome::CaptureGap) {
            self.close(id, Some(Fate::Unknown), false);
            if let Some(own) = own {
                self.forget(own);
            }
            return;
        }
        // The chain goes on from this attempt: a later retry follows it.
        o.answered = matches!(outcome, Outcome::Complete).then_some(status);
        let prev = o.last;
        o.last = req;
        o.at = start;
        self.by_attempt.remove(&(prev.conn, prev.index));
        if let Some(own) = own.filter(|&own| own != id) {
            // The attempt's finding opened a chain of its own: it is this one's, and its
            // failure time (the finding's) is the chain's.
            if let Some(mine) = self.forget(own) {
                if let Some(o) = self.open.get_mut(&id) {
                    o.at = mine.at;
                    // (A retry of it matched already, should its record have come first.)
                    o.last = mine.last;
                    o.chain.more_attempts += mine.chain.more_attempts;
                    for a in mine.chain.attempts {
                        if o.chain.attempts.len() < MAX_ATTEMPTS_LISTED {
                            o.chain.attempts.push(a);
                        } else {
                            o.chain.more_attempts += 1;
                        }
                    }
                }
            }
        }
        if let Some(o) = self.open.get(&id) {
            self.by_attempt.insert((o.last.conn, o.last.index), id);
        }
    }

    /// Removes an open failure from the lookups.
    fn unlink(&mut self, id: u64, o: &Open) {
        let attempt = (o.last.conn, o.last.index);
        if self.by_attempt.get(&attempt) == Some(&id) {
            self.by_attempt.remove(&attempt);
        }
        let request = (o.last.proxy, o.last.key);
        if let Some(q) = self.by_request.get_mut(&request) {
            q.retain(|&x| x != id);
            if q.is_empty() {
                self.by_request.remove(&request);
            }
        }
    }

    /// Drops an open failure without a fate (merged into another chain).
    fn forget(&mut self, id: u64) -> Option<Open> {
        let o = self.open.remove(&id)?;
        self.unlink(id, &o);
        Some(o)
    }

    /// Ends a chain: `fate`, or what its attempts say (`untracked`: given up on early).
    fn close(&mut self, id: u64, fate: Option<Fate>, untracked: bool) {
        let Some(mut o) = self.forget(id) else {
            return;
        };
        if untracked && fate.is_none() {
            self.untracked += 1;
            return;
        }
        o.chain.fate = fate.unwrap_or(match o.answered {
            _ if o.chain.attempts.is_empty() => Fate::NotRetried,
            Some(status) => Fate::Answered(status),
            None => Fate::FailedAgain,
        });
        *self.fates.entry(o.chain.fate).or_default() += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(o.chain.clone());
        }
        self.closed.push(o.chain);
    }

    /// End of input: every failure still waiting has its fate.
    pub fn finish(&mut self) {
        let mut ids: Vec<(Ts, u64)> = self.order.drain(..).collect();
        ids.sort_unstable();
        for (_, id) in ids {
            self.close(id, None, false);
        }
        // Chains still open but not in `order` cannot exist; whatever is left is closed in
        // id order for determinism.
        let mut rest: Vec<u64> = self.open.keys().copied().collect();
        rest.sort_unstable();
        for id in rest {
            self.close(id, None, false);
        }
        self.listed.sort_by_key(|c| (c.at, c.conn, c.index));
    }

    /// The chains ended since the last call, in the order they ended.
    pub fn take_closed(&mut self) -> Vec<Chain> {
        std::mem::take(&mut self.closed)
    }

    /// Failed requests with a fate.
    pub fn failed(&self) -> u64 {
        self.fates.values().sum::<u64>() + self.untracked
    }

    /// Failed requests that some later attempt answered.
    pub fn answered(&self) -> u64 {
        self.fates
            .iter()
            .filter(|(f, _)| matches!(f, Fate::Answered(_)))
            .map(|(_, n)| n)
            .sum()
    }

    /// Fate counts by name (answered ones together), for the JSON summary.
    pub fn by_fate(&self) -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for (f, n) in &self.fates {
            *m.entry(f.name()).or_default() += n;
        }
        m
    }

    /// The statuses the answering attempts got, with counts.
    pub fn answer_statuses(&self) -> BTreeMap<Option<u16>, u64> {
        let mut m = BTreeMap::new();
        for (f, n) in &self.fates {
            if let Fate::Answered(s) = f {
                *m.entry(*s).or_default() += n;
            }
        }
        m
    }
}

/// "200 ×4, 503" — statuses and how many of each (no count when one).
fn statuses(m: &BTreeMap<Option<u16>, u64>) -> String {
    m.iter()
        .map(|(s, n)| {
            let s = s.map_or("no status".to_string(), |s| s.to_string());
            if *n == 1 {
                s
            } else {
                format!("{s} ×{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Retries {
    /// What became of the failed requests, in words; `None` when there were none.
    pub fn message(&self) -> Option<String> {
        let failed = self.failed();
        if failed == 0 {
            return None;
        }
        let n = |f: Fate| self.fates.get(&f).copied().unwrap_or(0);
        let were = |k: u64| if k == 1 { "was" } else { "were" };
        let their = |k: u64| {
            if k == 1 {
                "its client"
            } else {
                "their clients"
            }
        };
        let answered = self.answered();
        let mut parts = Vec::new();
        if answered > 0 {
            parts.push(format!(
                "{answered} {} sent again by the proxy on another connection and answered ({}): {} most likely got that answer, not the failure (nginx proxy_next_upstream, HAProxy retry-on, Envoy retry_policy) — the backend failed all the same",
                were(answered),
                statuses(&self.answer_statuses()),
                their(answered)
            ));
        }
        let again = n(Fate::FailedAgain);
        if again > 0 {
            parts.push(format!(
                "{again} {} sent again and failed on every attempt: {} got the gateway's error",
                were(again),
                their(again)
            ));
        }
        let not = n(Fate::NotRetried);
        if not > 0 {
            parts.push(format!(
                "{not} {} not sent again on any connection in the capture: the failure reached {} (the gateway's 502/504, or the backend's own error status passed on), unless the proxy retried it to a backend outside the capture",
                were(not),
                their(not)
            ));
        }
        let unknown = n(Fate::Unknown);
        if unknown > 0 {
            parts.push(format!(
                "{unknown} {} sent again, but the capture ended (or lost bytes) before the answer",
                were(unknown)
            ));
        }
        if self.untracked > 0 {
            parts.push(format!(
                "{} {} not followed ({MAX_OPEN} failures were waiting for a retry at once)",
                self.untracked,
                were(self.untracked)
            ));
        }
        Some(format!(
            "{failed} failed request(s) that a proxy can retry (same method and target from the same proxy address on another connection within {} s after the failure): {}",
            WINDOW_US / 1_000_000,
            parts.join("; ")
        ))
    }

    /// What became of the request of exchange `index` on connection `conn`, if it failed
    /// and its chain is listed: one line for the report under its finding.
    pub fn describe(&self, conn: ConnId, index: u32) -> Option<String> {
        self.listed.iter().find_map(|c| {
            let pos = c
                .attempts
                .iter()
                .position(|a| a.conn == conn && a.index == index);
            (pos.is_some() || (c.conn == conn && c.index == index)).then(|| c.story(pos))
        })
    }

    /// The `"retries"` object of the JSON summary.
    pub fn to_json(&self) -> serde_json::Value {
        let chains: Vec<serde_json::Value> = self.listed.iter().map(Chain::to_json).collect();
        let fates = self.by_fate();
        let n = |k: &str| fates.get(k).copied().unwrap_or(0);
        serde_json::json!({
            "failed_requests": self.failed(),
            "answered": n("answered"),
            "failed_again": n("failed_again"),
            "not_retried": n("not_retried"),
            "unknown": n("unknown"),
            "untracked": self.untracked,
            "answer_statuses": self.answer_statuses().iter().map(|(s, n)| (s.map_or("none".to_string(), |s| s.to_string()), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
            "retry_attempts": self.attempts,
            "chains": chains,
            "chains_listed_max": MAX_LISTED,
            "message": self.message(),
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const T: i64 = 1_700_000_000_000_000;
    const PROXY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    fn server() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 2], 8080))
    }

    fn about() -> About {
        About::new(SocketAddr::new(PROXY, 40000), "GET", "/")
    }

    fn req(conn: ConnId, key: u64) -> Request {
        Request {
            conn,
            index: 1,
            proxy: PROXY,
            key,
        }
    }

    /// A failed request's target is kept to TARGET_KEPT bytes (up to MAX_OPEN wait at once),
    /// cut on a character boundary and marked.
    #[test]
    fn a_long_target_is_cut_on_a_character_boundary() {
        let target = format!("/{}é{}", "a".repeat(TARGET_KEPT - 2), "b".repeat(5000));
        let a = About::new(SocketAddr::from(([10, 0, 0, 1], 40000)), "GET", &target);
        assert_eq!(a.target, format!("/{}…", "a".repeat(TARGET_KEPT - 2)));
    }

    /// A flood of failures keeps at most MAX_OPEN waiting; the oldest beyond are counted,
    /// not followed.
    #[test]
    fn failures_beyond_the_bound_are_counted_as_untracked() {
        let mut r = Retries::default();
        let n = MAX_OPEN as u64 + 10;
        for i in 0..n {
            r.failure(
                Kind::ResetBeforeResponse,
                req(i, i),
                &about(),
                server(),
                Ts(T),
            );
        }
        let untracked_while_running = r.untracked;
        r.finish();
        assert_eq!(
            (
                untracked_while_running,
                r.failed(),
                r.open.len(),
                r.listed.len()
            ),
            (10, n, 0, MAX_LISTED)
        );
    }

    /// A failure no retry followed is settled once KEEP of packet time has passed: its
    /// record comes then, not only at the end of a long live capture.
    #[test]
    fn a_failure_is_settled_once_its_time_has_passed() {
        let mut r = Retries::default();
        r.failure(Kind::KeepaliveRace, req(1, 7), &about(), server(), Ts(T));
        r.exchange(
            req(2, 8),
            server(),
            Some(Ts(T + KEEP + 1)),
            Outcome::Complete,
            Some(200),
        );
        let closed = r.take_closed();
        assert_eq!(
            closed.iter().map(|c| (c.conn, c.fate)).collect::<Vec<_>>(),
            [(1, Fate::NotRetried)]
        );
    }

    /// A retry that failed too is followed whether its finding or its exchange record comes
    /// first: A fails, B (its retry) fails, C answers 200 — one chain, answered.
    #[test]
    fn a_chain_is_the_same_whichever_record_of_a_failed_retry_comes_first() {
        let run = |finding_first: bool| {
            let mut r = Retries::default();
            r.failure(
                Kind::ResetBeforeResponse,
                req(1, 9),
                &about(),
                server(),
                Ts(T),
            );
            let b = req(2, 9);
            let b_finding = |r: &mut Retries| {
                r.failure(
                    Kind::ResetBeforeResponse,
                    b,
                    &about(),
                    server(),
                    Ts(T + 2_000),
                )
            };
            if finding_first {
                b_finding(&mut r);
            }
            r.exchange(b, server(), Some(Ts(T + 1_000)), Outcome::NoResponse, None);
            if !finding_first {
                b_finding(&mut r);
            }
            r.exchange(
                req(3, 9),
                server(),
                Some(Ts(T + 3_000)),
                Outcome::Complete,
                Some(200),
            );
            r.finish();
            let c = r.listed.first().cloned();
            (
                r.failed(),
                c.map(|c| {
                    (
                        c.conn,
                        c.fate,
                        c.attempts.iter().map(|a| a.conn).collect::<Vec<_>>(),
                    )
                }),
            )
        };
        let want = (1, Some((1, Fate::Answered(Some(200)), vec![2, 3])));
        assert_eq!((run(true), run(false)), (want.clone(), want));
    }
}
