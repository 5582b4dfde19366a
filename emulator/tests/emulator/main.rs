//! End-to-end tests of the emulator through the real AWS SDK clients, one module per
//! AWS service (`sqs`, `dynamodb`, `s3`, `sns_eventbridge`, `secrets_manager`), plus
//! `isolation` (two emulators at once) and `logging`; `helpers` is what they share.

mod helpers;

mod dynamodb;
mod guard;
mod isolation;
mod logging;
mod s3;
mod secrets_manager;
mod sns_eventbridge;
mod sqs;
