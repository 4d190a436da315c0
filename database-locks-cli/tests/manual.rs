//! `completions`, `man` and `--version`: the built binary, no database.
#![cfg(unix)]

use std::process::{Command, Output, Stdio};

/// The subcommands every script and page must know about.
const SUBCOMMANDS: [&str; 10] = [
    "run",
    "leader",
    "list",
    "status",
    "hold",
    "release",
    "migrate",
    "metrics",
    "completions",
    "man",
];

/// The tool with `args`, pointed at no database: these commands must not need one.
fn tool(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_database-locks"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_LOCKS_URL")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start the tool: {e}"));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("scratch dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "{args:?} left {left:?} behind");
    output
}

/// Exit 0, nothing on stderr (not even the no-URL warning); stdout as text.
#[track_caller]
fn succeeds(args: &[&str]) -> String {
    let output = tool(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {output:?}");
    assert_eq!(stderr, "", "{args:?}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn completion_scripts_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let script = succeeds(&["completions", shell]);
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        assert!(script.contains("database-locks"), "{shell}: {script}");
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell}: no {sub:?} in {script}");
        }
        // Options of subcommands are completed too.
        assert!(script.contains("kill-after"), "{shell}: {script}");
    }
    // The shell is checked like any argument: a usage error.
    let refused = tool(&["completions", "tcsh"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
}

#[test]
fn the_man_page_is_roff_and_names_every_subcommand() {
    let page = succeeds(&["man"]);
    assert!(
        page.starts_with(".TH") || page.starts_with(".ie"),
        "not roff: {page}"
    );
    assert!(page.contains(".SH NAME"), "{page}");
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("database\\-locks\\-{sub}(1)")),
            "no {sub:?} in {page}"
        );
    }
    assert!(!page.contains("database\\-locks\\-help(1)"), "{page}");

    let run = succeeds(&["man", "run"]);
    assert!(run.starts_with(".TH") || run.starts_with(".ie"), "{run}");
    assert!(run.contains("database\\-locks\\-run"), "{run}");
    assert!(run.contains("kill\\-after"), "{run}");

    let refused = tool(&["man", "nonsense"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("one of run, leader"),
        "{refused:?}"
    );
}

#[test]
fn version_prints_the_crate_version() {
    let version = succeeds(&["--version"]);
    assert_eq!(
        version.trim(),
        format!("database-locks {}", env!("CARGO_PKG_VERSION"))
    );
}
