//! Names users read — in `status`, the API, pages, the journal and test
//! files — as types: each enum has its `as_str`, its list of every value
//! and a parser, so nothing matches on free strings and a misspelt name
//! is a compile error, not a silent mismatch.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $var:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $var,)*
        }

        impl $name {
            /// Every value, in the order users read them.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $text,)*
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$var),)*
                    _ => None,
                }
            }

            /// `a, b, c`: for error messages that list what is allowed.
            pub fn list() -> String {
                $name::ALL.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, so `{:<11}` lines up columns as a `&str` would.
                f.pad(self.as_str())
            }
        }

    };
}

names! {
    /// A rule's state.
    StateName {
        Ok = "ok",
        Pending = "pending",
        Firing = "firing",
        Unrecovered = "unrecovered",
        Recovered = "recovered",
        Closed = "closed",
    }
}

names! {
    /// An open incident's phase; a rule without one shows its state.
    PhaseName {
        Ok = "ok",
        Pending = "pending",
        Recovered = "recovered",
        Closed = "closed",
        AwaitingApproval = "awaiting_approval",
        Acting = "acting",
        Verifying = "verifying",
        VerifyTimedOut = "verify_timed_out",
        ActionFailed = "action_failed",
        Interrupted = "interrupted",
        Vetoed = "vetoed",
        Aborted = "aborted",
        BudgetExhausted = "budget_exhausted",
        Paused = "paused",
    }
}

names! {
    /// What a page tells: a notifier's `events:` filter, the webhook's
    /// `event`, Slack's icon, the outbox's key.
    PageEvent {
        Opened = "opened",
        ApprovalRequested = "approval_requested",
        Approved = "approved",
        Vetoed = "vetoed",
        ApprovalTimedOut = "approval_timed_out",
        ActionsSucceeded = "actions_succeeded",
        ActionFailed = "action_failed",
        ActionInterrupted = "action_interrupted",
        BudgetExhausted = "budget_exhausted",
        Paused = "paused",
        Recovered = "recovered",
        Unrecovered = "unrecovered",
        Closed = "closed",
        StepStarted = "step_started",
        StepSucceeded = "step_succeeded",
        StepFailed = "step_failed",
        Blind = "blind",
        Seeing = "seeing",
        RuleUnevaluable = "rule_unevaluable",
        RuleEvaluable = "rule_evaluable",
        StateUnwritable = "state_unwritable",
        StateWritable = "state_writable",
        ReloadFailed = "reload_failed",
        JournalDamaged = "journal_damaged",
        LeaderChanged = "leader_changed",
        HaCannotAct = "ha_cannot_act",
        HaCanAct = "ha_can_act",
    }
}

names! {
    /// What a journal `event` line records.
    EventKind {
        Record = "record",
        Phase = "phase",
        Hold = "hold",
        Page = "page",
        Blind = "blind",
        Seeing = "seeing",
        Pause = "pause",
        Resume = "resume",
        Reload = "reload",
        ReloadFailed = "reload_failed",
        StateDir = "state_dir",
        Leader = "leader",
    }
}

// Written out: the enums come from `names!`, which derives no Default.
/// A rule that has not been evaluated yet is ok.
#[allow(clippy::derivable_impls)]
impl Default for StateName {
    fn default() -> Self {
        StateName::Ok
    }
}

#[allow(clippy::derivable_impls)]
impl Default for PhaseName {
    fn default() -> Self {
        PhaseName::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_through_text_and_json() {
        for e in PageEvent::ALL {
            assert_eq!(PageEvent::parse(e.as_str()), Some(*e));
            let json = serde_json::to_string(e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.as_str()));
            assert_eq!(serde_json::from_str::<PageEvent>(&json).unwrap(), *e);
        }
        for s in StateName::ALL {
            assert_eq!(StateName::parse(s.as_str()), Some(*s));
        }
        for p in PhaseName::ALL {
            assert_eq!(PhaseName::parse(p.as_str()), Some(*p));
        }
        assert_eq!(PageEvent::parse("opend"), None);
        assert!(StateName::list().starts_with("ok, pending, firing"));
        assert_eq!(format!("[{:<8}]", StateName::Firing), "[firing  ]");
    }
}
