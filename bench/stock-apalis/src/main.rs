//! Stock apalis-postgres 1.0 on the same machine and database as `steward bench`: enqueue
//! (`push_all`) and execute rate of no-op jobs, one worker.
//!
//! `DATABASE_URL=postgres://… cargo run --release -- JOBS BATCH` (in this directory; it is
//! a separate crate, not built by the project's tests). Creates apalis's own schema.
use apalis::prelude::*;
use apalis_postgres::*;
use futures::stream::{self};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let jobs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let batch: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let pool = PgPool::connect(&url).await.unwrap();
    PostgresStorage::setup(&pool).await.unwrap();
    let queue = format!("bench{}", std::process::id());
    let mut backend = PostgresStorage::new(&pool).with_config(Config::default().queue(&queue).batch_size(batch));
    let started = Instant::now();
    let mut items = stream::iter((0..jobs).map(|i| TaskBuilder::new(i as u32).build()));
    backend.push_all(&mut items).await.unwrap();
    let enqueue_s = started.elapsed().as_secs_f64();
    let done = Arc::new(AtomicUsize::new(0));
    async fn noop(_: u32, count: Data<Arc<AtomicUsize>>, wrk: WorkerContext, total: Data<usize>) -> Result<(), BoxDynError> {
        if count.fetch_add(1, Ordering::Relaxed) + 1 == *total {
            wrk.stop().unwrap();
        }
        Ok(())
    }
    let worker = WorkerBuilder::new("stock-1")
        .backend(backend)
        .data(done.clone())
        .data(jobs)
        .build(noop);
    let started = Instant::now();
    worker.run().await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"scenario\":\"stock_apalis_postgres\",\"jobs\":{jobs},\"batch\":{batch},\"enqueue_jobs_per_s\":{:.0},\"execute_jobs_per_s\":{:.0}}}", jobs as f64 / enqueue_s, jobs as f64 / secs);
}
