//! Named bounds on everything gatescope keeps in memory. State grows with open connections,
//! never with capture size; when a bound is hit gatescope says so (a `limit_reached` finding
//! and a counter in the summary) instead of growing or crashing.

/// Analysis settings that shape state and findings. One value is shared by every worker.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections tracked at once; beyond it the longest-idle one is evicted.
    pub max_connections: usize,
    /// Out-of-order bytes held per direction while waiting for a hole to fill.
    pub max_ooo_bytes: usize,
    /// Out-of-order segments held per direction.
    pub max_ooo_segments: usize,
    /// Out-of-order bytes held by all connections together; beyond it, the connection that
    /// pushes the total over sheds its buffer (its holes become capture gaps).
    pub max_ooo_total: usize,
    /// Bytes of one message head (status line + headers). Responses larger than this are
    /// `head_too_large` (nginx's proxy_buffer_size is 4 KiB on x86 by default).
    pub max_head_bytes: usize,
    /// Hard cap on bytes buffered for one head, whatever `max_head_bytes` says.
    pub head_buffer_cap: usize,
    /// Bytes of heads still being collected, all connections together; beyond it, the
    /// connection that pushes the total over gives its heads up (`limit_reached`).
    pub max_head_total: usize,
    /// Headers per message.
    pub max_headers: usize,
    /// Trailer bytes after the last chunk.
    pub max_trailer_bytes: usize,
    /// Bytes of a chunk-size line (size plus extensions).
    pub max_chunk_line: usize,
    /// Requests waiting for their responses on one connection (pipelining depth).
    pub max_pending: usize,
    /// Connections idle this long (packet time) are closed and reported.
    pub idle_timeout_us: u64,
    /// First response byte later than this after the request's last byte: `slow_first_byte`.
    pub slow_first_byte_us: u64,
    /// Print values of Authorization, Proxy-Authorization, Cookie and Set-Cookie in evidence.
    pub show_secrets: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 100_000,
            max_ooo_bytes: 256 * 1024,
            max_ooo_segments: 256,
            max_ooo_total: 64 << 20,
            max_head_bytes: 4096,
            head_buffer_cap: 64 * 1024,
            max_head_total: 64 << 20,
            max_headers: 100,
            max_trailer_bytes: 4096,
            max_chunk_line: 4096,
            max_pending: 64,
            idle_timeout_us: 300 * 1_000_000,
            slow_first_byte_us: 1_000_000,
            show_secrets: false,
        }
    }
}
