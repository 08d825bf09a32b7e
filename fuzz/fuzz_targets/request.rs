#![no_main]
//! A client request (protobuf, the call picked by the first byte) through the call's checks into a command, applied to a state.
//! The body is `warrant::fuzzing::request`, which the corpus replay test runs too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| warrant::fuzzing::request(data));
