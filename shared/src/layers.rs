//! The module boundaries of the crate's layout, checked on the source text: the pure
//! rules use no service and no adapter, destinations do not reach into the
//! configuration, and the configuration names no destination kind.

use std::path::{Path, PathBuf};

fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, into: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).expect("source folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source file");
                into.push((path, text));
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir),
        &mut files,
    );
    assert!(!files.is_empty(), "no sources under {dir}");
    files
}

/// Lines of `dir` that contain one of `forbidden` (case-insensitive); with `code_only`,
/// comment lines (docs that name a neighbour) are passed over.
fn offenders(dir: &str, forbidden: &[&str], code_only: bool) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in sources(dir) {
        for (n, line) in text.lines().enumerate() {
            if code_only && line.trim_start().starts_with("//") {
                continue;
            }
            let lower = line.to_ascii_lowercase();
            for word in forbidden {
                if lower.contains(word) {
                    found.push(format!("{}:{}: {word}", path.display(), n + 1));
                }
            }
        }
    }
    found
}

#[test]
fn the_domain_uses_no_sdk_no_http_and_no_adapter() {
    let found = offenders(
        "domain",
        &[
            "aws_sdk",
            "aws_smithy",
            "reqwest",
            "crate::aws",
            "crate::destination",
            "crate::config",
            "crate::resources",
            "crate::secrets",
        ],
        true,
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn destinations_do_not_depend_on_the_configuration_or_the_aws_adapters() {
    let found = offenders(
        "destination",
        &["crate::config", "crate::aws", "crate::resources"],
        true,
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_configuration_names_no_destination_kind() {
    let found = offenders("config", &["webhook", "salesforce", "hubspot"], false);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_checks_above_can_fail() {
    // The destination folder does name its kinds: the word search finds them.
    assert!(!offenders("destination", &["salesforce"], true).is_empty());
    assert!(!offenders("domain", &["crate::domain"], true).is_empty());
}
