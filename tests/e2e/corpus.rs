//! The bad-input corpus (`tests/corpus/`): odd exports and bad configurations, each with
//! its expected outcome in `tests/corpus/expected.json`.
//!
//! - every source file parses to exactly the rows (keys, in order) and rejections
//!   (line, code) the manifest names, and the key pass finds the same keys;
//! - every configuration is refused naming the manifest's field (or loads, when it
//!   names none);
//! - every source file goes through a whole run on the emulator: the run closes and
//!   each planned row is delivered, failed or rejected (nothing crashes a function).
//!
//! Adding a case is one file under `sources/` or `configs/` plus one manifest entry.

use std::path::{Path, PathBuf};

use resync_shared::{
    config::{Config, ConfigError},
    domain::source::{encoding_for, read_keys, read_object},
};
use serde::Deserialize;

use crate::helpers::TestEnv;

#[derive(Debug, Deserialize)]
struct Manifest {
    primary_key: String,
    sources: Vec<SourceCase>,
    configs: Vec<ConfigCase>,
}

#[derive(Debug, Deserialize)]
struct SourceCase {
    file: String,
    rows: Vec<String>,
    rejections: Vec<ExpectedRejection>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct ExpectedRejection {
    line: u64,
    code: String,
}

#[derive(Debug, Deserialize)]
struct ConfigCase {
    file: String,
    refused_field: Option<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn manifest() -> Manifest {
    let path = corpus_dir().join("expected.json");
    let text = std::fs::read_to_string(&path).expect("tests/corpus/expected.json");
    serde_json::from_str(&text).expect("the corpus manifest parses")
}

fn read_case(file: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(file)).unwrap_or_else(|err| panic!("corpus file {file}: {err}"))
}

/// Every file of `sources/` and `configs/` has a manifest entry (a case without an
/// expected outcome would be silently skipped).
#[test]
fn every_corpus_file_has_an_expected_outcome() {
    let manifest = manifest();
    let listed: std::collections::HashSet<String> = manifest
        .sources
        .iter()
        .map(|c| c.file.clone())
        .chain(manifest.configs.iter().map(|c| c.file.clone()))
        .collect();
    for folder in ["sources", "configs"] {
        for entry in std::fs::read_dir(corpus_dir().join(folder)).expect("corpus folder") {
            let name = format!(
                "{folder}/{}",
                entry.expect("entry").file_name().to_string_lossy()
            );
            assert!(
                listed.contains(&name),
                "{name} has no entry in expected.json"
            );
        }
    }
}

/// Issue 13 (items 1, 3, 4, 5, 6, 9): each source of the corpus gives exactly its
/// expected rows and rejections, in both passes of planning.
#[test]
fn corpus_sources_give_their_expected_rows_and_rejections() {
    let manifest = manifest();
    let mut mismatches = Vec::new();
    for case in &manifest.sources {
        let body = read_case(&case.file);
        let Some(encoding) = encoding_for(&case.file, None) else {
            mismatches.push(format!("{}: no encoding from its name", case.file));
            continue;
        };
        let mut rows = Vec::new();
        let mut rejections = Vec::new();
        read_object(
            &body[..],
            &case.file,
            encoding,
            &manifest.primary_key,
            &mut |r| match r {
                Ok(row) => rows.push(row.key.as_str().to_owned()),
                Err(rejection) => {
                    assert!(
                        !rejection.reason.is_empty(),
                        "{}: a rejection without a reason",
                        case.file
                    );
                    rejections.push(ExpectedRejection {
                        line: rejection.line,
                        code: rejection.code,
                    })
                }
            },
        )
        .unwrap_or_else(|err| panic!("{}: {err}", case.file));
        let mut keys = Vec::new();
        read_keys(
            &body[..],
            &case.file,
            encoding,
            &manifest.primary_key,
            &mut |k| keys.push(k.to_owned()),
        )
        .unwrap_or_else(|err| panic!("{}: {err}", case.file));
        if rows != case.rows {
            mismatches.push(format!(
                "{}: rows {rows:?}, expected {:?}",
                case.file, case.rows
            ));
        }
        if keys != rows {
            mismatches.push(format!("{}: key pass {keys:?}, rows {rows:?}", case.file));
        }
        if rejections != case.rejections {
            mismatches.push(format!(
                "{}: rejections {rejections:?}, expected {:?}",
                case.file, case.rejections
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Issue 13, item 9: each configuration of the corpus is refused naming its field.
#[test]
fn corpus_configurations_are_refused_naming_their_field() {
    let mut mismatches = Vec::new();
    for case in manifest().configs {
        let text = String::from_utf8(read_case(&case.file)).expect("configurations are UTF-8");
        let outcome = match Config::from_yaml(&text) {
            Ok(_) => None,
            Err(ConfigError::Shape { field, .. } | ConfigError::Invalid { field, .. }) => {
                Some(field)
            }
            Err(other) => Some(format!("unexpected error {other}")),
        };
        if outcome != case.refused_field {
            mismatches.push(format!(
                "{}: refused naming {outcome:?}, expected {:?}",
                case.file, case.refused_field
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Issue 13, items 1 and 3: no source of the corpus crashes a function or leaves a row
/// neither delivered nor recorded: each goes through a whole run, which closes with
/// every planned row delivered, failed or rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_sources_run_to_a_closed_run() {
    let manifest = manifest();
    let env = TestEnv::start().await;
    for (i, case) in manifest.sources.iter().enumerate() {
        let name = Path::new(&case.file)
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        env.export(&format!("{i:03}-{name}"), read_case(&case.file))
            .await;
        let run = env.run().await;
        let counts = run.record.counts.expect("a closed run has counts");
        assert_eq!(
            counts.planned,
            counts.delivered + counts.failed + counts.rejected,
            "{}: {counts:?}",
            case.file
        );
        assert!(
            counts.rejected >= case.rejections.len() as u64,
            "{}: {counts:?}",
            case.file
        );
        env.destination.next_run();
    }
}
