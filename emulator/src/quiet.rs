//! Keeps the rustack crates' per-request INFO lines out of the embedder's logs.
//!
//! `rustack-s3-http` logs every routed request at INFO ("routed S3 request"), and the
//! SQS and S3 cores log queue/bucket creation at INFO. Request handling runs under
//! [`Quiet`], which forwards everything to the subscriber that was current when the
//! emulator started, except INFO events from `rustack_*` targets (DEBUG and TRACE
//! events still pass, subject to the embedder's own filter).

use tracing::{
    level_filters::LevelFilter,
    span,
    subscriber::{Interest, NoSubscriber},
    Dispatch, Event, Level, Metadata, Subscriber,
};

/// A subscriber forwarding to `inner` minus INFO events from the rustack crates.
pub(crate) struct Quiet {
    inner: Dispatch,
    hint: Option<LevelFilter>,
}

impl Quiet {
    /// The dispatcher to run request handling under, or `None` when no subscriber
    /// is installed (nothing would be logged anyway, and a subscriber installed later
    /// as the global default then still sees DEBUG/TRACE and WARN events).
    pub(crate) fn dispatch_for_current() -> Option<Dispatch> {
        let inner = tracing::dispatcher::get_default(Dispatch::clone);
        if inner.is::<NoSubscriber>() {
            return None;
        }
        let hint = Some(LevelFilter::current());
        Some(Dispatch::new(Self { inner, hint }))
    }
}

fn suppressed(metadata: &Metadata<'_>) -> bool {
    *metadata.level() == Level::INFO
        && metadata.is_event()
        && metadata.target().starts_with("rustack_")
}

impl Subscriber for Quiet {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if suppressed(metadata) {
            Interest::never()
        } else {
            self.inner.register_callsite(metadata)
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.hint
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        !suppressed(metadata) && self.inner.enabled(metadata)
    }

    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &span::Id, values: &span::Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &span::Id, follows: &span::Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event(&self, event: &Event<'_>) {
        self.inner.event(event);
    }

    fn enter(&self, span: &span::Id) {
        self.inner.enter(span);
    }

    fn exit(&self, span: &span::Id) {
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: span::Id) -> bool {
        self.inner.try_close(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        self.inner.current_span()
    }
}
