//! A service built on steward: its own typed job kind (`greet`) and its own workflow step
//! (`example.shout`, used by `examples/workflows/shout.toml`), with steward's whole command line.
//!
//! ```sh
//! cargo run --example custom_app -- migrate
//! cargo run --example custom_app -- enqueue greet --payload '{"name": "Ana"}'
//! STEWARD_WORKFLOWS_DIR=examples/workflows cargo run --example custom_app -- run shout --param name=ana
//! STEWARD_WORKFLOWS_DIR=examples/workflows cargo run --example custom_app -- worker
//! ```

use serde::{Deserialize, Serialize};
use steward::{App, Job, JobContext};

/// Say hello to someone (recorded in the ledger table, where the tests read it).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Greet {
    name: String,
}

impl Job for Greet {
    const KIND: &'static str = "greet";
}

fn main() -> std::process::ExitCode {
    App::new()
        .job(|greet: Greet, ctx: JobContext| async move {
            let line = format!("hello {}", greet.name);
            ctx.store
                .ledger_append(ctx.job.id, &line, chrono::Utc::now())
                .await?;
            Ok(())
        })
        .step("example.shout", |ctx| {
            Box::pin(async move {
                let name = ctx
                    .params
                    .get("name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("world");
                Ok(serde_json::json!({ "shouted": name.to_uppercase() }))
            })
        })
        .run_cli()
}
