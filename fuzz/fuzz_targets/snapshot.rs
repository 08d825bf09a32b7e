#![no_main]
//! A snapshot: the state's encoding or a whole snapshot file, then commands applied to it.
//! The body is `warrant::fuzzing::snapshot`, which the corpus replay test runs too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| warrant::fuzzing::snapshot(data));
