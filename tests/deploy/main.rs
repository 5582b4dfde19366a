//! The SAM template (`template.yaml`) against the deployed configuration
//! (`config/resync.yaml`), the one place that defines names and queue settings
//! (`shared/src/resources.rs`) and the calls the handlers make
//! (`tests/deploy/observed-calls.json`): what `sam validate --lint` and `cfn-lint`
//! cannot know.
//!
//! [`problems`] lists every disagreement; the first test wants none, the others break
//! one setting of the real template each and want it named (so the checks are proven
//! to fail when the template drifts).
//!
//! One module per topic, each with its checks and the tests that break them:
//! - `template`: reading the files, the YAML readers and lookups, the mutation helpers;
//! - `functions`: runtime, architecture, build, logs, the config layer; the finalizer's
//!   triggers;
//! - `iam`: no wildcards; each role grants exactly the calls its function was observed
//!   to make (`observed-calls.json`), on the resources it made them on;
//! - `destinations`: each destination's queues and delivery function;
//! - `wiring`: errors and dead-letter alarms, queue and source grants;
//! - `schedules`: each sync's schedule rule and RowsFailed alarm;
//! - `tables`: the runs table and the failed-row index;
//! - `lockfile`: one TLS stack in `Cargo.lock`.

mod destinations;
mod functions;
mod iam;
mod lockfile;
mod schedules;
mod tables;
mod template;
mod wiring;

use resync::aws::calls::ObservedCalls;
use resync_shared::config::Config;

use functions::Functions;
use template::{problems_of, template_text, Template};

/// Every disagreement between the template, the configuration and the calls the
/// handlers were observed to make, check by check.
fn problems(template: &Template, config: &Config, observed: &ObservedCalls) -> Vec<String> {
    let functions = Functions::of(template);
    [
        functions::builds(template, &functions),
        iam::no_wildcards(template),
        destinations::each(template, config, observed, &functions),
        destinations::one_delivery_function_each(config, &functions),
        iam::function_actions(template, config, observed, &functions),
        wiring::error_alarms(template, &functions),
        wiring::destination_queues(template, config, &functions),
        wiring::source_reads(template, config, &functions),
        schedules::sync_rules(template, config, &functions),
        schedules::rule_count(template, config),
        functions::finalizer_triggers(template, &functions),
        tables::keys_and_settings(template),
    ]
    .concat()
}

#[test]
fn the_template_agrees_with_the_configuration_and_resources() {
    let problems = problems_of(&template_text());
    assert!(
        problems.is_empty(),
        "template.yaml drifted:\n{}",
        problems.join("\n")
    );
}
