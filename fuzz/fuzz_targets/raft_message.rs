#![no_main]
//! A message on the Raft port, decoded as the service decodes it; an append's entries applied in order.
//! The body is `warrant::fuzzing::raft_message`, which the corpus replay test runs too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| warrant::fuzzing::raft_message(data));
