//! The run specification (TOML). Unknown keys are rejected; every range is
//! checked before anything runs, with errors that name the field.

use std::collections::BTreeMap;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::config::{no_repeats, LoraConfig, TrainConfig};
use safetune_core::Result;
pub use safetune_eval::EvalSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod load;
pub(crate) use load::read_driver;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Another spec file (relative to this one) that this file overlays; resolved by the loader.
    #[serde(default, skip_serializing)]
    pub extends: Option<String>,
    /// Results go to `<out>/<name>/`.
    pub name: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Several seeds: one sub-run per seed (and per task of `data.tasks`) under
    /// `<out>/<name>/runs/<task>-s<seed>/`, aggregated across seeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    pub model: ModelSpec,
    #[serde(default)]
    pub data: DataSpec,
    pub alignment: AlignmentStage,
    pub finetune: FinetuneStage,
    #[serde(default)]
    pub eval: EvalSpec,
    /// Options per defense (`[defense_options.lisa]`); defaults are the papers'.
    #[serde(default)]
    pub defense_options: BTreeMap<String, serde_json::Value>,
}

/// The JSON Schema of run specs, as `safetune schema` prints it and
/// `docs/spec.schema.json` keeps it (a test checks the two agree).
pub fn schema_json() -> Result<String> {
    let mut root = serde_json::to_value(schemars::schema_for!(RunSpec))?;
    let registry = safetune_core::registry::defenses().into_iter().map(|d| (d.name, (d.schema)()));
    let defenses = typed_tables(&mut root, registry)?;
    root["properties"]["defense_options"] = serde_json::json!({
        "description": "Options per defense (`[defense_options.lisa]`); defaults are the papers' (each defense's README).",
        "type": "object", "properties": defenses, "additionalProperties": false, "default": {},
    });
    let methods = typed_tables(&mut root, safetune_core::registry::methods().into_iter().map(|m| (m.name, (m.schema)())))?;
    root["$defs"]["FinetuneStage"]["properties"]["method_options"] = serde_json::json!({
        "description": "Options per method (`[finetune.method_options.sft-lora]`: the LoRA settings).",
        "type": "object", "properties": methods, "additionalProperties": false, "default": {},
    });
    Ok(serde_json::to_string_pretty(&root)?)
}

/// The registered entries' option schemas by name, their definitions hoisted into the
/// root's `$defs` (a name two schemas define differently is a bug).
fn typed_tables(
    root: &mut serde_json::Value,
    entries: impl Iterator<Item = (&'static str, serde_json::Value)>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut props = serde_json::Map::new();
    for (name, mut schema) in entries {
        let obj = schema.as_object_mut().ok_or_else(|| anyhow!("`{name}`: its options schema is not an object"))?;
        obj.remove("$schema");
        if let Some(serde_json::Value::Object(defs)) = obj.remove("$defs") {
            for (def, body) in defs {
                let slot = &mut root["$defs"][&def];
                if !slot.is_null() && *slot != body {
                    bail!("`{name}`: its options define `{def}` unlike another schema");
                }
                *slot = body;
            }
        }
        props.insert(name.to_string(), schema);
    }
    Ok(props)
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_seed() -> u64 {
    42
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A known model name (`smollm2-135m-instruct`), a `.gguf` file or a Hugging Face directory.
    pub source: String,
}

/// The `[data]` table: the data crate's selection, used as it is.
pub use safetune_data::{DataSourceKind, PoolSelection as DataSpec, TemplateChoice};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlignmentStage {
    /// AdvBench-train prompts paired with the project's refusals (omit for the whole pool).
    #[serde(default)]
    pub refusals: Option<usize>,
    /// Risky requests with natural safe answers from Safety-Tuned LLaMAs (Bianchi et al. 2024).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub safe_answers: usize,
    /// Safety-recovery examples (Qi et al. 2024): an AdvBench-train prompt, the first k words of
    /// its harmful opening given as the start of the answer (no loss), then a refusal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recovery: usize,
    /// Benign instructions (from `data.benign`).
    pub benign: usize,
    /// How many of the `benign` rows are benign look-alikes: instructions that contain a word
    /// over-represented in the refusal prompts (harmful prompts and safe-answer requests; see
    /// `safetune_data::lookalikes`), answered helpfully, against refusing on words alone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub benign_lookalikes: usize,
    /// Labelled train rows from each task of `data.align_tasks` (its alignment tenth, which
    /// leaves that task's fine-tuning pool), so the aligned model keeps answering
    /// short-format instructions.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub task_examples: usize,
    /// Full-parameter alignment: every weight trained (`lora` unused); the aligned
    /// model is cached whole (~540 MB in f32 for 135M) instead of as an adapter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    /// An alignment-stage defense whose objective trains the run's own aligned model instead
    /// of plain supervised fine-tuning (`booster`, `vaccine`, `t-vaccine`, `repnoise`; its
    /// options from `[defense_options.NAME]`). A stack that names its own alignment-stage
    /// defense still aligns with that one. Omit for plain alignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<String>,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub lora: LoraConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneStage {
    /// Examples in each harmful variant.
    pub n: usize,
    /// `benign`, `low-harm`, `high-harm`, `pure-bad` or a ratio in [0, 1].
    pub regimes: Vec<String>,
    /// Registered method names (`sft-lora`, `sft-full`); empty: align and evaluate only
    /// (for choosing an alignment budget on a validation set).
    pub methods: Vec<String>,
    #[serde(default)]
    pub train: TrainConfig,
    /// Per-method options (for `sft-lora`: a LoRA config).
    #[serde(default)]
    pub method_options: BTreeMap<String, serde_json::Value>,
    /// Per-method training overrides (for example a lower learning rate for `sft-full`): an
    /// overlay on `finetune.train`, so the keys it leaves out keep `finetune.train`'s values.
    #[serde(default)]
    pub method_train: BTreeMap<String, TrainConfig>,
    /// Per-regime training overrides (for example more epochs for `pure-bad`, whose 111 pairs
    /// make few steps): an overlay on the method's settings (`finetune.method_train.<m>`, else
    /// `finetune.train`) holding only the keys it sets.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, TrainConfig>")]
    pub regime_train: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// Defense stacks crossed with methods × regimes: each a list of registered
    /// defenses (`["vaccine", "lisa", "safelora"]`), at most one per part of a stage (alignment
    /// objective, fine-tuning objective, inference system prompt, repair) except data mixes,
    /// which stack (`["safeinstr", "recovery-mix"]`); `[]` is none.
    #[serde(default = "no_defense")]
    pub defenses: Vec<Vec<String>>,
}

fn no_defense() -> Vec<Vec<String>> {
    vec![vec![]]
}

impl RunSpec {
    /// The single-task, single-seed specs of a grid over `data.tasks` × `seeds`
    /// (empty when the spec names neither), each named `<task>-s<seed>`.
    pub fn expand(&self) -> Vec<RunSpec> {
        if self.seeds.is_empty() && self.data.tasks.is_empty() {
            return Vec::new();
        }
        let tasks = if self.data.tasks.is_empty() { vec![self.data.task.clone()] } else { self.data.tasks.clone() };
        let seeds = if self.seeds.is_empty() { vec![self.seed] } else { self.seeds.clone() };
        let mut out = Vec::new();
        for task in &tasks {
            for &seed in &seeds {
                let mut s = self.clone();
                s.name = format!("{task}-s{seed}");
                s.seed = seed;
                s.seeds = Vec::new();
                s.data.task = task.clone();
                s.data.tasks = Vec::new();
                out.push(s);
            }
        }
        out
    }

    pub fn validate(&self) -> Result<()> {
        let subs = self.expand();
        if !subs.is_empty() {
            no_repeats("seeds", &self.seeds)?;
            no_repeats("data.tasks", &self.data.tasks)?;
            for s in &subs {
                s.validate().map_err(|e| anyhow!("{} (task {}, seed {})", e, s.data.task, s.seed))?;
            }
        }
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            bail!("name: must be a plain directory name");
        }
        if self.name.len() > 200 {
            bail!("name: {} bytes; a directory name has at most 200", self.name.len());
        }
        safetune_data::Pools::check_selection(&self.data)?;
        for (name, c) in &self.data.custom {
            c.metric.scorer().map_err(|e| anyhow!("data.custom.{name}.metric: {e}"))?;
        }
        self.alignment.train.validate("alignment.train")?;
        self.alignment.lora.validate("alignment.lora")?;
        self.finetune.train.validate("finetune.train")?;
        if self.finetune.n == 0 {
            bail!("finetune.n: must be at least 1");
        }
        if self.finetune.regimes.is_empty() {
            bail!("finetune.regimes: list at least one regime");
        }
        no_repeats("finetune.regimes", &self.finetune.regimes)?;
        no_repeats("finetune.methods", &self.finetune.methods)?;
        for r in &self.finetune.regimes {
            safetune_data::Regime::parse(r).map_err(|e| anyhow!("finetune.regimes: {e}"))?;
        }
        for m in &self.finetune.methods {
            let entry = safetune_core::registry::method(m).map_err(|e| anyhow!("finetune.methods: {e}"))?;
            let plan = (entry.build)(self.finetune.method_options.get(m).unwrap_or(&serde_json::Value::Null))?;
            // bf16 products apply to frozen weights: a method that trains every weight has none.
            if matches!(plan.trainable, safetune_core::registry::Trainable::Full) {
                let bf16 = |r: &str| self.cell_train(m, r).is_ok_and(|t| !t.precision.is_f32());
                if let Some(r) = self.finetune.regimes.iter().find(|r| bf16(r)) {
                    bail!("finetune: precision = \"bf16\" for `{m}` (regime {r}), which trains every weight; bf16 products are for frozen weights (LoRA): use \"f32\"");
                }
            }
        }
        if self.alignment.full && !self.alignment.train.precision.is_f32() {
            bail!("alignment.train.precision: \"bf16\" is for frozen weights, and alignment.full trains every weight: use \"f32\"");
        }
        for (m, t) in &self.finetune.method_train {
            if !self.finetune.methods.contains(m) {
                bail!("finetune.method_train.{m}: `{m}` is not in finetune.methods");
            }
            t.validate(&format!("finetune.method_train.{m}"))?;
        }
        for r in self.finetune.regime_train.keys() {
            let parsed = safetune_data::Regime::parse(r).map_err(|e| anyhow!("finetune.regime_train.{r}: {e}"))?;
            // A named regime's settings may come from a spec this one extends and narrows
            // (`defenses` runs high-harm only on `standard`'s settings); a ratio must be
            // written as in finetune.regimes, or it would apply to no cell.
            if matches!(parsed, safetune_data::Regime::Ratio(_)) && !self.finetune.regimes.contains(r) {
                bail!("finetune.regime_train.{r}: `{r}` is not in finetune.regimes");
            }
            for m in &self.finetune.methods {
                self.cell_train(m, r)?.validate(&format!("finetune.regime_train.{r}"))?;
            }
        }
        for m in self.finetune.method_options.keys() {
            if !self.finetune.methods.contains(m) {
                bail!("finetune.method_options.{m}: `{m}` is not in finetune.methods");
            }
        }
        if self.finetune.defenses.is_empty() {
            bail!("finetune.defenses: list at least one stack (`[]` for no defense)");
        }
        if let Some(name) = &self.alignment.objective {
            let plan = crate::stack::build_defense(&self.defense_options, name).map_err(|e| anyhow!("alignment.objective: {e}"))?;
            if plan.align_step.is_none() {
                bail!("alignment.objective: `{name}` has no alignment objective (it acts in another stage)");
            }
        }
        for name in self.defense_options.keys() {
            if !self.finetune.defenses.iter().flatten().any(|d| d == name) && self.alignment.objective.as_ref() != Some(name) {
                bail!("defense_options.{name}: `{name}` is in no stack of finetune.defenses");
            }
        }
        // Builds every defense with its options: errors about an option name
        // `defense_options.<name>.<key>`, others the stack.
        for stack in &self.finetune.defenses {
            crate::stack::build_stack(&self.defense_options, stack).map_err(|e| {
                let e = e.to_string();
                if e.starts_with("defense_options.") {
                    anyhow!("{e}")
                } else {
                    anyhow!("finetune.defenses: {e}")
                }
            })?;
        }
        if let Some(k) = self.eval.mmlu_shots.iter().find(|&&k| k > 5) {
            bail!("eval.mmlu_shots: {k} shots, but MMLU's dev split has 5 questions per subject");
        }
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size: must be at least 1");
        }
        let wants_mt_bench = self.data.utility_evals.iter().any(|u| u == "mt-bench");
        match &self.eval.mt_bench {
            None if wants_mt_bench => bail!(
                "eval.mt_bench: data.utility_evals names `mt-bench`, which needs a grader: \
                 eval.mt_bench.grader_options = {{ base_url = \"...\", model = \"...\" }}"
            ),
            Some(_) if !wants_mt_bench => bail!("eval.mt_bench: set, but data.utility_evals does not name `mt-bench`"),
            Some(m) if m.max_new_tokens == 0 || m.grader_max_tokens == 0 => {
                bail!("eval.mt_bench: max_new_tokens and grader_max_tokens must be at least 1")
            }
            Some(m) => {
                safetune_core::registry::grader(&m.grader).map_err(|e| anyhow!("eval.mt_bench.grader: {e}"))?;
            }
            None => {}
        }
        if self.eval.samples > 0 && !(self.eval.sample_temperature > 0.0 && self.eval.sample_temperature.is_finite()) {
            bail!("eval.sample_temperature: must be a positive number when eval.samples > 0");
        }
        if let Some(set) = self.eval.consistency_sets.iter().find(|s| !self.data.safety_evals.contains(s)) {
            bail!("eval.consistency_sets: `{set}` is not one of data.safety_evals");
        }
        if !(self.eval.sample_top_p > 0.0 && self.eval.sample_top_p <= 1.0) {
            bail!("eval.sample_top_p: must be in (0, 1]");
        }
        if self.eval.safety_max_new_tokens == 0 || self.eval.task_max_new_tokens == 0 {
            bail!("eval.*_max_new_tokens: must be at least 1");
        }
        let judge = safetune_core::registry::judge(&self.eval.judge).map_err(|e| anyhow!("eval.judge: {e}"))?;
        (judge.build)(&self.eval.judge_options)?;
        Ok(())
    }

    /// Training settings for one method: its override, else the stage's.
    pub fn method_train(&self, method: &str) -> &TrainConfig {
        self.finetune.method_train.get(method).unwrap_or(&self.finetune.train)
    }

    /// Training settings for one cell: the method's, with the regime's overlay
    /// (`finetune.regime_train.<regime>`) on top. Errors name the overlay's key.
    pub fn cell_train(&self, method: &str, regime: &str) -> Result<TrainConfig> {
        let base = self.method_train(method);
        let Some(overlay) = self.finetune.regime_train.get(regime) else {
            return Ok(base.clone());
        };
        let mut v = serde_json::to_value(base)?;
        if let serde_json::Value::Object(m) = &mut v {
            m.extend(overlay.clone());
        }
        safetune_core::config::options(&v, &format!("finetune.regime_train.{regime}"))
    }

    /// What the alignment stage trains with: `alignment.train` under the run's seed.
    pub fn alignment_stage_train(&self) -> TrainConfig {
        TrainConfig { seed: self.seed, ..self.alignment.train.clone() }
    }

    /// What a cell's training stage trains with: [`Self::cell_train`] under the run's seed.
    pub fn cell_stage_train(&self, method: &str, regime: &str) -> Result<TrainConfig> {
        Ok(TrainConfig { seed: self.seed, ..self.cell_train(method, regime)? })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_schema_matches_the_spec_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/spec.schema.json");
        let committed = std::fs::read_to_string(path).expect("docs/spec.schema.json");
        assert!(
            committed.trim_end() == super::schema_json().unwrap().trim_end(),
            "docs/spec.schema.json is out of date: run `cargo run -p safetune-runtime --bin safetune -- schema > docs/spec.schema.json`"
        );
    }
}
