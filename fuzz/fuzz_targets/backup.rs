#![no_main]
//! A backup file: header, state and audit records, past a valid checksum.
//! The body is `warrant::fuzzing::backup`, which the corpus replay test runs too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| warrant::fuzzing::backup(data));
