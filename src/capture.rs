//! Packet sources through libpcap (the `pcap` crate): capture files (pcap and pcapng, `-` for
//! standard input) and live interfaces. Errors name the file and the record so a user knows
//! what was lost and where.

use crate::decode::linktype;
use crate::pipeline::Analyzer;
use crate::time::Ts;

/// Reads one capture file into the analyzer. Returns an error line (naming the file and the
/// record) if the file could not be opened or was cut short; the packets read before the
/// problem have been analysed either way.
pub fn read_file(path: &str, filter: Option<&str>, analyzer: &mut Analyzer) -> Result<u64, String> {
    let shown = if path == "-" { "<stdin>" } else { path };
    if path != "-" {
        match std::fs::metadata(path) {
            Err(e) => return Err(format!("{shown}: cannot open: {e}")),
            Ok(m) if m.is_dir() => {
                return Err(format!("{shown}: is a directory, not a capture file"))
            }
            Ok(m) if m.len() == 0 => {
                return Err(format!("{shown}: empty file (0 bytes): not a capture"))
            }
            Ok(_) => {}
        }
    }
    let mut cap = pcap::Capture::from_file(path).map_err(|e| {
        format!("{shown}: not a readable pcap/pcapng capture ({e}); check that it was written by tcpdump -w or dumpcap")
    })?;
    let link = cap.get_datalink().0;
    if !linktype::supported(link) {
        let name = cap
            .get_datalink()
            .get_name()
            .unwrap_or_else(|_| "unknown".into());
        return Err(format!(
            "{shown}: unsupported link type {link} ({name}); gatescope decodes Ethernet, Linux cooked (-i any), raw IP and BSD loopback captures"
        ));
    }
    if let Some(f) = filter {
        cap.filter(f, true)
            .map_err(|e| format!("invalid filter '{f}': {e}"))?;
    }
    let mut records = 0u64;
    loop {
        if analyzer.output_failed() {
            return Ok(records);
        }
        match cap.next_packet() {
            Ok(p) => {
                records += 1;
                let ts = Ts::from_timeval(p.header.ts.tv_sec, p.header.ts.tv_usec);
                analyzer.packet(link, ts, p.data, p.header.len);
            }
            Err(pcap::Error::NoMorePackets) => return Ok(records),
            Err(pcap::Error::TimeoutExpired) => continue,
            Err(e) => {
                return Err(format!(
                    "{shown}: stopped after record {records}: {e} (the file is truncated or corrupt; results up to that record are reported)"
                ))
            }
        }
    }
}
