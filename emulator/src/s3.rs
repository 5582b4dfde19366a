//! S3 operation dispatch: `rustack-s3-http` routes and (de)serializes, and leaves the
//! call into the business logic (`rustack_s3_core::RustackS3`) to the embedder.

use std::{future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use rustack_s3_core::{storage::StagedUpload, RustackS3};
use rustack_s3_http::{
    router::RoutingContext, FromS3Request, IntoS3Response, S3Handler, S3ResponseBody,
};
use rustack_s3_model::{
    input::{GetObjectInput, PutObjectInput},
    S3Error, S3Operation,
};

type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<S3ResponseBody>, S3Error>> + Send>>;

/// A stored object range to stream as a response body.
///
/// Attached to the `GetObject` response as an extension and turned into the body by
/// the server (see `crate::body::FileBody`). rustack's own
/// `S3ResponseBody::from_staged` aborts the stream when the consumer does not read
/// for 5 seconds (its idle budget also applies to responses, and a client applying
/// backpressure stops the body from being polled), which would truncate downloads
/// for slow readers.
#[derive(Clone, Debug)]
pub(crate) struct ObjectRange {
    pub(crate) upload: Arc<StagedUpload>,
    pub(crate) offset: u64,
    pub(crate) length: u64,
}

/// The emulator's [`S3Handler`], delegating to [`RustackS3`].
#[derive(Debug, Clone)]
pub(crate) struct S3Backend {
    provider: RustackS3,
}

impl S3Backend {
    pub(crate) fn new(provider: RustackS3) -> Self {
        Self { provider }
    }
}

/// Deserialize `I`, run `call`, serialize its output.
async fn run<I, O, F, Fut>(
    parts: &http::request::Parts,
    ctx: &RoutingContext,
    body: Bytes,
    call: F,
) -> Result<http::Response<S3ResponseBody>, S3Error>
where
    I: FromS3Request,
    O: IntoS3Response,
    F: FnOnce(I) -> Fut,
    Fut: Future<Output = Result<O, S3Error>>,
{
    let input = I::from_s3_request(
        parts,
        ctx.bucket.as_deref(),
        ctx.key.as_deref(),
        &ctx.query_params,
        body,
    )?;
    call(input).await?.into_s3_response()
}

/// Like [`run`] for operations without output: 204 No Content.
async fn run_void<I, F, Fut>(
    parts: &http::request::Parts,
    ctx: &RoutingContext,
    body: Bytes,
    call: F,
) -> Result<http::Response<S3ResponseBody>, S3Error>
where
    I: FromS3Request,
    F: FnOnce(I) -> Fut,
    Fut: Future<Output = Result<(), S3Error>>,
{
    let input = I::from_s3_request(
        parts,
        ctx.bucket.as_deref(),
        ctx.key.as_deref(),
        &ctx.query_params,
        body,
    )?;
    call(input).await?;
    http::Response::builder()
        .status(http::StatusCode::NO_CONTENT)
        .body(S3ResponseBody::empty())
        .map_err(|e| S3Error::internal_error(e.to_string()))
}

impl S3Backend {
    async fn put_object(
        &self,
        parts: &http::request::Parts,
        ctx: &RoutingContext,
        body: Bytes,
        staged: Option<Arc<StagedUpload>>,
    ) -> Result<http::Response<S3ResponseBody>, S3Error> {
        let s3 = &self.provider;
        run(parts, ctx, body, |input: PutObjectInput| async move {
            match staged {
                Some(upload) => s3.handle_put_object_staged(input, upload).await,
                None => s3.handle_put_object(input).await,
            }
        })
        .await
    }

    async fn get_object(
        &self,
        parts: &http::request::Parts,
        ctx: &RoutingContext,
        body: Bytes,
    ) -> Result<http::Response<S3ResponseBody>, S3Error> {
        let input = GetObjectInput::from_s3_request(
            parts,
            ctx.bucket.as_deref(),
            ctx.key.as_deref(),
            &ctx.query_params,
            body,
        )?;
        let (output, staged) = self.provider.handle_get_object_streaming(input).await?;
        let mut response = output.into_s3_response()?;
        if response.headers().contains_key(http::header::CONTENT_RANGE) {
            // rustack answers ranged reads with 200; S3 answers 206.
            *response.status_mut() = http::StatusCode::PARTIAL_CONTENT;
        }
        if let Some(read) = staged {
            response.extensions_mut().insert(ObjectRange {
                upload: read.upload,
                offset: read.offset,
                length: read.length,
            });
        }
        Ok(response)
    }

    async fn dispatch(
        self,
        op: S3Operation,
        parts: http::request::Parts,
        body: Bytes,
        ctx: RoutingContext,
        staged: Option<Arc<StagedUpload>>,
    ) -> Result<http::Response<S3ResponseBody>, S3Error> {
        let s3 = &self.provider;
        let (p, c) = (&parts, &ctx);
        match op {
            S3Operation::CreateBucket => run(p, c, body, |i| s3.handle_create_bucket(i)).await,
            S3Operation::DeleteBucket => run_void(p, c, body, |i| s3.handle_delete_bucket(i)).await,
            S3Operation::HeadBucket => run(p, c, body, |i| s3.handle_head_bucket(i)).await,
            S3Operation::ListBuckets => run(p, c, body, |i| s3.handle_list_buckets(i)).await,
            S3Operation::GetBucketLocation => {
                run(p, c, body, |i| s3.handle_get_bucket_location(i)).await
            }
            S3Operation::PutObject => self.put_object(p, c, body, staged).await,
            S3Operation::GetObject => self.get_object(p, c, body).await,
            S3Operation::HeadObject => run(p, c, body, |i| s3.handle_head_object(i)).await,
            S3Operation::DeleteObject => run(p, c, body, |i| s3.handle_delete_object(i)).await,
            S3Operation::DeleteObjects => run(p, c, body, |i| s3.handle_delete_objects(i)).await,
            S3Operation::CopyObject => run(p, c, body, |i| s3.handle_copy_object(i)).await,
            S3Operation::ListObjects => run(p, c, body, |i| s3.handle_list_objects(i)).await,
            S3Operation::ListObjectsV2 => run(p, c, body, |i| s3.handle_list_objects_v2(i)).await,
            other => Err(S3Error::not_implemented(other.as_str())),
        }
    }
}

impl S3Handler for S3Backend {
    fn handle_staged_upload(
        &self,
        parts: http::request::Parts,
        upload: Arc<StagedUpload>,
        ctx: RoutingContext,
    ) -> HandlerFuture {
        let this = self.clone();
        Box::pin(async move {
            this.dispatch(ctx.operation, parts, Bytes::new(), ctx, Some(upload))
                .await
        })
    }

    fn handle_operation(
        &self,
        op: S3Operation,
        parts: http::request::Parts,
        body: Bytes,
        ctx: RoutingContext,
    ) -> HandlerFuture {
        let this = self.clone();
        Box::pin(async move { this.dispatch(op, parts, body, ctx, None).await })
    }
}
