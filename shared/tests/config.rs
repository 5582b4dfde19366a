//! The configuration file: loading, defaults and errors that name the field, for the
//! common fields and for each destination kind's section.

mod config_file {
    use std::time::Duration;

    use resync_shared::config::{rate_period, Config, ConfigError};

    const GOOD: &str = r#"
destinations:
  - id: crm
    kind: webhook
    batch_size: 50
    retry: { max_attempts: 4, base_delay_secs: 1, max_delay_secs: 30 }
    webhook:
      url: https://hooks.example.com/rows
      signing_secret: { secret_id: "arn:aws:secretsmanager:us-east-1:123456789012:secret:crm" }
syncs:
  - id: accounts
    source: { prefix: exports/accounts/ }
    primary_key: id
    destination: crm
    schedule: rate(15 minutes)
"#;

    fn error_field(text: &str) -> String {
        match Config::from_yaml(text).unwrap_err() {
            ConfigError::Shape { field, .. } | ConfigError::Invalid { field, .. } => field,
            other => panic!("unexpected error {other}"),
        }
    }

    /// The field and message of a refused configuration.
    fn refused(text: &str) -> (String, String) {
        match Config::from_yaml(text) {
            Ok(_) => panic!("the configuration was accepted; a refusal was expected"),
            Err(
                ConfigError::Shape { field, message } | ConfigError::Invalid { field, message },
            ) => (field, message),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn a_valid_file_loads_with_defaults() {
        let config = Config::from_yaml(GOOD).unwrap();
        let d = &config.destinations[0];
        assert_eq!(d.effective_batch_size(), 50);
        assert_eq!(d.retry.max_attempts, 4);
        assert_eq!(d.concurrency, 5);
        let s = &config.syncs[0];
        assert_eq!(s.alert.warn_failed_rows, 1);
        assert!(s.alert.critical_on_run_error);
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let text = GOOD.replace("max_attempts: 4", "max_attempts: four");
        assert_eq!(error_field(&text), "destinations[0].retry.max_attempts");
    }

    #[test]
    fn an_unknown_field_names_where_it_is() {
        let text = GOOD.replace("primary_key: id", "primary_key: id\n    primary_keys: [id]");
        let err = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("syncs[0]"), "{err}");
        assert!(err.contains("primary_keys"), "{err}");
    }

    #[test]
    fn an_unknown_destination_is_refused_with_the_known_ones() {
        let text = GOOD.replace("destination: crm", "destination: erp");
        let err = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("syncs[0].destination"), "{err}");
        assert!(err.contains("known: crm"), "{err}");
    }

    #[test]
    fn plain_http_is_refused_except_for_loopback() {
        let text = GOOD.replace("https://hooks.example.com", "http://hooks.example.com");
        assert_eq!(error_field(&text), "destinations[0].webhook.url");
        let text = GOOD.replace("https://hooks.example.com", "http://127.0.0.1:8080");
        assert!(Config::from_yaml(&text).is_ok());
    }

    #[test]
    fn retry_policy_bounds_are_checked() {
        let text = GOOD.replace("max_attempts: 4", "max_attempts: 0");
        assert_eq!(error_field(&text), "destinations[0].retry.max_attempts");
        let text = GOOD.replace("max_delay_secs: 30", "max_delay_secs: 50000");
        assert_eq!(error_field(&text), "destinations[0].retry.max_delay_secs");
    }

    /// Issue 12, defect 8: `timeout_secs` up to 600 passed while the delivery function
    /// times out at 60 s (`DELIVERY_FUNCTION_TIMEOUT_SECS`), so a slow destination had its
    /// invocations stopped mid-batch. One invocation's requests — its rows in batches,
    /// `REQUESTS_IN_FLIGHT` at a time, each waiting up to `timeout_secs` — and its queue
    /// and ledger calls must fit the function's timeout.
    #[test]
    fn a_request_timeout_the_delivery_function_cannot_wait_for_is_refused() {
        let with = |batch: u32, timeout: u32| {
            GOOD.replace(
                "batch_size: 50",
                &format!("batch_size: {batch}\n    timeout_secs: {timeout}"),
            )
        };
        let err = Config::from_yaml(&with(50, 600)).unwrap_err().to_string();
        assert!(
            err.starts_with("configuration field `destinations[0].timeout_secs`: "),
            "{err}"
        );
        assert!(err.contains("60 s timeout"), "{err}");
        // 100 rows per invocation in two requests, one after another: two waits.
        assert!(Config::from_yaml(&with(50, 25)).is_ok());
        assert_eq!(refused(&with(50, 26)).0, "destinations[0].timeout_secs");
        // 20 rows per invocation in 20 requests: twenty waits in a row.
        let (field, message) = refused(&with(1, 30));
        assert_eq!(field, "destinations[0].timeout_secs");
        assert!(message.contains("at most 2 s"), "{message}");
        assert!(Config::from_yaml(&with(1, 2)).is_ok());
        assert_eq!(refused(&with(50, 0)).0, "destinations[0].timeout_secs");
    }

    /// Issue 12, defect 8: `max_attempts × max_delay_secs` could outlive the delivery
    /// queue's retention (4 days): the messages of rows still retrying expired and the
    /// run never closed. A row's worst case in one run — its backoffs, every receive it
    /// may take, its rate-limit deferrals — must fit the retention.
    #[test]
    fn a_retry_policy_that_outlives_the_queue_retention_is_refused() {
        let policy = |p: &str| {
            GOOD.replace(
                "{ max_attempts: 4, base_delay_secs: 1, max_delay_secs: 30 }",
                p,
            )
        };
        // Nine backoffs of up to 43,000 s: 387,000 s alone.
        let (field, message) = refused(&policy(
            "{ max_attempts: 10, base_delay_secs: 43000, max_delay_secs: 43000 }",
        ));
        assert_eq!(field, "destinations[0].retry");
        assert!(message.contains("345600 s"), "{message}");
        let (field, _) = refused(&policy(
            "{ max_attempts: 20, base_delay_secs: 5, max_delay_secs: 43000 }",
        ));
        assert_eq!(field, "destinations[0].retry");
        // Long backoffs with few attempts, or many attempts with short backoffs, fit.
        assert!(Config::from_yaml(&policy(
            "{ max_attempts: 5, base_delay_secs: 43000, max_delay_secs: 43000 }"
        ))
        .is_ok());
        assert!(Config::from_yaml(&policy(
            "{ max_attempts: 100, base_delay_secs: 1, max_delay_secs: 900 }"
        ))
        .is_ok());
    }

    /// Issue 12, defect 8: a visibility timeout counts from the receive and SQS refuses
    /// one that ends more than 12 hours after it; a backoff is set when the invocation
    /// ends, so a `max_delay_secs` of 43,200 was refused by SQS at run time and the row
    /// came back at the queue's own timeout instead of after its backoff.
    #[test]
    fn a_backoff_that_would_end_past_twelve_hours_from_the_receive_is_refused() {
        let text = GOOD.replace("max_delay_secs: 30", "max_delay_secs: 43200");
        let (field, message) = refused(&text);
        assert_eq!(field, "destinations[0].retry.max_delay_secs");
        assert!(message.contains("at most 43139"), "{message}");
        let text = GOOD.replace("max_delay_secs: 30", "max_delay_secs: 43139");
        assert!(Config::from_yaml(&text).is_ok());
    }

    #[test]
    fn schedules_must_be_eventbridge_expressions() {
        let text = GOOD.replace("rate(15 minutes)", "every 15 minutes");
        assert_eq!(error_field(&text), "syncs[0].schedule");
        let text = GOOD.replace("rate(15 minutes)", "\"cron(0 * * * ? *)\"");
        assert!(Config::from_yaml(&text).is_ok());
        assert_eq!(
            rate_period("rate(2 hours)"),
            Some(Duration::from_secs(7200))
        );
    }

    /// Issue 13, item 9: `primary_key: " id"` loaded, and then every row was rejected
    /// (no row has a column named " id"). A key column with surrounding whitespace, or
    /// an empty one, is refused at load, naming the field.
    #[test]
    fn a_primary_key_with_surrounding_whitespace_is_refused() {
        for key in ["\" id\"", "\"id \"", "\"\\tid\"", "\"\"", "\"  \""] {
            let text = GOOD.replace("primary_key: id", &format!("primary_key: {key}"));
            let (field, message) = refused(&text);
            assert_eq!(field, "syncs[0].primary_key", "{key}: {message}");
        }
        let text = GOOD.replace("primary_key: id", "primary_key: \"customer id\"");
        assert!(
            Config::from_yaml(&text).is_ok(),
            "inner spaces are a column name"
        );
    }

    /// Issue 13, item 9: a URL without a host (`https:///rows`) was accepted (the URL
    /// parser reads it as host `rows`). It is refused, naming the field.
    #[test]
    fn a_url_without_a_host_is_refused() {
        for url in [
            "https:///rows",
            "https:rows",
            "https://",
            "https://?q=1",
            "https://#x",
        ] {
            let text = GOOD.replace("https://hooks.example.com/rows", url);
            let (field, message) = refused(&text);
            assert_eq!(field, "destinations[0].webhook.url", "{url}: {message}");
            assert!(message.contains("host"), "{url}: {message}");
        }
    }

    /// Issue 13, item 9: schedules were checked only for shape, so `cron(a b c d e f)`,
    /// `rate(1 minutes)` and an overflowing rate loaded. They are validated as
    /// EventBridge does, naming the field.
    #[test]
    fn schedules_are_validated_as_eventbridge_does() {
        let refused_schedules = [
            "cron(a b c d e f)",
            "cron(0 * * * * *)",
            "cron(0 * ? * ? *)",
            "cron(60 * * * ? *)",
            "cron(0 24 * * ? *)",
            "cron(0 0 32 * ? *)",
            "cron(0 0 0 * ? *)",
            "cron(0 0 * 13 ? *)",
            "cron(0 0 ? * 8 *)",
            "cron(0 0 ? * 1 1969)",
            "cron(0 0 * * ? 2200)",
            "cron(0 0 ? * 3#1,6#3 *)",
            "cron(0 0 ? * L# *)",
            "cron(0/0 * * * ? *)",
            "cron(0 0 * * ?)",
            "cron(0 0 * * ? * *)",
            "cron(0 0 W * ? *)",
            "rate(1 minutes)",
            "rate(5 minute)",
            "rate(0 minutes)",
            "rate(-5 minutes)",
            "rate(1.5 hours)",
            "rate(18446744073709551615 days)",
            "rate(99999999999999999999999 minutes)",
            "rate(15 minutes",
            "rate(15 weeks)",
            "rate(15)",
        ];
        for schedule in refused_schedules {
            let text = GOOD.replace("rate(15 minutes)", &format!("\"{schedule}\""));
            let (field, message) = refused(&text);
            assert_eq!(field, "syncs[0].schedule", "{schedule}: {message}");
        }
        let accepted = [
            "cron(0 10 * * ? *)",
            "cron(15 12 * * ? *)",
            "cron(0 18 ? * MON-FRI *)",
            "cron(0 8 1 * ? *)",
            "cron(0/15 * * * ? *)",
            "cron(0/10 * ? * MON-FRI *)",
            "cron(0/5 8-17 ? * MON-FRI *)",
            "cron(0 9 ? * 2#1 *)",
            "cron(0 0 L * ? *)",
            "cron(0 0 3W * ? *)",
            "cron(0 0 ? * 6L *)",
            "cron(0,30 * * jan,FEB ? 2026-2030)",
            "rate(1 minute)",
            "rate(5 minutes)",
            "rate(1 hour)",
            "rate(2 hours)",
            "rate(1 day)",
            "rate(365 days)",
        ];
        for schedule in accepted {
            let text = GOOD.replace("rate(15 minutes)", &format!("\"{schedule}\""));
            if let Err(err) = Config::from_yaml(&text) {
                panic!("{schedule} was refused: {err}");
            }
        }
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let text = GOOD.replace(
            "syncs:\n",
            "syncs:\n  - id: accounts\n    source: { prefix: a/ }\n    primary_key: id\n    destination: crm\n    schedule: rate(1 hour)\n",
        );
        assert_eq!(error_field(&text), "syncs[1].id");
    }

    #[test]
    fn the_vendor_examples_load() {
        for text in [
            include_str!("../../examples/salesforce.yaml"),
            include_str!("../../examples/hubspot.yaml"),
        ] {
            let config = Config::from_yaml(text).unwrap();
            let d = &config.destinations[0];
            assert_eq!(d.effective_batch_size(), d.kind_max_batch());
        }
    }

    #[test]
    fn vendor_sections_are_checked_field_by_field() {
        let salesforce = include_str!("../../examples/salesforce.yaml");
        let text = salesforce.replace("sobject: Contact", "sobject: \"Contact; DROP\"");
        assert_eq!(error_field(&text), "destinations[0].salesforce.sobject");
        let text = salesforce.replace("api_version: \"62.0\"", "api_version: \"45.0\"");
        assert_eq!(error_field(&text), "destinations[0].salesforce.api_version");
        let text = salesforce.replace(
            "        client_secret: { env: SALESFORCE_CLIENT_SECRET }",
            "",
        );
        assert_eq!(
            error_field(&text),
            "destinations[0].salesforce.auth.client_secret"
        );
        let text = salesforce.replace("https://login.salesforce.com", "http://login.example.com");
        assert_eq!(error_field(&text), "destinations[0].salesforce.login_url");
        let hubspot = include_str!("../../examples/hubspot.yaml");
        let text = hubspot.replace("    hubspot:\n", "    hubspot_settings:\n");
        assert!(Config::from_yaml(&text).is_err());
        let text = hubspot.replace("kind: hubspot", "kind: hubspot\n    batch_size: 101");
        assert_eq!(error_field(&text), "destinations[0].batch_size");
    }

    #[test]
    fn a_section_of_another_kind_is_refused() {
        let salesforce = include_str!("../../examples/salesforce.yaml");
        let text = salesforce.replace(
            "    salesforce:\n",
            "    webhook: { url: https://hooks.example.com/rows }\n    salesforce:\n",
        );
        assert_eq!(error_field(&text), "destinations[0].webhook");
        let text = GOOD.replace(
            "    webhook:\n",
            "    hubspot: { object_type: contacts, id_property: resync_id, fields: { email: email }, access_token: { value: t } }\n    webhook:\n",
        );
        assert_eq!(error_field(&text), "destinations[0].hubspot");
    }

    #[test]
    fn a_webhook_without_its_section_is_refused() {
        let text = GOOD.replace("    webhook:\n      url: https://hooks.example.com/rows\n      signing_secret: { secret_id: \"arn:aws:secretsmanager:us-east-1:123456789012:secret:crm\" }\n", "");
        assert_eq!(error_field(&text), "destinations[0].webhook");
    }
}
