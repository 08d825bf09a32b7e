#![no_main]
//! Cedar policy text and an entities document: validated, compiled and evaluated.
//! The body is `warrant::fuzzing::policy`, which the corpus replay test runs too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| warrant::fuzzing::policy(data));
