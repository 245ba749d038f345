//! Puts the commit Herald was built from into the binary (`herald --version`), from git when the
//! source is a checkout, else from `HERALD_COMMIT` (a packager's), else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HERALD_COMMIT");
    // A new commit moves HEAD or the branch it names (or packed-refs after a gc).
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("HERALD_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !commit.is_empty()).then_some(commit)
    });
    println!("cargo:rustc-env=HERALD_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
