//! Name registries. A crate registers what it provides with
//! `inventory::submit!`; the runtime finds it by name. Nothing here knows
//! which crates exist.

use crate::config::LoraConfig;
use crate::judge::Judge;
use crate::training::TrainStep;
use crate::Result;

pub use inventory;

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

/// A metric (`safetune list metrics`). Safety metrics are computed from the
/// judge's verdicts by the evaluation; a utility metric also brings its scorer,
/// which a task names by `id` (`UtilityMetric`), so a new one is this entry alone.
pub struct MetricEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub utility: Option<UtilityScorer>,
}

/// How a utility metric scores one answer against its reference.
pub struct UtilityScorer {
    /// The id tasks and results use (`labels`, `final-number`, `rouge-l`, ...).
    pub id: &'static str,
    /// The column name in tables (`accuracy`, `exact match`, ...).
    pub table_name: &'static str,
    /// Score of one answer (`labels`: the task's labels, empty when it has none).
    pub score: fn(labels: &[String], answer: &str, reference: &str) -> crate::judge::UtilityScore,
    /// Scores reported beside the main one (`schema`: the example's database schema, for
    /// SQL); `None` values are left out of the mean.
    pub secondary: fn(answer: &str, reference: &str, schema: Option<&str>) -> SecondaryScores,
}

/// Named scores of one answer beside the main one (`None`: not defined for this answer).
pub type SecondaryScores = Vec<(&'static str, Option<f64>)>;

/// No secondary scores.
pub fn no_secondary(_: &str, _: &str, _: Option<&str>) -> SecondaryScores {
    Vec::new()
}

inventory::collect!(DatasetEntry);
inventory::collect!(MethodEntry);
inventory::collect!(DefenseEntry);
inventory::collect!(JudgeEntry);
inventory::collect!(MetricEntry);

macro_rules! lookup {
    ($all:ident, $find:ident, $ty:ty, $what:literal) => {
        /// Every registered entry, sorted by name.
        pub fn $all() -> Vec<&'static $ty> {
            let mut v: Vec<&'static $ty> = inventory::iter::<$ty>.into_iter().collect();
            v.sort_by_key(|e| e.name);
            v
        }
        /// The entry of that name, or an error listing the known names.
        pub fn $find(name: &str) -> Result<&'static $ty> {
            $all().into_iter().find(|e| e.name == name).ok_or_else(|| {
                let known: Vec<&str> = $all().iter().map(|e| e.name).collect();
                anyhow::anyhow!(concat!("unknown ", $what, " `{}` (known: {})"), name, known.join(", "))
            })
        }
    };
}

lookup!(datasets, dataset, DatasetEntry, "dataset");
lookup!(methods, method, MethodEntry, "method");
lookup!(defenses, defense, DefenseEntry, "defense");
lookup!(judges, judge, JudgeEntry, "judge");
lookup!(metrics, metric, MetricEntry, "metric");

/// The scorer of the utility metric with that id, or an error listing the known ids.
pub fn utility_scorer(id: &str) -> Result<&'static UtilityScorer> {
    let all: Vec<&'static UtilityScorer> = metrics().into_iter().filter_map(|m| m.utility.as_ref()).collect();
    all.iter().find(|s| s.id == id).copied().ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|s| s.id).collect();
        anyhow::anyhow!("unknown utility metric `{id}` (known: {})", known.join(", "))
    })
}

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
                build: $crate::defense::build_plan::<$t>,
                resolve: $crate::defense::resolve_options::<$t>,
                schema: $crate::defense::options_schema::<$t>,
            }
        }
    };
}
