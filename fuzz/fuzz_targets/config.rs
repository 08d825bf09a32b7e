#![no_main]
//! A node's config file (TOML): parsed and validated.
//! The body is `warrant::fuzzing::config`, which the corpus replay test runs too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| warrant::fuzzing::config(data));
