//! What Lambda hands a handler: the event in a [`LambdaEvent`] with its invocation's
//! context, as every local invocation (sync-start, delivery, the finalizer) gets it.

use lambda_runtime::{Context, LambdaEvent};

/// Invokes a handler with an event as Lambda would (fresh request id).
pub fn lambda_invocation<T>(payload: T) -> LambdaEvent<T> {
    let mut context = Context::default();
    context.request_id = uuid::Uuid::new_v4().to_string();
    context.invoked_function_arn =
        "arn:aws:lambda:us-east-1:000000000000:function:resync-local".into();
    LambdaEvent::new(payload, context)
}
