//! Puts the commit Herald was built from into the binary (`herald --version`), from git when the
//! source is a checkout, else from `BUILT_FROM_COMMIT` (a packager's), else `unknown`.

//! The name has no `HERALD_` prefix: `cargo run` passes the build script's variables to the
//! program, and Herald reads every `HERALD_` variable as a configuration key.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BUILT_FROM_COMMIT");
    // A new commit moves HEAD or the branch it names (or packed-refs after a gc).
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("BUILT_FROM_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !commit.is_empty()).then_some(commit)
    });
    println!("cargo:rustc-env=BUILT_FROM_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
