//! The records the analysis produces, in the order it produces them. They are the JSON Lines
//! schema (one record per line, tagged by `"type"`) and the input of the table report.
//!
//! Records are produced as soon as they are known: a finding when it is detected, an exchange
//! when its response ends, a connection when it closes. Each carries an [`OrderKey`] so that
//! output from several worker threads can be merged into exactly the order a single thread
//! would have written.

use crate::findings::{Confidence, GatewayHint, Kind, Severity};
use crate::time::Ts;
use serde::Serialize;
use std::net::SocketAddr;

/// Identifies a connection: the frame number (1-based, as in Wireshark) of its first packet.
/// Unique within a run and independent of the number of threads.
pub type ConnId = u64;

/// Where a record sits in the output. Records are written in increasing key order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey {
    /// The frame whose processing produced the record (for records produced by a timer tick,
    /// the frame that carried the tick; at end of input, `u64::MAX`).
    pub frame: u64,
    pub conn: ConnId,
    /// Per-connection counter: the order in which the connection produced its records.
    pub seq: u32,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Finding(Finding),
    Exchange(Exchange),
    Connection(Connection),
}

impl Record {
    pub fn conn(&self) -> ConnId {
        match self {
            Record::Finding(f) => f.conn,
            Record::Exchange(e) => e.conn,
            Record::Connection(c) => c.id,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub severity: Severity,
    pub confidence: Confidence,
    pub conn: ConnId,
    /// 1-based index of the exchange on its connection, if the finding belongs to one.
    pub exchange: Option<u32>,
    pub ts: Ts,
    pub frame: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub method: Option<String>,
    pub target: Option<String>,
    pub status: Option<u16>,
    pub message: String,
    pub evidence: serde_json::Map<String, serde_json::Value>,
    pub hint: GatewayHint,
    /// What to look at next ([`Kind::next_step`]).
    pub next_step: &'static str,
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// How an exchange ended, from the gateway's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A complete response.
    Complete,
    /// No response byte before the connection ended.
    NoResponse,
    /// The response started but its head never completed.
    TruncatedHead,
    /// The response head completed, the body did not.
    TruncatedBody,
    /// The response could not be framed (malformed head or body framing).
    Invalid,
    /// The client side gave up while waiting.
    Abandoned,
    /// Bytes missing from the capture in this exchange: the outcome is unknown.
    CaptureGap,
    /// The connection was switched to another protocol (101) or tunnelled (CONNECT).
    Upgraded,
    /// The capture ended while the exchange was in flight.
    InFlight,
}

#[derive(Clone, Debug, Serialize)]
pub struct Exchange {
    pub conn: ConnId,
    pub index: u32,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub method: Option<String>,
    pub target: Option<String>,
    pub status: Option<u16>,
    pub request_start: Option<Ts>,
    pub request_end: Option<Ts>,
    pub response_start: Option<Ts>,
    pub response_head_end: Option<Ts>,
    pub response_end: Option<Ts>,
    /// Response first byte minus request last byte, in milliseconds.
    pub ttfb_ms: Option<f64>,
    /// Response last byte minus request first byte, in milliseconds (null until the
    /// response ended).
    pub total_ms: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub outcome: Outcome,
}

/// Who ended a connection, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Close {
    /// Both sides sent FIN; `first` tells who started.
    Fin {
        first: Side,
    },
    /// Only one side's FIN was seen.
    HalfClosed {
        by: Side,
    },
    Reset {
        by: Side,
    },
    /// SYN answered by RST.
    Refused,
    /// SYN never answered.
    Unanswered,
    /// SYN answered by an ICMP destination unreachable.
    Unreachable,
    /// Idle longer than `--idle-timeout` (packet time).
    IdleTimeout,
    /// Evicted to stay within `--max-connections`.
    Evicted,
    /// Still open when the capture ended.
    CaptureEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

impl Close {
    pub fn describe(&self) -> String {
        match self {
            Close::Fin { first } => format!("FIN ({} first)", first.as_str()),
            Close::HalfClosed { by } => format!("FIN from {} only", by.as_str()),
            Close::Reset { by } => format!("RST from {}", by.as_str()),
            Close::Refused => "refused (RST to SYN)".into(),
            Close::Unanswered => "SYN unanswered".into(),
            Close::Unreachable => "unreachable (ICMP to SYN)".into(),
            Close::IdleTimeout => "idle timeout".into(),
            Close::Evicted => "evicted (connection limit)".into(),
            Close::CaptureEnd => "open at capture end".into(),
        }
    }
}

/// Every top-level field name of the JSON lines (all record types and the summary):
/// `--tag` may not use them, so that a tag can never overwrite what gatescope reports.
pub const FIELDS: &[&str] = &[
    "attempts",
    "backends",
    "bytes_to_client",
    "bytes_to_server",
    "client",
    "close",
    "confidence",
    "conn",
    "connections",
    "end",
    "errors",
    "evidence",
    "exchange",
    "exchanges",
    "fate",
    "finding_times",
    "findings",
    "first_ts",
    "frame",
    "gap_bytes",
    "hint",
    "id",
    "idle_close",
    "index",
    "input_errors",
    "kind",
    "last_ts",
    "low_confidence",
    "message",
    "method",
    "midstream",
    "more_attempts",
    "next_step",
    "notes",
    "outcome",
    "packets",
    "read",
    "request_bytes",
    "request_end",
    "request_start",
    "response_bytes",
    "response_end",
    "response_head_end",
    "response_start",
    "resumes",
    "retries",
    "server",
    "severity",
    "start",
    "status",
    "target",
    "tcp",
    "ts",
    "timeline",
    "timeouts",
    "total_ms",
    "ttfb_ms",
    "type",
    "warnings",
];

/// See [`Connection::resumes`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Resumes {
    /// The earlier record's id.
    pub conn: ConnId,
    /// Time between that record's last packet and this one's first.
    pub idle_ms: f64,
}

/// See [`Connection::idle_close`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct IdleClose {
    /// Who closed (FIN or RST) first.
    pub by: Side,
    /// Time from the end of the connection's last response to that close.
    pub idle_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Connection {
    pub id: ConnId,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub start: Ts,
    pub end: Ts,
    pub close: Close,
    /// True when the handshake was not in the capture.
    pub midstream: bool,
    /// The connection this one continues: gatescope finished it for idleness
    /// (`--idle-timeout`) and the proxy reused it later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes: Option<Resumes>,
    /// The connection was closed while idle between exchanges (at least one answered, none
    /// begun): a keep-alive timeout, the backend's or the proxy's, ran this long. A backend
    /// that closes idle connections before the proxy does is what keep-alive races need.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_close: Option<IdleClose>,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
    /// Bytes missing from the capture (both directions).
    pub gap_bytes: u64,
    pub packets: u64,
    pub exchanges: u32,
    pub findings: u32,
    pub errors: u32,
}
