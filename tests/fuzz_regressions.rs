//! Replays, on the stable toolchain and in every `scripts/test` run, each
//! fuzz target's seed inputs (`fuzz/seeds/<target>/`) and every input that
//! once crashed or hung it (`fuzz/regressions/<target>/`), through the same
//! functions libFuzzer drives (`aether_hub::fuzzing`). Fuzzing itself needs
//! nightly and is not part of CI: see `fuzz/README.md`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use aether_hub::fuzzing::TARGETS;

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_past_crash_runs_clean() {
    let mut failures = Vec::new();
    for (target, run) in TARGETS {
        let seeds = inputs("seeds", target);
        assert!(!seeds.is_empty(), "{target} has no seed inputs");
        for file in seeds.iter().chain(&inputs("regressions", target)) {
            let data = std::fs::read(file).expect("read a fuzz input");
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}

/// Every target has its libFuzzer entry and a folder for its regressions,
/// so a new target cannot be fuzzed without being replayed here too.
#[test]
fn every_target_is_wired_to_cargo_fuzz() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (target, _) in TARGETS {
        let entry = fuzz.join("fuzz_targets").join(format!("{target}.rs"));
        let source = std::fs::read_to_string(&entry).expect("a fuzz_targets file");
        assert!(source.contains(&format!("aether_hub::fuzzing::{target}(")));
        assert!(manifest.contains(&format!("name = \"{target}\"")));
        assert!(fuzz.join("regressions").join(target).is_dir());
    }
}
