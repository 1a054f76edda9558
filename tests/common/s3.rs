//! A real S3-compatible server in process (s3s-fs over hyper, on loopback) for the tests
//! that export to S3, and that stop it to see an outage.

use std::path::Path;
use std::sync::Arc;
use steward::export::SharedExports;

const S3_KEY: &str = "steward-test-key";
const S3_SECRET: &str = "steward-test-secret";
const BUCKET: &str = "exports";

/// s3s-fs over hyper on loopback; `stop` drops the listener and every open connection.
pub struct S3Server {
    addr: std::net::SocketAddr,
    root: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    pub async fn start(root: &Path, port: u16) -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder;
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(S3_KEY, S3_SECRET));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                connections.spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        S3Server {
            addr,
            root: root.to_path_buf(),
            task,
        }
    }

    pub async fn stop(self) -> (std::path::PathBuf, u16) {
        self.task.abort();
        let _ = self.task.await;
        (self.root, self.addr.port())
    }

    pub fn storage(&self) -> SharedExports {
        storage_at(self.addr)
    }
}

/// The export storage of a server at `addr` (whether or not one listens there).
pub fn storage_at(addr: std::net::SocketAddr) -> SharedExports {
    Arc::new(steward::export::s3::S3Storage::new(
        BUCKET,
        Some(&format!("http://{addr}")),
        "us-east-1",
        true,
        Some(steward::export::s3::Credentials::new(
            S3_KEY, S3_SECRET, None, None, "test",
        )),
    ))
}
