//! The shipped binary: the release build is stripped and small; the library builds without
//! the command line's dependencies.

use std::path::Path;

/// The release binary is stripped of debug info (a build with `debug = 1` was 35 MB).
#[test]
fn the_release_binary_is_small() {
    let bin = Path::new(env!("CARGO_BIN_EXE_rbddiff"));
    if !bin.components().any(|c| c.as_os_str() == "release") {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED: not a release build (run with --release to check the binary's size)\n",
        );
        return;
    }
    let len = std::fs::metadata(bin).unwrap().len();
    assert!(len < 15 << 20, "{} is {len} bytes", bin.display());
}

/// The CLI's dependencies are optional and behind the default feature `cli`, which the
/// binary requires.
#[test]
fn the_cli_dependencies_are_behind_a_feature() {
    let toml =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    for dep in [
        "clap",
        "clap_complete",
        "clap_mangen",
        "indicatif",
        "signal-hook",
    ] {
        let line = toml
            .lines()
            .find(|l| l.starts_with(&format!("{dep} = ")))
            .unwrap_or_else(|| panic!("{dep} not in Cargo.toml"));
        assert!(line.contains("optional = true"), "{line}");
        assert!(
            toml.contains(&format!("\"dep:{dep}\"")),
            "{dep} not in feature cli"
        );
    }
    let default = toml
        .lines()
        .find(|l| l.starts_with("default = ["))
        .expect("default features");
    assert!(default.contains("\"cli\""), "{default}");
    assert!(toml.contains("required-features = [\"cli\"]"));
    // No library module names them.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p != src.join("cli") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for name in [
                    "clap::",
                    "indicatif::",
                    "signal_hook::",
                    "clap_complete",
                    "clap_mangen",
                ] {
                    assert!(!text.contains(name), "{} uses {name}", p.display());
                }
            }
        }
    }
}
