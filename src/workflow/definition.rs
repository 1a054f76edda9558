//! Workflow definitions, one per file in `workflows/*.toml`.
//!
//! ```toml
//! name = "provision_module"
//! description = "Provision a module for a tenant"
//! concurrency_key = "{tenant}:{module}"   # one run at a time per key (placeholders: params)
//! operation = "request, approve"         # optional: started only by these operations, never
//!                                        # with raw parameters over the API or `steward run`
//!
//! started_by = ["master_admin", "service"] # optional: the roles that may start it over the
//!                                        # API (and `steward run`); without it, none may
//!
//! [params]                                # `type`: string, integer, number, boolean, date
//! tenant = { required = true, type = "integer" }  #   (YYYY-MM-DD), object or array; required
//! module = { required = true, type = "string" }   #   for every parameter of a workflow
//! notes = { default = "", type = "string" }       #   with `started_by`
//!
//! [trigger]                               # optional: without it, API/CLI only
//! cron = "0 30 2 * * *"                   # sec min hour day-of-month month day-of-week
//! timezone = "America/Sao_Paulo"          # default UTC
//! missed = "skip"                         # ticks missed while down: skip (default) | run_once
//!
//! [[steps]]
//! name = "create_tables"
//! handler = "provision.create_tables"     # a registered step handler
//! job = "workflow_step"                   # the job kind (jobs/) that runs the step
//! compensate = "provision.drop_tables"    # optional: undoes the step if a later one dies
//!
//! [signals]                               # optional: what may be sent to its runs
//! approval = { sent_by = ["master_admin"] } #   (POST /api/runs/{id}/signal/approval); an
//!                                         #   empty `sent_by`: only steward's operations
//! [[steps]]                               # durable waits hold no worker and survive restarts:
//! name = "await_approval"                 # `wait.signal` waits for a declared signal (its
//! handler = "wait.signal"                 #   payload is the step's output) …
//! job = "workflow_step"
//! signal = "approval"
//! timeout_secs = 604800                   #   … at most this long (optional), then
//! on_timeout = "fail"                     #   fail (default) or continue
//! [[steps]]
//! name = "until_sunset"                   # `wait.until` sleeps until a time: a parameter,
//! handler = "wait.until"                  #   or `input.<field>` of the previous step's
//! job = "workflow_step"                   #   output (RFC 3339, or a date: midnight UTC)
//! until = "sunset_date"
//! [[steps]]                               # steps run one after another; `needs` names the
//! name = "notify_billing"                 #   steps a step waits for instead (declared before
//! handler = "billing.notify"              #   it; `[]`: it starts with the run), so steps
//! job = "workflow_step"                   #   that do not need each other run in parallel,
//! needs = ["create_tables"]               #   and a step with several reads their outputs
//! ```
//!
//! Validation happens at load: unknown handler, unknown job kind, bad cron or time zone,
//! duplicate step name, a step needing a step not declared before it, a concurrency key
//! naming an unknown parameter → an error with the
//! file, the line and the problem.

use crate::kinds::KindCatalog;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use toml::Spanned;

/// A workflow definition that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A definition is malformed.
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// What to do with cron ticks that passed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedTicks {
    /// Forget them; fire at the next tick.
    #[default]
    Skip,
    /// Fire once for all of them, then resume.
    RunOnce,
}

/// A cron trigger.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The expression as written.
    pub expression: String,
    pub schedule: cron::Schedule,
    pub timezone: chrono_tz::Tz,
    pub missed: MissedTicks,
}

/// The declared type of a run parameter (the same declarations as a job kind's payload).
pub use crate::fields::FieldType as ParamType;

/// A parameter a run takes.
pub use crate::fields::FieldDef as ParamDef;

/// One step of a workflow (as a run records it: without its line).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct StepDef {
    pub name: String,
    pub handler: String,
    /// The job kind whose queue, attempts, backoff and timeout the step runs with.
    pub job: String,
    pub compensate: Option<String>,
    /// What a `wait.signal` or `wait.until` step waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// The steps this one waits for (`needs = [...]`, each declared before it); `None`: the
    /// step before it (see [`super::graph`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<String>>,
    #[serde(skip)]
    pub line: usize,
}

/// A durable wait (see the module's example).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wait {
    /// For a declared signal, at most `timeout_secs` (none: for ever).
    Signal {
        signal: String,
        timeout_secs: Option<u64>,
        on_timeout: OnTimeout,
    },
    /// Until the time a parameter, or `input.<field>`, holds.
    Until { until: String },
}

/// What a signal wait does when its timeout passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The step dies: the run compensates and fails.
    #[default]
    Fail,
    /// The step completes with `{"timed_out": true}`; the run goes on.
    Continue,
}

/// A signal a workflow's runs accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalDef {
    pub name: String,
    /// The roles that may send it over the API and the CLI; empty: only steward's operations.
    pub sent_by: Vec<String>,
}

/// The built-in handlers of durable waits.
pub const WAIT_SIGNAL: &str = "wait.signal";
pub const WAIT_UNTIL: &str = "wait.until";

/// The version of a list of steps: the first 12 hex digits of the SHA-256 of their JSON.
pub fn version_of(steps: &[StepDef]) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(steps).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(&json))[..12].to_string()
}

/// A validated workflow.
#[derive(Debug, Clone)]
pub struct WorkflowDef {
    pub name: String,
    pub description: Option<String>,
    pub params: Vec<ParamDef>,
    pub steps: Vec<StepDef>,
    pub trigger: Option<Trigger>,
    pub concurrency_key: Option<String>,
    /// The operations that start this workflow (e.g. `request, approve`): its runs are never
    /// started with raw parameters from the API or `steward run`, nor retried around them.
    pub operation: Option<String>,
    /// The roles (`master_admin`, `service`, `tenant_admin`) that may start it with
    /// parameters over the API or `steward run`; empty: none.
    pub started_by: Vec<String>,
    /// The signals its runs accept.
    pub signals: Vec<SignalDef>,
    /// The steps' version ([`version_of`]): what a run started now records.
    pub version: String,
    pub source: PathBuf,
    pub line: usize,
}

/// The roles a definition's `started_by` may name.
pub use crate::fields::ROLES;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    name: Spanned<String>,
    description: Option<String>,
    concurrency_key: Option<Spanned<String>>,
    operation: Option<String>,
    #[serde(default)]
    started_by: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<crate::fields::FieldFile>>,
    trigger: Option<Spanned<TriggerFile>>,
    #[serde(default)]
    signals: BTreeMap<String, Spanned<SignalFile>>,
    steps: Spanned<Vec<Spanned<StepFile>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalFile {
    #[serde(default)]
    sent_by: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerFile {
    cron: Spanned<String>,
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    missed: MissedTicks,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: Spanned<String>,
    handler: Spanned<String>,
    job: Spanned<String>,
    compensate: Option<Spanned<String>>,
    signal: Option<Spanned<String>>,
    timeout_secs: Option<u64>,
    on_timeout: Option<OnTimeout>,
    until: Option<Spanned<String>>,
    needs: Option<Spanned<Vec<String>>>,
}

/// A step's wait, checked against its handler and the declared signals.
fn step_wait(s: &StepFile, signals: &[SignalDef]) -> Result<Option<Wait>, String> {
    let handler = s.handler.get_ref().as_str();
    let has_signal_fields =
        s.signal.is_some() || s.timeout_secs.is_some() || s.on_timeout.is_some();
    match handler {
        WAIT_SIGNAL => {
            if s.until.is_some() {
                return Err("a wait.signal step takes no `until`".into());
            }
            let signal = s
                .signal
                .as_ref()
                .ok_or("a wait.signal step names its `signal`")?
                .get_ref()
                .clone();
            if !signals.iter().any(|d| d.name == signal) {
                return Err(format!("signal `{signal}` is not declared in [signals]"));
            }
            if s.timeout_secs == Some(0) {
                return Err("timeout_secs must be at least 1".into());
            }
            Ok(Some(Wait::Signal {
                signal,
                timeout_secs: s.timeout_secs,
                on_timeout: s.on_timeout.unwrap_or_default(),
            }))
        }
        WAIT_UNTIL => {
            if has_signal_fields {
                return Err("a wait.until step takes only `until`".into());
            }
            let until = s
                .until
                .as_ref()
                .ok_or("a wait.until step names its `until`")?;
            Ok(Some(Wait::Until {
                until: until.get_ref().clone(),
            }))
        }
        _ if has_signal_fields || s.until.is_some() => Err(format!(
            "`signal`, `timeout_secs`, `on_timeout` and `until` belong to {WAIT_SIGNAL} and {WAIT_UNTIL} steps"
        )),
        _ => Ok(None),
    }
}

/// Every workflow, by name.
#[derive(Debug, Clone, Default)]
pub struct WorkflowCatalog {
    workflows: BTreeMap<String, WorkflowDef>,
}

use crate::definitions::{line_of, read_toml_dir};

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c))
}

/// The `{placeholder}` names of a template, or the problem with it.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        names.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unopened `}}` in `{template}`"));
    }
    Ok(names)
}

impl WorkflowCatalog {
    /// Load every `*.toml` in a directory, checking job kinds against `kinds` and step
    /// handlers with `is_handler`.
    pub fn load_dir(
        dir: &Path,
        kinds: &KindCatalog,
        is_handler: &dyn Fn(&str) -> bool,
    ) -> Result<Self, WorkflowError> {
        let files =
            read_toml_dir(dir).map_err(|(path, source)| WorkflowError::Io { path, source })?;
        let mut catalog = Self::default();
        for (path, text) in files {
            catalog.add(Self::parse(&path, &text, kinds, is_handler)?)?;
        }
        Ok(catalog)
    }

    /// Parse and validate one definition.
    pub fn parse(
        path: &Path,
        text: &str,
        kinds: &KindCatalog,
        is_handler: &dyn Fn(&str) -> bool,
    ) -> Result<WorkflowDef, WorkflowError> {
        let invalid = |line: usize, message: String| WorkflowError::Invalid {
            path: path.to_path_buf(),
            line,
            message,
        };
        let file: WorkflowFile = toml::from_str(text).map_err(|err| {
            let line = err.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            invalid(line, err.message().to_string())
        })?;
        let at = |span: std::ops::Range<usize>| line_of(text, span.start);

        let name = file.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(invalid(
                at(file.name.span()),
                format!(
                    "workflow name `{name}` must be 1-64 of a-z, 0-9, _, - and ., starting with a letter"
                ),
            ));
        }

        let params = crate::fields::parse(&file.params, "parameter", valid_name)
            .map_err(|(offset, message)| invalid(line_of(text, offset), message))?;

        let started_by = match &file.started_by {
            Some(roles) => {
                let line = at(roles.span());
                if let Some(bad) = roles
                    .get_ref()
                    .iter()
                    .find(|r| !ROLES.contains(&r.as_str()))
                {
                    return Err(invalid(
                        line,
                        format!(
                            "started_by: unknown role `{bad}` (known: {})",
                            ROLES.join(", ")
                        ),
                    ));
                }
                if file.operation.is_some() {
                    return Err(invalid(
                        line,
                        "a workflow started by an operation cannot also name started_by".into(),
                    ));
                }
                if let Some(untyped) = params.iter().find(|p| p.kind.is_none()) {
                    return Err(invalid(
                        line,
                        format!(
                            "parameter `{}` needs a type: the workflow is started from outside \
                             (started_by)",
                            untyped.name
                        ),
                    ));
                }
                roles.get_ref().clone()
            }
            None => Vec::new(),
        };

        let concurrency_key = match &file.concurrency_key {
            Some(key) => {
                let names = placeholders(key.get_ref()).map_err(|e| invalid(at(key.span()), e))?;
                if let Some(unknown) = names.iter().find(|n| !file.params.contains_key(**n)) {
                    return Err(invalid(
                        at(key.span()),
                        format!("concurrency_key names `{unknown}`, which is not a parameter"),
                    ));
                }
                Some(key.get_ref().clone())
            }
            None => None,
        };

        if file.steps.get_ref().is_empty() {
            return Err(invalid(
                at(file.steps.span()),
                "a workflow needs at least one step".into(),
            ));
        }
        let mut signals = Vec::new();
        for (name, signal) in &file.signals {
            if !valid_name(name) {
                return Err(invalid(
                    at(signal.span()),
                    format!("signal name `{name}` is not valid"),
                ));
            }
            let sent_by = &signal.get_ref().sent_by;
            if let Some(bad) = sent_by.iter().find(|r| !ROLES.contains(&r.as_str())) {
                return Err(invalid(
                    at(signal.span()),
                    format!(
                        "signal `{name}`: unknown role `{bad}` (known: {})",
                        ROLES.join(", ")
                    ),
                ));
            }
            signals.push(SignalDef {
                name: name.clone(),
                sent_by: sent_by.clone(),
            });
        }
        let mut seen = HashSet::new();
        let mut steps = Vec::new();
        for step in file.steps.get_ref() {
            let s = step.get_ref();
            let line = at(s.name.span());
            let step_name = s.name.get_ref();
            if !valid_name(step_name) {
                return Err(invalid(
                    line,
                    format!("step name `{step_name}` is not valid"),
                ));
            }
            if !seen.insert(step_name.clone()) {
                return Err(invalid(line, format!("duplicate step name `{step_name}`")));
            }
            if !is_handler(s.handler.get_ref()) {
                return Err(invalid(
                    at(s.handler.span()),
                    format!("unknown step handler `{}`", s.handler.get_ref()),
                ));
            }
            if kinds.get(s.job.get_ref()).is_none() {
                return Err(invalid(
                    at(s.job.span()),
                    format!(
                        "unknown job kind `{}` (declare it in jobs/)",
                        s.job.get_ref()
                    ),
                ));
            }
            if let Some(compensate) = &s.compensate
                && !is_handler(compensate.get_ref())
            {
                return Err(invalid(
                    at(compensate.span()),
                    format!("unknown compensation handler `{}`", compensate.get_ref()),
                ));
            }
            let wait = step_wait(s, &signals).map_err(|m| invalid(line, m))?;
            if let Some(Wait::Until { until }) = &wait
                && !until.starts_with("input.")
                && !file.params.contains_key(until)
            {
                return Err(invalid(
                    line,
                    format!("until = `{until}` is neither a parameter nor input.<field>"),
                ));
            }
            if let Some(needs) = &s.needs {
                let mut named = HashSet::new();
                for need in needs.get_ref() {
                    if !named.insert(need) {
                        return Err(invalid(
                            at(needs.span()),
                            format!("step `{step_name}` needs `{need}` twice"),
                        ));
                    }
                    if !steps.iter().any(|d: &StepDef| d.name == *need) {
                        return Err(invalid(
                            at(needs.span()),
                            format!(
                                "step `{step_name}` needs `{need}`, which is not a step declared \
                                 before it (steps are declared in an order where each comes \
                                 after the steps it needs)"
                            ),
                        ));
                    }
                }
            }
            steps.push(StepDef {
                needs: s.needs.as_ref().map(|n| n.get_ref().clone()),
                name: step_name.clone(),
                handler: s.handler.get_ref().clone(),
                job: s.job.get_ref().clone(),
                compensate: s.compensate.as_ref().map(|c| c.get_ref().clone()),
                wait,
                line,
            });
        }

        let trigger = match &file.trigger {
            Some(trigger) => {
                let t = trigger.get_ref();
                let expression = t.cron.get_ref().clone();
                let schedule =
                    parse_cron(&expression).map_err(|why| invalid(at(t.cron.span()), why))?;
                let timezone = match &t.timezone {
                    Some(zone) => chrono_tz::Tz::from_str(zone.get_ref()).map_err(|_| {
                        invalid(
                            at(zone.span()),
                            format!("unknown time zone `{}`", zone.get_ref()),
                        )
                    })?,
                    None => chrono_tz::UTC,
                };
                if let Some(required) = params.iter().find(|p| p.required) {
                    return Err(invalid(
                        at(trigger.span()),
                        format!(
                            "a cron trigger cannot fill the required parameter `{}`; give it a default",
                            required.name
                        ),
                    ));
                }
                Some(Trigger {
                    expression,
                    schedule,
                    timezone,
                    missed: t.missed,
                })
            }
            None => None,
        };

        Ok(WorkflowDef {
            version: version_of(&steps),
            name,
            description: file.description,
            params,
            steps,
            trigger,
            concurrency_key,
            operation: file.operation,
            started_by,
            signals,
            source: path.to_path_buf(),
            line: at(file.name.span()),
        })
    }

    /// Add a parsed workflow (a second one of the same name is refused).
    pub fn add(&mut self, workflow: WorkflowDef) -> Result<(), WorkflowError> {
        if let Some(existing) = self.workflows.get(&workflow.name) {
            return Err(WorkflowError::Invalid {
                path: workflow.source.clone(),
                line: workflow.line,
                message: format!(
                    "workflow `{}` is already defined in {}:{}",
                    workflow.name,
                    existing.source.display(),
                    existing.line
                ),
            });
        }
        self.workflows.insert(workflow.name.clone(), workflow);
        Ok(())
    }

    /// A workflow by name.
    pub fn get(&self, name: &str) -> Option<&WorkflowDef> {
        self.workflows.get(name)
    }

    /// Every workflow, by name.
    pub fn iter(&self) -> impl Iterator<Item = &WorkflowDef> {
        self.workflows.values()
    }
}

/// A cron expression as crontab writes it (five fields: minute, hour, day of month, month,
/// day of week) or with seconds first (six, or seven with a year).
pub fn parse_cron(expression: &str) -> Result<cron::Schedule, String> {
    let fields = expression.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expression}"),
        6 | 7 => expression.to_string(),
        _ => {
            return Err(format!(
                "bad cron expression `{expression}`: {fields} fields; give five (minute hour \
                 day-of-month month day-of-week, e.g. `15 1 * * *`) or six with seconds first"
            ));
        }
    };
    cron::Schedule::from_str(&full).map_err(|e| {
        format!(
            "bad cron expression `{expression}`: {e} (fields: minute hour day-of-month month \
             day-of-week, with an optional seconds field first)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::JobKind;

    fn kinds() -> KindCatalog {
        let mut kinds = KindCatalog::default();
        kinds
            .add(JobKind::new("workflow_step", "workflows"))
            .expect("kind");
        kinds
    }

    fn parse(text: &str) -> Result<WorkflowDef, WorkflowError> {
        let known = |h: &str| h.starts_with("ok.");
        WorkflowCatalog::parse(Path::new("workflows/w.toml"), text, &kinds(), &known)
    }

    const GOOD: &str = r#"name = "nightly"
[params]
days = { default = 30 }
[trigger]
cron = "0 30 2 * * *"
timezone = "America/Sao_Paulo"
missed = "run_once"

[[steps]]
name = "export"
handler = "ok.export"
job = "workflow_step"
compensate = "ok.undo"

[[steps]]
name = "delete"
handler = "ok.delete"
job = "workflow_step"
"#;

    #[test]
    fn waits_name_declared_signals_and_known_times() {
        let parse_waits = |text: &str| {
            let known = |h: &str| h.starts_with("wait.") || h.starts_with("ok.");
            WorkflowCatalog::parse(Path::new("workflows/w.toml"), text, &kinds(), &known)
        };
        let head = "name = \"w\"\n[params]\nat = { default = \"2027-01-01\" }\n\
                    [signals]\ngo = { sent_by = [\"master_admin\"] }\n[[steps]]\nname = \"s\"\n\
                    job = \"workflow_step\"\n";
        let def = parse_waits(&format!(
            "{head}handler = \"wait.signal\"\nsignal = \"go\"\ntimeout_secs = 60\non_timeout = \"continue\"\n"
        ))
        .unwrap();
        assert_eq!(
            def.steps[0].wait,
            Some(Wait::Signal {
                signal: "go".into(),
                timeout_secs: Some(60),
                on_timeout: OnTimeout::Continue
            })
        );
        assert_eq!(def.signals[0].sent_by, ["master_admin"]);
        let err = |text: String| parse_waits(&text).unwrap_err().to_string();
        assert!(
            err(format!(
                "{head}handler = \"wait.signal\"\nsignal = \"stop\"\n"
            ))
            .contains("signal `stop` is not declared")
        );
        assert!(
            err(format!(
                "{head}handler = \"wait.until\"\nuntil = \"when\"\n"
            ))
            .contains("neither a parameter nor input.<field>")
        );
        assert!(
            err(format!("{head}handler = \"ok.x\"\nsignal = \"go\"\n"))
                .contains("belong to wait.signal and wait.until steps")
        );
        assert!(parse_waits(&format!("{head}handler = \"wait.until\"\nuntil = \"at\"\n")).is_ok());
    }

    #[test]
    fn a_valid_definition_loads_with_its_next_fire_times() {
        let workflow = parse(GOOD).expect("valid");
        assert_eq!(workflow.steps.len(), 2);
        assert_eq!(workflow.steps[0].compensate.as_deref(), Some("ok.undo"));
        let trigger = workflow.trigger.expect("trigger");
        assert_eq!(trigger.missed, MissedTicks::RunOnce);
        let after = chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let next = trigger.next_after(after, 2);
        // 02:30 in São Paulo (UTC-3) is 05:30 UTC.
        assert_eq!(next[0].to_rfc3339(), "2026-11-24T05:30:00+00:00");
        assert_eq!(next[1].to_rfc3339(), "2026-11-25T05:30:00+00:00");
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn a_step_needs_only_steps_declared_before_it() {
        let needs = |list: &str| {
            GOOD.replace(
                "handler = \"ok.delete\"",
                &format!("handler = \"ok.delete\"\nneeds = {list}"),
            )
        };
        let def = parse(&needs("[\"export\"]")).expect("valid");
        assert_eq!(def.steps[1].needs, Some(vec!["export".to_string()]));
        assert_eq!(def.version, version_of(&def.steps));
        assert_ne!(
            def.version,
            parse(GOOD).expect("valid").version,
            "needs are part of the version"
        );
        assert!(parse(&needs("[]")).is_ok(), "a second root");
        assert_eq!(
            error(&needs("[\"delete\"]")),
            "workflows/w.toml:18: step `delete` needs `delete`, which is not a step declared \
             before it (steps are declared in an order where each comes after the steps it \
             needs)"
        );
        assert!(error(&needs("[\"later\"]")).contains("needs `later`"));
        assert!(error(&needs("[\"export\", \"export\"]")).contains("needs `export` twice"));
    }

    #[test]
    fn malformed_definitions_name_file_and_line() {
        let unknown_handler = GOOD.replace("ok.delete", "nope.delete");
        assert_eq!(
            error(&unknown_handler),
            "workflows/w.toml:17: unknown step handler `nope.delete`"
        );
        let unknown_kind = GOOD.replacen("job = \"workflow_step\"", "job = \"mystery\"", 1);
        assert_eq!(
            error(&unknown_kind),
            "workflows/w.toml:12: unknown job kind `mystery` (declare it in jobs/)"
        );
        let bad_cron = GOOD.replace("0 30 2 * * *", "every night");
        assert!(
            error(&bad_cron).starts_with("workflows/w.toml:5: bad cron expression `every night`")
        );
        let bad_zone = GOOD.replace("America/Sao_Paulo", "Mars/Olympus");
        assert_eq!(
            error(&bad_zone),
            "workflows/w.toml:6: unknown time zone `Mars/Olympus`"
        );
        let duplicate = GOOD.replace("name = \"delete\"", "name = \"export\"");
        assert_eq!(
            error(&duplicate),
            "workflows/w.toml:16: duplicate step name `export`"
        );
        let bad_compensation = GOOD.replace("ok.undo", "undo");
        assert_eq!(
            error(&bad_compensation),
            "workflows/w.toml:13: unknown compensation handler `undo`"
        );
        let unknown_field = GOOD.replace(
            "missed = \"run_once\"",
            "missed = \"run_once\"\nretries = 3",
        );
        assert!(
            error(&unknown_field).starts_with("workflows/w.toml:8:"),
            "{}",
            error(&unknown_field)
        );
        let bad_missed = GOOD.replace("run_once", "sometimes");
        assert!(
            error(&bad_missed).starts_with("workflows/w.toml:7:"),
            "{}",
            error(&bad_missed)
        );
        let no_steps = "name = \"x\"\nsteps = []\n";
        assert_eq!(
            error(no_steps),
            "workflows/w.toml:2: a workflow needs at least one step"
        );
        let key = GOOD.replace(
            "name = \"nightly\"",
            "name = \"nightly\"\nconcurrency_key = \"{tenant}\"",
        );
        assert_eq!(
            error(&key),
            "workflows/w.toml:2: concurrency_key names `tenant`, which is not a parameter"
        );
        let required = GOOD.replace("days = { default = 30 }", "days = { required = true }");
        assert!(error(&required).contains("cannot fill the required parameter `days`"));
        let syntax = "name = \"x\"\n[[steps]\n";
        assert!(
            error(syntax).starts_with("workflows/w.toml:2:"),
            "{}",
            error(syntax)
        );
    }

    #[test]
    fn cron_takes_five_fields_as_crontab_does_or_six_with_seconds() {
        use chrono::TimeZone;
        let after = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap();
        let five = super::parse_cron("15 1 * * *").unwrap();
        let six = super::parse_cron("0 15 1 * * *").unwrap();
        let expected = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 1, 15, 0).unwrap();
        assert_eq!(five.after(&after).next(), Some(expected));
        assert_eq!(six.after(&after).next(), Some(expected));
        let err = super::parse_cron("15 1 *").unwrap_err();
        assert!(err.contains("give five"), "{err}");
        let err = super::parse_cron("61 1 * * *").unwrap_err();
        assert!(err.contains("minute hour"), "{err}");
    }
}
