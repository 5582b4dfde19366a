//! Secrets Manager: create, get, put and delete.

use anyhow::{bail, Context, Result};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use resync_emulator::Emulator;

use crate::helpers::{explain, sdk_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_create_get_put_and_delete() -> Result<()> {
    let emu = Emulator::start().await?;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk_config(&emu).await);
    let name = "resync/test/db-password";

    let created = secrets
        .create_secret()
        .name(name)
        .secret_string("first")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(created.name(), Some(name));
    let arn = created
        .arn()
        .context("CreateSecret returned no ARN")?
        .to_owned();
    assert!(
        arn.starts_with(&format!(
            "arn:aws:secretsmanager:us-east-1:000000000000:secret:{name}-"
        )),
        "unexpected ARN {arn}"
    );
    let first_version = created
        .version_id()
        .context("CreateSecret returned no VersionId")?
        .to_owned();

    // By name and by the returned ARN: the same secret, version and value.
    for id in [name, arn.as_str()] {
        let got = secrets
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(explain)?;
        assert_eq!(got.secret_string(), Some("first"), "read by {id}");
        assert_eq!(got.name(), Some(name), "read by {id}");
        assert_eq!(got.arn(), Some(arn.as_str()), "read by {id}");
        assert_eq!(
            got.version_id(),
            Some(first_version.as_str()),
            "read by {id}"
        );
        assert_eq!(got.version_stages(), ["AWSCURRENT"], "read by {id}");
    }

    // PutSecretValue makes a new AWSCURRENT version; the old one becomes AWSPREVIOUS.
    let put = secrets
        .put_secret_value()
        .secret_id(name)
        .secret_string("second")
        .send()
        .await
        .map_err(explain)?;
    let second_version = put
        .version_id()
        .context("PutSecretValue returned no VersionId")?
        .to_owned();
    assert_ne!(second_version, first_version);
    assert_eq!(put.version_stages(), ["AWSCURRENT"]);
    for id in [name, arn.as_str()] {
        let got = secrets
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(explain)?;
        assert_eq!(got.secret_string(), Some("second"), "read by {id}");
        assert_eq!(
            got.version_id(),
            Some(second_version.as_str()),
            "read by {id}"
        );
    }
    let previous = secrets
        .get_secret_value()
        .secret_id(&arn)
        .version_stage("AWSPREVIOUS")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(previous.secret_string(), Some("first"));

    // A secret that was never created.
    let err = secrets
        .get_secret_value()
        .secret_id("resync/test/missing")
        .send()
        .await
        .expect_err("reading a missing secret must fail");
    match err.into_service_error() {
        GetSecretValueError::ResourceNotFoundException(_) => {}
        other => bail!("expected ResourceNotFoundException, got {other:?}"),
    }

    // Forced deletion removes the secret at once: it is gone by name and by ARN, and
    // the name can be reused immediately.
    let deleted = secrets
        .delete_secret()
        .secret_id(&arn)
        .force_delete_without_recovery(true)
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(deleted.name(), Some(name));
    assert!(deleted.deletion_date().is_some());
    for id in [name, arn.as_str()] {
        let err = secrets
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .expect_err("a deleted secret must not be readable");
        assert!(
            matches!(
                err.into_service_error(),
                GetSecretValueError::ResourceNotFoundException(_)
            ),
            "expected ResourceNotFoundException reading {id} after deletion"
        );
    }
    let recreated = secrets
        .create_secret()
        .name(name)
        .secret_string("third")
        .send()
        .await
        .map_err(explain)?;
    assert_ne!(
        recreated.arn(),
        Some(arn.as_str()),
        "a new secret gets a new ARN"
    );
    let got = secrets
        .get_secret_value()
        .secret_id(name)
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(got.secret_string(), Some("third"));

    emu.shutdown().await;
    Ok(())
}
