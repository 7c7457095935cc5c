//! The load tool's binary (`aether-load`, a crate of its own in the
//! workspace, `load/`), for the tests that run it (`tests/load_tool.rs`,
//! `tests/fleet.rs`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The path of `aether-load`, built beside the tests by `scripts/test`
/// (`cargo build --workspace`); fails the test if it is missing or older
/// than its sources.
pub fn path() -> PathBuf {
    // target/<profile>/deps/<test>-… -> target/<profile>/aether-load
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("aether-load");
    assert!(
        bin.exists(),
        "{} is missing: build it first (scripts/test does, or `cargo build -p aether-load`)",
        bin.display()
    );
    // `cargo test --test …` does not build the other crate's binary: a
    // binary older than its sources would test yesterday's tool.
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let sources = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("load/src");
    if let (Some(built), Some(newest)) = (built, newest_file(&sources, 3)) {
        assert!(
            newest <= built,
            "{} is older than load/src: rebuild it (`cargo build -p aether-load`)",
            bin.display()
        );
    }
    bin
}

/// The latest modification time of the files under `dir`, `depth` levels
/// down at most.
fn newest_file(dir: &Path, depth: u32) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            if depth == 0 {
                continue;
            }
            newest_file(&path, depth - 1)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}
