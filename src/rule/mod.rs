//! Rules at run time: the pure state machine and what it needs.

pub mod condition;
pub mod global;
pub mod instances;
pub mod limits;
pub mod machine;
pub mod names;
pub mod sim;
pub mod template;
pub mod types;

pub use machine::step;
pub use names::{EventKind, PageEvent, PhaseName, StateName};
pub use types::{
    ActionBudget, ActionResult, Effect, HaltReason, Incident, Input, Observation, Outcome, Page,
    PageKind, Pause, Phase, Record, RuleState, Sample, Shared, Status, Timestamp,
    UnrecoveredReason,
};
