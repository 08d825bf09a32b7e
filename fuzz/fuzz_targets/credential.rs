#![no_main]
//! Access tokens, grant certificates, certificate identities and keys.
//! The body is `warrant::fuzzing::credential`, which the corpus replay test runs too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| warrant::fuzzing::credential(data));
