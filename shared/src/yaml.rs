//! Reading YAML into typed settings with errors that name the field: the configuration
//! file and each destination's section use the same reading.

/// A value that did not have the expected shape, at `field` (dotted; `""` for the
/// value itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    /// Where, e.g. `syncs[0].retry.max_attempts`.
    pub field: String,
    /// What is wrong, without the field repeated.
    pub message: String,
}

/// Deserializes `input` (a YAML text or value deserializer), naming the field that
/// failed.
pub fn from_yaml<'de, T, D>(input: D) -> Result<T, ShapeError>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de, Error = serde_yaml::Error>,
{
    serde_path_to_error::deserialize(input).map_err(|err| {
        let field = err.path().to_string();
        let message = err.into_inner().to_string();
        let message = message
            .strip_prefix(&format!("{field}: "))
            .map(str::to_owned)
            .unwrap_or(message);
        ShapeError {
            field: if field == "." { String::new() } else { field },
            message,
        }
    })
}
