//! Recording a planning attempt's rejections as planning goes: counted and sampled in
//! a [`RejectionLog`], keyed ones written out chunk by chunk, so sync-start holds no
//! state per rejected row.

use resync_shared::{
    aws::{runs::RunStore, AwsError},
    domain::{
        ledger::RecordedRejection,
        rejections::{RejectionCounts, RejectionLog},
    },
    RunId,
};

/// Writes a planning attempt's rejections to the runs table (see
/// [`resync_shared::domain::rejections`] for what is kept).
pub(crate) struct Recorder<'a> {
    runs: &'a RunStore,
    run: &'a RunId,
    generation: u32,
    /// The counts, the sample and the chunk being filled.
    pub(crate) log: RejectionLog,
    next_seq: usize,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(runs: &'a RunStore, run: &'a RunId, generation: u32) -> Self {
        Self {
            runs,
            run,
            generation,
            log: RejectionLog::default(),
            next_seq: 0,
        }
    }

    /// Notes one rejection (written out with its chunk at the next [`Recorder::flush`]).
    pub(crate) fn push(&mut self, rejection: RecordedRejection) {
        self.log.push(rejection);
    }

    /// Writes the chunks of keyed rejections that are full.
    pub(crate) async fn flush(&mut self) -> Result<(), AwsError> {
        for chunk in self.log.take_sealed() {
            self.write(&chunk).await?;
        }
        Ok(())
    }

    async fn write(&mut self, chunk: &[RecordedRejection]) -> Result<(), AwsError> {
        let items = self
            .runs
            .record_rejection_chunk(self.run, self.generation, self.next_seq, chunk)
            .await?;
        self.next_seq = self.next_seq.saturating_add(items);
        Ok(())
    }

    /// Writes the last chunk and the sample; returns the number of rejections and
    /// their exact counts by code.
    pub(crate) async fn finish(mut self) -> Result<(u64, RejectionCounts), AwsError> {
        let total = self.log.total();
        let (chunks, counts, sample) = std::mem::take(&mut self.log).finish();
        for chunk in chunks {
            self.write(&chunk).await?;
        }
        if !sample.is_empty() {
            self.runs
                .record_rejection_sample(self.run, self.generation, &sample)
                .await?;
        }
        Ok((total, counts))
    }
}
