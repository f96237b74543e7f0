//! Report writers: JSON Lines for machines, a table for people.

pub mod json;
pub mod table;

/// The Wireshark display filter that isolates one connection.
pub fn wireshark_filter(client: &std::net::SocketAddr, server: &std::net::SocketAddr) -> String {
    let ip = |a: &std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(_) => "ip",
        std::net::SocketAddr::V6(_) => "ipv6",
    };
    format!(
        "{}.addr=={} && tcp.port=={} && {}.addr=={} && tcp.port=={}",
        ip(client),
        client.ip(),
        client.port(),
        ip(server),
        server.ip(),
        server.port()
    )
}
