//! The entity types of CONTRACT.md §3 and the keys they travel under.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityType {
    LogbookEntry,
    Goal,
    PracticePlan,
    PlanOccurrence,
    PlanTemplate,
    RepertoireItem,
    UserPreferences,
}

impl EntityType {
    pub const ALL: [EntityType; 7] = [
        EntityType::LogbookEntry,
        EntityType::Goal,
        EntityType::PracticePlan,
        EntityType::PlanOccurrence,
        EntityType::PlanTemplate,
        EntityType::RepertoireItem,
        EntityType::UserPreferences,
    ];

    /// The stored and wire name (`logbook_entry`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::LogbookEntry => "logbook_entry",
            EntityType::Goal => "goal",
            EntityType::PracticePlan => "practice_plan",
            EntityType::PlanOccurrence => "plan_occurrence",
            EntityType::PlanTemplate => "plan_template",
            EntityType::RepertoireItem => "repertoire_item",
            EntityType::UserPreferences => "user_preferences",
        }
    }

    /// The key under `changes` in a push and in a pull response (`entries`, ...).
    pub fn collection_key(self) -> &'static str {
        match self {
            EntityType::LogbookEntry => "entries",
            EntityType::Goal => "goals",
            EntityType::PracticePlan => "practicePlans",
            EntityType::PlanOccurrence => "planOccurrences",
            EntityType::PlanTemplate => "planTemplates",
            EntityType::RepertoireItem => "repertoire",
            EntityType::UserPreferences => "preferences",
        }
    }

    pub fn from_collection_key(key: &str) -> Option<EntityType> {
        EntityType::ALL
            .into_iter()
            .find(|t| t.collection_key() == key)
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown entity type")]
pub struct UnknownEntityType;

impl FromStr for EntityType {
    type Err = UnknownEntityType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntityType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or(UnknownEntityType)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in EntityType::ALL {
            assert_eq!(t.as_str().parse::<EntityType>(), Ok(t));
            assert_eq!(EntityType::from_collection_key(t.collection_key()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!("entries".parse::<EntityType>(), Err(UnknownEntityType));
        assert_eq!(EntityType::from_collection_key("logbook_entry"), None);
    }
}
