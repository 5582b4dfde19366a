//! The lockfile: one TLS stack (rustls 0.23 on ring) in the build graph.

use crate::template::ROOT;

/// Packages that must not be in the build graph at all (any crate of the workspace
/// pulling them in would put them in the bootstraps too, since `cargo lambda build --bin`
/// at the root unifies features across every member): a second crypto library, the
/// legacy hyper 0.14 + rustls 0.21 connector of the SDK, a second trust store.
fn unwanted_packages(lockfile: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut name = "";
    for line in lockfile.lines() {
        if let Some(value) = line.strip_prefix("name = ") {
            name = value.trim_matches('"');
        } else if let Some(value) = line.strip_prefix("version = ") {
            let version = value.trim_matches('"');
            // 0.x releases: the minor number is the major one.
            let minor = |below: u32| {
                version.starts_with("0.")
                    && version
                        .split('.')
                        .nth(1)
                        .and_then(|minor| minor.parse::<u32>().ok())
                        .is_some_and(|minor| minor < below)
            };
            let unwanted = match name {
                "aws-lc-rs" | "aws-lc-sys" | "aws-lc-fips-sys" | "webpki-roots" => true,
                "rustls" => minor(23),
                "hyper-rustls" => minor(27),
                "hyper" => version.starts_with("0."),
                "h2" => minor(4),
                _ => false,
            };
            if unwanted {
                found.push(format!("{name} {version}"));
            }
        }
    }
    found
}

/// Bootstrap size: one TLS stack (rustls 0.23 on ring) in every build; the SDK's
/// default features would add aws-lc-rs and the legacy connector (README, Deploy).
#[test]
fn the_lockfile_holds_one_tls_stack() {
    let lockfile = std::fs::read_to_string(format!("{ROOT}/Cargo.lock")).expect("Cargo.lock");
    assert_eq!(unwanted_packages(&lockfile), Vec::<String>::new());
}

#[test]
fn a_second_tls_stack_in_the_lockfile_is_caught() {
    let lockfile = "[[package]]\nname = \"aws-lc-rs\"\nversion = \"1.19.0\"\n\n\
                    [[package]]\nname = \"rustls\"\nversion = \"0.21.12\"\n\n\
                    [[package]]\nname = \"rustls\"\nversion = \"0.23.46\"\n\n\
                    [[package]]\nname = \"hyper\"\nversion = \"0.14.32\"\n\n\
                    [[package]]\nname = \"hyper-rustls\"\nversion = \"0.24.2\"\n\n\
                    [[package]]\nname = \"hyper\"\nversion = \"1.12.0\"\n";
    assert_eq!(
        unwanted_packages(lockfile),
        [
            "aws-lc-rs 1.19.0",
            "rustls 0.21.12",
            "hyper 0.14.32",
            "hyper-rustls 0.24.2"
        ]
    );
}
