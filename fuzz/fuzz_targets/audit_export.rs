#![no_main]
//! An audit export (JSON lines) read and its chain verified.
//! The body is `warrant::fuzzing::audit_export`, which the corpus replay test runs too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| warrant::fuzzing::audit_export(data));
