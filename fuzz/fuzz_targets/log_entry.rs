#![no_main]
//! Values read back from RocksDB: log entries (applied), audit records, the node's identity.
//! The body is `warrant::fuzzing::log_entry`, which the corpus replay test runs too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| warrant::fuzzing::log_entry(data));
