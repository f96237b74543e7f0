//! `cargo fuzz run h1`: see `gatescope::fuzzing::h1` for the input format and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatescope::fuzzing::h1(data);
});
