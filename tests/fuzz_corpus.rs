//! The fuzz inputs replayed through the same functions the fuzz targets call: the seeds and the
//! regressions (`fuzz/seeds/<target>/`, by name: crashes once found, fixed) and what the fuzzer
//! grew from them (`fuzz/corpus/<target>/`). Every input the fuzzer ever found interesting is a test
//! case on every run, without a fuzzing toolchain (scripts/fuzz.sh runs the fuzzer itself).

use std::path::PathBuf;

fn inputs(kind: &str, target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

fn files(dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.expect("a corpus entry").path()).collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_replays_without_a_panic() {
    for (target, run) in warrant::fuzzing::TARGETS {
        let seeds = files(&inputs("seeds", target));
        assert!(
            seeds.iter().any(|p| p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))),
            "{target}: fuzz/seeds/{target} has its seeds"
        );
        for input in seeds.iter().chain(&files(&inputs("corpus", target))) {
            let bytes = match std::fs::read(input) {
                Ok(bytes) => bytes,
                // A fuzzer running meanwhile replaces corpus files as it shrinks them.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", input.display()),
            };
            run(&bytes);
        }
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (target, _) in warrant::fuzzing::TARGETS {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&file).expect("the fuzz target file exists");
        assert!(
            text.contains(&format!("warrant::fuzzing::{target}(data)")),
            "{} calls warrant::fuzzing::{target}",
            file.display()
        );
    }
}

/// Writes the seeds (`seed-<target>-<n>`) made by the node's own encoders; run after changing an
/// encoding: `cargo test --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let mut n = std::collections::BTreeMap::<&str, usize>::new();
    for (target, bytes) in warrant::fuzzing::seeds() {
        let dir = inputs("seeds", target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        let i = n.entry(target).or_default();
        *i += 1;
        std::fs::write(dir.join(format!("seed-{i}")), bytes).expect("seed written");
    }
}
