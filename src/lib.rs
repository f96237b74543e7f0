//! gatescope: finds, on the wire between a reverse proxy and its backends, why the gateway
//! answered 502 or 504.
//!
//! Data flows one way:
//!
//! ```text
//! capture ──► decode ──► flow (connection table) ──► reassembly ──► h1 ──► session ──► Record
//!  (pcap)    (etherparse)  (4-tuple, roles, TCP)     (per direction)  (framing)  (pairing,   (report::json,
//!                                                                               findings)   report::table)
//! ```
//!
//! `pipeline` runs that chain on one thread or shards connections over several.

pub mod capture;
pub mod cli;
pub mod decode;
pub mod findings;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod h1;
pub mod limits;
pub mod pipeline;
pub mod reassembly;
pub mod record;
pub mod report;
pub mod retries;
pub mod session;
pub mod summary;
pub mod synth;
pub mod time;
pub mod timeline;
