//! What Lambda hands a handler: the event in a [`LambdaEvent`] with its invocation's
//! context, as every local invocation (sync-start, delivery, the finalizer) gets it.

use lambda_runtime::{Context, LambdaEvent};

/// Invokes a handler with an event as Lambda would (fresh request id).
pub fn lambda_invocation<T>(payload: T) -> LambdaEvent<T> {
    lambda_invocation_until(payload, None)
}

/// A Lambda invocation whose context carries `deadline` (as Lambda sets it: the time by
/// which the function must return), or none.
pub fn lambda_invocation_until<T>(
    payload: T,
    deadline: Option<std::time::SystemTime>,
) -> LambdaEvent<T> {
    let mut context = Context::default();
    context.request_id = uuid::Uuid::new_v4().to_string();
    context.invoked_function_arn =
        "arn:aws:lambda:us-east-1:000000000000:function:resync-local".into();
    if let Some(deadline) = deadline {
        context.deadline = deadline
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    }
    LambdaEvent::new(payload, context)
}
