//! The shape of a workflow: which steps each step needs. A step without `needs` needs the step
//! declared before it (so a definition without `needs` is a chain, run one step after
//! another); `needs = [...]` names the steps it waits for, `[]` none (it starts with the run).
//! Steps that do not need each other run in parallel.
//!
//! A step needs only steps declared before it (checked at load), so the declared order is a
//! topological order: undoing completed steps from the last declared to the first is undoing
//! them in reverse topological order.

use super::definition::StepDef;
use crate::store::runs::{RunRecord, StepState};

/// The steps step `idx` needs, by position.
pub fn parents(steps: &[StepDef], idx: usize) -> Vec<i32> {
    match steps.get(idx).and_then(|s| s.needs.as_ref()) {
        Some(names) => names
            .iter()
            .filter_map(|name| steps.iter().position(|s| s.name == *name))
            .filter_map(|at| i32::try_from(at).ok())
            .collect(),
        None if idx == 0 => Vec::new(),
        None => i32::try_from(idx - 1).into_iter().collect(),
    }
}

/// The steps that need step `idx`, in declared order.
pub fn children(steps: &[StepDef], idx: usize) -> Vec<usize> {
    let Ok(me) = i32::try_from(idx) else {
        return Vec::new();
    };
    (0..steps.len())
        .filter(|&at| parents(steps, at).contains(&me))
        .collect()
}

/// The steps that start with the run (they need none).
pub fn roots(steps: &[StepDef]) -> Vec<usize> {
    (0..steps.len())
        .filter(|&at| parents(steps, at).is_empty())
        .collect()
}

/// True when the steps run one after another (each needs exactly the step before it): then a
/// step that no step needs is the last one, and completing it completes the run.
pub fn is_chain(steps: &[StepDef]) -> bool {
    (0..steps.len()).all(|at| match at {
        0 => parents(steps, 0).is_empty(),
        _ => parents(steps, at) == [i32::try_from(at - 1).unwrap_or(-1)],
    })
}

/// The steps a retry of `run` resets to pending: its dead and compensated steps and every
/// step downstream of one (its input was undone, so it runs again), in declared order.
pub fn to_redo(steps: &[StepDef], run: &RunRecord) -> Vec<usize> {
    let mut redo: Vec<usize> = Vec::new();
    for (at, record) in run.steps.iter().enumerate() {
        let undone = matches!(record.state, StepState::Dead | StepState::Compensated);
        let downstream = parents(steps, at)
            .iter()
            .any(|p| usize::try_from(*p).is_ok_and(|p| redo.contains(&p)));
        if undone || downstream {
            redo.push(at);
        }
    }
    redo
}

/// The steps that can start once the steps in `redo` are pending again: pending (or to redo)
/// with every step they need completed and not to be redone.
pub fn ready_after_reset(steps: &[StepDef], run: &RunRecord, redo: &[usize]) -> Vec<usize> {
    let done = |p: &i32| {
        usize::try_from(*p).is_ok_and(|p| {
            !redo.contains(&p)
                && run
                    .steps
                    .get(p)
                    .is_some_and(|s| s.state == StepState::Completed)
        })
    };
    (0..run.steps.len())
        .filter(|at| redo.contains(at) || run.steps[*at].state == StepState::Pending)
        .filter(|at| parents(steps, *at).iter().all(done))
        .collect()
}

/// What step `idx` reads as its input: the run's parameters for a step that needs none, the
/// output of the one step it needs, or `{"<step>": output, …}` of the several it needs.
pub fn input_of(steps: &[StepDef], run: &RunRecord, idx: usize) -> serde_json::Value {
    use serde_json::Value;
    let output = |p: usize| {
        run.steps
            .get(p)
            .and_then(|s| s.output.clone())
            .unwrap_or(Value::Null)
    };
    let parents: Vec<usize> = parents(steps, idx)
        .into_iter()
        .filter_map(|p| usize::try_from(p).ok())
        .collect();
    match parents.as_slice() {
        [] => run.params.clone(),
        [one] => output(*one),
        many => Value::Object(
            many.iter()
                .filter_map(|&p| steps.get(p).map(|s| (s.name.clone(), output(p))))
                .collect(),
        ),
    }
}

/// The steps by level, for drawing: a step's level is one more than the highest of the
/// steps it needs (0: it needs none); steps of one level can run in parallel.
pub fn levels(steps: &[StepDef]) -> Vec<Vec<usize>> {
    let mut level_of: Vec<usize> = Vec::with_capacity(steps.len());
    let mut levels: Vec<Vec<usize>> = Vec::new();
    for at in 0..steps.len() {
        let level = parents(steps, at)
            .iter()
            .filter_map(|p| usize::try_from(*p).ok())
            .filter_map(|p| level_of.get(p))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        level_of.push(level);
        if levels.len() <= level {
            levels.resize_with(level + 1, Vec::new);
        }
        levels[level].push(at);
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, needs: Option<&[&str]>) -> StepDef {
        StepDef {
            name: name.into(),
            handler: "step.noop".into(),
            job: "workflow_step".into(),
            compensate: None,
            wait: None,
            needs: needs.map(|n| n.iter().map(|s| s.to_string()).collect()),
            line: 0,
        }
    }

    #[test]
    fn without_needs_steps_form_a_chain() {
        let steps = vec![step("a", None), step("b", None), step("c", None)];
        assert!(is_chain(&steps));
        assert_eq!(roots(&steps), vec![0]);
        assert_eq!(parents(&steps, 2), vec![1]);
        assert_eq!(children(&steps, 0), vec![1]);
        assert!(children(&steps, 2).is_empty());
    }

    #[test]
    fn needs_make_a_diamond() {
        let steps = vec![
            step("a", None),
            step("b", Some(&["a"])),
            step("c", Some(&["a"])),
            step("d", Some(&["b", "c"])),
            step("e", Some(&[])),
        ];
        assert!(!is_chain(&steps));
        assert_eq!(roots(&steps), vec![0, 4]);
        assert_eq!(children(&steps, 0), vec![1, 2]);
        assert_eq!(parents(&steps, 3), vec![1, 2]);
        assert_eq!(children(&steps, 2), vec![3]);
        assert_eq!(levels(&steps), vec![vec![0, 4], vec![1, 2], vec![3]]);
    }
}
