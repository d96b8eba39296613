//! Name registries. A crate registers what it provides with
//! `inventory::submit!`; the runtime finds it by name. Nothing here knows
//! which crates exist.

use crate::config::LoraConfig;
use crate::judge::{ChatGrader, Judge};
use crate::training::TrainStep;
use crate::Result;

pub use inventory;

pub use crate::metric::{metric, metrics, no_secondary, utility_scorer, MetricEntry, SecondaryScores, UtilityScorer};

/// A dataset a data crate can load.
pub struct DatasetEntry {
    pub name: &'static str,
    /// `task`, `harmful`, `eval-safety`, `eval-utility`, `alignment`.
    pub role: &'static str,
    pub splits: &'static str,
    pub source: &'static str,
    pub license: &'static str,
}

/// Which weights a method trains.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    Lora(LoraConfig),
    Full,
}

/// What a method contributes to a fine-tuning stage.
pub struct MethodPlan {
    pub trainable: Trainable,
    pub step: Box<dyn TrainStep>,
}

/// A fine-tuning method (`sft-lora`, `sft-full`).
pub struct MethodEntry {
    pub name: &'static str,
    pub description: &'static str,
    /// Builds the plan from the method's config table (JSON; `{}` for defaults); errors name
    /// `finetune.method_options.<name>.<key>`.
    pub build: fn(&serde_json::Value) -> Result<MethodPlan>,
    /// JSON Schema of the config table.
    pub schema: fn() -> serde_json::Value,
}

pub use crate::defense::Stage;

/// A registered defense (see [`crate::defense::Defense`] and `register_defense!`).
pub struct DefenseEntry {
    pub name: &'static str,
    pub description: &'static str,
    /// How it differs from its reference code ([`crate::defense::Defense::DIFFERS`]).
    pub differs: &'static str,
    /// Builds the plan from the spec's `defense_options.<name>` table (`null`: defaults).
    pub build: fn(&serde_json::Value) -> Result<crate::defense::DefensePlan>,
    /// The options with every default filled in (for cache keys).
    pub resolve: fn(&serde_json::Value) -> Result<serde_json::Value>,
    /// JSON Schema of the options.
    pub schema: fn() -> serde_json::Value,
}

impl DefenseEntry {
    /// The stages the defense touches with its default options.
    pub fn stages(&self) -> Result<Vec<Stage>> {
        Ok((self.build)(&serde_json::Value::Null)?.stages())
    }
}

pub struct JudgeEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub build: fn(&serde_json::Value) -> Result<Box<dyn Judge>>,
}

/// A grader: a chat model that grades answers ([`ChatGrader`]; MT-Bench's single-answer grading).
pub struct GraderEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub build: fn(&serde_json::Value) -> Result<Box<dyn ChatGrader>>,
}

inventory::collect!(DatasetEntry);
inventory::collect!(MethodEntry);
inventory::collect!(DefenseEntry);
inventory::collect!(JudgeEntry);
inventory::collect!(GraderEntry);

lookup!(datasets, dataset, DatasetEntry, "dataset");
lookup!(methods, method, MethodEntry, "method");
lookup!(defenses, defense, DefenseEntry, "defense");
lookup!(judges, judge, JudgeEntry, "judge");
lookup!(graders, grader, GraderEntry, "grader");

pub use crate::config::options;

/// The JSON Schema of a config type.
pub fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
}

/// Registers a [`crate::defense::Defense`] so that the runtime finds it by name:
/// `safetune_core::register_defense!(Lisa);`
#[macro_export]
macro_rules! register_defense {
    ($t:ty) => {
        $crate::registry::inventory::submit! {
            $crate::registry::DefenseEntry {
                name: <$t as $crate::defense::Defense>::NAME,
                description: <$t as $crate::defense::Defense>::DESCRIPTION,
                differs: <$t as $crate::defense::Defense>::DIFFERS,
                build: $crate::defense::build_plan::<$t>,
                resolve: $crate::defense::resolve_options::<$t>,
                schema: $crate::defense::options_schema::<$t>,
            }
        }
    };
}
