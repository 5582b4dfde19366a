//! S3: large objects streamed both ways, listing pages, and a download read slowly.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use resync_emulator::Emulator;
use tokio::io::AsyncReadExt;

use crate::helpers::{explain, s3_client, sdk_config};

/// Deterministic pseudo-random bytes (xorshift), so a corrupted or shifted chunk shows.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect()
}

async fn list_page(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    token: Option<String>,
) -> Result<(Vec<String>, Option<String>)> {
    let out = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .max_keys(2)
        .set_continuation_token(token)
        .send()
        .await
        .map_err(explain)?;
    let keys = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    let next = if out.is_truncated() == Some(true) {
        Some(
            out.next_continuation_token
                .context("truncated without a token")?,
        )
    } else {
        None
    };
    Ok((keys, next))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_large_objects_stream_and_listing_pages() -> Result<()> {
    let emu = Emulator::start().await?;
    let s3 = s3_client(&sdk_config(&emu).await);
    let bucket = "exports";
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(explain)?;
    s3.head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(explain)?;
    let buckets = s3.list_buckets().send().await.map_err(explain)?;
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, [bucket]);

    // 5 MB round trip through the streaming body.
    let data = pseudo_random(5 * 1024 * 1024, 7);
    s3.put_object()
        .bucket(bucket)
        .key("big/object.bin")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .map_err(explain)?;
    let head = s3
        .head_object()
        .bucket(bucket)
        .key("big/object.bin")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(head.content_length(), Some(i64::try_from(data.len())?));
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("big/object.bin")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(got.content_length(), Some(i64::try_from(data.len())?));
    let mut read = Vec::new();
    got.body.into_async_read().read_to_end(&mut read).await?;
    assert!(
        read == data,
        "downloaded bytes differ ({} vs {})",
        read.len(),
        data.len()
    );

    // A ranged read of the stored file.
    let part = s3
        .get_object()
        .bucket(bucket)
        .key("big/object.bin")
        .range("bytes=1000000-1000099")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(
        part.content_range(),
        Some(format!("bytes 1000000-1000099/{}", data.len()).as_str())
    );
    let bytes = part.body.collect().await?.into_bytes();
    assert_eq!(bytes.as_ref(), &data[1_000_000..1_000_100]);

    // Small objects too (kept in memory by rustack), collected.
    s3.put_object()
        .bucket(bucket)
        .key("small.txt")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .map_err(explain)?;
    let small = s3
        .get_object()
        .bucket(bucket)
        .key("small.txt")
        .send()
        .await
        .map_err(explain)?;
    assert_eq!(small.body.collect().await?.into_bytes().as_ref(), b"hello");

    // ListObjectsV2: prefix, MaxKeys=2 paging by continuation token, StartAfter.
    for name in ["e", "c", "a", "d", "b"] {
        s3.put_object()
            .bucket(bucket)
            .key(format!("logs/{name}.log"))
            .body(ByteStream::from(name.as_bytes().to_vec()))
            .send()
            .await
            .map_err(explain)?;
    }
    let mut pages = Vec::new();
    let mut token = None;
    loop {
        let (keys, next) = list_page(&s3, bucket, "logs/", token).await?;
        pages.push(keys);
        ensure!(pages.len() < 10, "listing does not terminate");
        match next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let expected =
        |names: &[&str]| -> Vec<String> { names.iter().map(|n| format!("logs/{n}.log")).collect() };
    assert_eq!(
        pages,
        [
            expected(&["a", "b"]),
            expected(&["c", "d"]),
            expected(&["e"])
        ]
    );
    let after = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("logs/")
        .start_after("logs/b.log")
        .send()
        .await
        .map_err(explain)?;
    let keys: Vec<&str> = after.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["logs/c.log", "logs/d.log", "logs/e.log"]);

    // DeleteObject, then the object is gone.
    s3.delete_object()
        .bucket(bucket)
        .key("logs/a.log")
        .send()
        .await
        .map_err(explain)?;
    let err = s3
        .head_object()
        .bucket(bucket)
        .key("logs/a.log")
        .send()
        .await
        .expect_err("deleted object still there");
    assert!(err.into_service_error().is_not_found());

    emu.shutdown().await;
    Ok(())
}

/// A reader that pauses mid-download (backpressure) still gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_download_survives_a_slow_reader() -> Result<()> {
    let emu = Emulator::start().await?;
    let s3 = s3_client(&sdk_config(&emu).await);
    s3.create_bucket()
        .bucket("slow")
        .send()
        .await
        .map_err(explain)?;
    // Larger than the loopback socket buffers, so the server must wait for the reader.
    let data = pseudo_random(48 * 1024 * 1024, 11);
    s3.put_object()
        .bucket("slow")
        .key("k")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .map_err(explain)?;
    let got = s3
        .get_object()
        .bucket("slow")
        .key("k")
        .send()
        .await
        .map_err(explain)?;
    let mut reader = got.body.into_async_read();
    let mut read = vec![0; 64 * 1024];
    reader.read_exact(&mut read).await?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    reader.read_to_end(&mut read).await?;
    assert!(
        read == data,
        "downloaded bytes differ ({} vs {})",
        read.len(),
        data.len()
    );
    emu.shutdown().await;
    Ok(())
}
