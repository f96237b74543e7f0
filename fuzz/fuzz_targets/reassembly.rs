//! `cargo fuzz run reassembly`: see `gatescope::fuzzing::reassembly` for the input format and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatescope::fuzzing::reassembly(data);
});
