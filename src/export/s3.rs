//! S3 (or any S3-compatible service) as export storage, through `aws-sdk-s3`: every object is
//! a multipart upload, so a 1 GB export holds one part in memory at a time. The SDK retries
//! each request with exponential backoff and jitter ([`RETRY_ATTEMPTS`] attempts); what still
//! fails fails the step, which the queue retries with its own backoff.
//!
//! Credentials come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, when set,
//! `AWS_SESSION_TOKEN` (never from files in the repository).

use super::{DigestWriter, ExportError, ExportStorage, ObjectDigest, Upload, check_key};
use async_trait::async_trait;
use aws_sdk_s3::Client;
pub use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::time::Duration;

/// Attempts per request before the SDK gives up.
pub const RETRY_ATTEMPTS: u32 = 4;

/// Objects in one bucket.
pub struct S3Storage {
    client: Client,
    bucket: String,
}

fn unavailable(what: &str, e: impl std::error::Error) -> ExportError {
    ExportError::Unavailable(format!("{what}: {}", DisplayErrorContext(e)))
}

impl S3Storage {
    /// A client for `bucket` at `endpoint` (AWS itself when `None`), credentials from the
    /// environment.
    pub fn from_env(bucket: &str, endpoint: Option<&str>, region: &str, path_style: bool) -> Self {
        let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(key), Some(secret)) => Some(Credentials::new(
                key,
                secret,
                env("AWS_SESSION_TOKEN"),
                None,
                "steward-environment",
            )),
            _ => None,
        };
        Self::new(bucket, endpoint, region, path_style, credentials)
    }

    /// A client for `bucket` at `endpoint` with these credentials.
    pub fn new(
        bucket: &str,
        endpoint: Option<&str>,
        region: &str,
        path_style: bool,
        credentials: Option<Credentials>,
    ) -> Self {
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .force_path_style(path_style)
            // Plain requests that every S3-compatible server understands: no aws-chunked
            // trailers. The export is verified end to end by reading it back.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(RETRY_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint);
        }
        if let Some(credentials) = credentials {
            config = config.credentials_provider(credentials);
        }
        Self {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_string(),
        }
    }
}

impl S3Storage {
    /// The body of the object `key`, streamed.
    async fn get(&self, key: &str) -> Result<ByteStream, ExportError> {
        check_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(s) if s.is_no_such_key() => ExportError::NotFound(key.to_string()),
                _ => unavailable(&format!("read {key}"), e),
            })?;
        Ok(out.body)
    }
}

struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
}

#[async_trait]
impl Upload for S3Upload {
    async fn part(&mut self, bytes: Vec<u8>) -> Result<(), ExportError> {
        let number = self.parts.len() as i32 + 1;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| unavailable(&format!("upload part {number} of {}", self.key), e))?;
        self.parts.push(
            CompletedPart::builder()
                .set_e_tag(out.e_tag().map(str::to_string))
                .part_number(number)
                .build(),
        );
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), ExportError> {
        if self.parts.is_empty() {
            self.part(Vec::new()).await?;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| unavailable(&format!("complete {}", self.key), e))?;
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
    }
}

#[async_trait]
impl ExportStorage for S3Storage {
    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, ExportError> {
        check_key(key)?;
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("text/csv")
            .send()
            .await
            .map_err(|e| unavailable(&format!("start upload of {key}"), e))?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| ExportError::Unavailable(format!("no upload id for {key}")))?
            .to_string();
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload_id,
            parts: Vec::new(),
        }))
    }

    async fn digest(&self, key: &str) -> Result<ObjectDigest, ExportError> {
        let mut body = self.get(key).await?;
        let mut digest = DigestWriter::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| unavailable(&format!("read {key}"), e))?;
            digest.update(&chunk);
        }
        Ok(digest.finish())
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, ExportError> {
        let bytes = self
            .get(key)
            .await?
            .collect()
            .await
            .map_err(|e| unavailable(&format!("read {key}"), e))?;
        Ok(bytes.into_bytes().to_vec())
    }

    async fn check(&self) -> Result<(), ExportError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| unavailable(&format!("bucket {}", self.bucket), e))?;
        Ok(())
    }

    fn location(&self) -> String {
        format!("s3://{}", self.bucket)
    }
}
