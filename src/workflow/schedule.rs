//! Cron triggers: when a workflow fires next, in its own time zone.

use super::definition::{Trigger, WorkflowCatalog};
use chrono::{DateTime, Utc};

/// One upcoming fire time of a workflow's trigger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NextFire {
    pub workflow: String,
    pub cron: String,
    pub timezone: String,
    /// The next `count` fire times after `after`, in UTC.
    pub at: Vec<DateTime<Utc>>,
}

impl Trigger {
    /// The next `count` fire times strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.timezone))
            .take(count)
            .map(|at| at.with_timezone(&Utc))
            .collect()
    }
}

/// The next fire times of every triggered workflow, by name.
pub fn next_fires(catalog: &WorkflowCatalog, after: DateTime<Utc>, count: usize) -> Vec<NextFire> {
    catalog
        .iter()
        .filter_map(|workflow| {
            workflow.trigger.as_ref().map(|trigger| NextFire {
                workflow: workflow.name.clone(),
                cron: trigger.expression.clone(),
                timezone: trigger.timezone.name().to_string(),
                at: trigger.next_after(after, count),
            })
        })
        .collect()
}
