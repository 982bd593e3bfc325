//! Where the `scold` binary is.

use std::path::{Path, PathBuf};

/// The `scold` binary the process tests run: `$SCOLD_BIN` when set, else `scold` in the
/// profile directory of the running test binary (`<target dir>/<profile>/scold`, the test
/// binary itself being in `<profile>/deps/`), so the same `CARGO_TARGET_DIR` and profile
/// are used as for the tests.
///
/// Panics, saying how to build it, when it is not there: the tests run the real binary,
/// and `cargo test` does not build the binaries of other packages.
pub fn scold_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SCOLD_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SCOLD_BIN={} is not a file: point it at a built scold binary, or unset it and \
             run `cargo build --workspace --bins` first",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps", exe.display()));
    let bin = profile_dir.join("scold");
    assert!(
        bin.is_file(),
        "the scold binary is not built at {}: run `cargo build --workspace --bins` first \
         (with the same profile and CARGO_TARGET_DIR as the tests), or set \
         SCOLD_BIN=/path/to/scold",
        bin.display()
    );
    bin
}
