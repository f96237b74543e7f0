//! `cargo fuzz run pcap`: see `gatescope::fuzzing::pcap` for the input format and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatescope::fuzzing::pcap(data);
});
