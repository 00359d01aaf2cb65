//! The files of `testdata/` (each with a `.txt` saying what it holds and the ffmpeg command that
//! made it), read for the unit tests in one place.

use std::path::PathBuf;

/// Where `testdata/{name}` is.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// The file's bytes, or `None`, said on stderr, when it is missing (the test then skips).
pub fn read(name: &str) -> Option<Vec<u8>> {
    let path = path(name);
    let data = std::fs::read(&path).ok();
    if data.is_none() {
        eprintln!("skipping: {} not found", path.display());
    }
    data
}

/// The file's bytes, for a test that cannot do without it (the file is in the repository).
pub fn bytes(name: &str) -> Vec<u8> {
    read(name).unwrap_or_else(|| panic!("testdata/{name} is part of the repository"))
}
