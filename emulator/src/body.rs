//! Response bodies: one boxed type for every service, and a file-backed object body.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::s3::ObjectRange;

/// The body type of every emulator response.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

/// Box any service's body.
pub(crate) fn boxed<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes, Error = io::Error> + Send + 'static,
{
    body.boxed_unsync()
}

/// A buffered body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

const CHUNK: usize = 64 * 1024;

/// Streams `length` bytes of a stored object from `offset`, without time budgets: the
/// reader may pause as long as it likes (backpressure), as with real S3.
#[derive(Debug)]
pub(crate) struct FileBody {
    reader: tokio::io::Take<tokio::fs::File>,
    remaining: u64,
    buf: BytesMut,
    /// Keeps the stored file alive (it is a temp file removed on drop) until sent.
    _range: ObjectRange,
}

impl FileBody {
    /// Open the object and position it at the range's start.
    pub(crate) async fn open(range: ObjectRange) -> io::Result<Self> {
        let end = range.offset.checked_add(range.length);
        if end.is_none_or(|end| end > range.upload.size()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "object range outside the stored object",
            ));
        }
        let mut file = range.upload.open().await?;
        file.seek(io::SeekFrom::Start(range.offset)).await?;
        Ok(Self {
            reader: file.take(range.length),
            remaining: range.length,
            buf: BytesMut::new(),
            _range: range,
        })
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if this.buf.capacity() < CHUNK {
            this.buf.reserve(CHUNK);
        }
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut this.reader),
            cx,
            &mut this.buf
        ))?;
        if read == 0 {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stored object is shorter than its metadata",
            ))));
        }
        this.remaining -= read as u64;
        Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
