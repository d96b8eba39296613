//! The run specification (TOML). Unknown keys are rejected; every range is
//! checked before anything runs, with errors that name the field.

use std::collections::BTreeMap;
use std::path::Path;

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Results go to `<out>/<name>/`.
    pub name: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub model: ModelSpec,
    #[serde(default)]
    pub data: DataSpec,
    pub alignment: AlignmentStage,
    pub finetune: FinetuneStage,
    #[serde(default)]
    pub eval: EvalSpec,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DataSourceKind {
    /// A local directory (`--data-dir` or `SAFETUNE_DATA_DIR`).
    Dir,
    /// The Hugging Face Hub, cached in the standard HF cache.
    Hub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TemplateChoice {
    /// The model's own chat template.
    Model,
    /// The Alpaca instruction template (SafeTuneBed's).
    Alpaca,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DataSpec {
    /// `sst2`, `agnews`, `gsm8k`, `alpaca`, `dolly`, `samsum`, `sqlgen`, a `custom` task,
    /// or `builtin-sentiment` / `builtin-arithmetic` (offline; `builtin` = sentiment).
    pub task: String,
    /// Harmful pairs: `beavertails-unsafe`, `pure-bad`, `advbench`, or a `custom` harmful set.
    pub harmful: String,
    /// `advbench-test`, `policy`, `beavertails-categories`, `xstest-unsafe`.
    pub safety_evals: Vec<String>,
    /// Benign instructions for alignment: `alpaca` or `dolly`.
    pub benign: String,
    pub source: DataSourceKind,
    pub template: TemplateChoice,
    /// User datasets: a file and a field mapping each; paths are relative to the spec file.
    pub custom: BTreeMap<String, safetune_data::CustomDataset>,
}

impl Default for DataSpec {
    fn default() -> Self {
        let d = safetune_data::PoolSelection::default();
        Self {
            task: d.task,
            harmful: d.harmful,
            safety_evals: d.safety_evals,
            benign: d.benign,
            source: DataSourceKind::Dir,
            template: TemplateChoice::Model,
            custom: BTreeMap::new(),
        }
    }
}

impl DataSpec {
    pub fn selection(&self) -> safetune_data::PoolSelection {
        safetune_data::PoolSelection {
            task: self.task.clone(),
            harmful: self.harmful.clone(),
            safety_evals: self.safety_evals.clone(),
            benign: self.benign.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlignmentStage {
    /// Harmful prompts paired with refusals (omit for the whole pool).
    #[serde(default)]
    pub refusals: Option<usize>,
    pub benign: usize,
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
    /// Registered method names (`sft-lora`, `sft-full`).
    pub methods: Vec<String>,
    #[serde(default)]
    pub train: TrainConfig,
    /// Per-method options (for `sft-lora`: a LoRA config).
    #[serde(default)]
    pub method_options: BTreeMap<String, serde_json::Value>,
    /// Per-method training overrides (for example a lower learning rate for `sft-full`).
    #[serde(default)]
    pub method_train: BTreeMap<String, TrainConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSpec {
    /// Prompts per safety set (0: all).
    pub safety_limit: usize,
    /// Task test examples (0: all).
    pub task_limit: usize,
    pub safety_max_new_tokens: usize,
    pub task_max_new_tokens: usize,
    pub batch_size: usize,
    pub judge: String,
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            safety_limit: 0,
            task_limit: 0,
            safety_max_new_tokens: 64,
            task_max_new_tokens: 6,
            batch_size: 16,
            judge: "keyword".into(),
        }
    }
}

impl RunSpec {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let spec: RunSpec = toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            match line {
                Some(l) => anyhow!("{}:{l}: {msg}", path.display()),
                None => anyhow!("{}: {msg}", path.display()),
            }
        })?;
        spec.validate()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            bail!("name: must be a plain directory name");
        }
        if !["sst2", "builtin"].contains(&self.data.task.as_str()) {
            bail!(
                "data.task: unknown task `{}` (sst2, builtin)",
                self.data.task
            );
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
        for r in &self.finetune.regimes {
            safetune_data::Regime::parse(r).map_err(|e| anyhow!("finetune.regimes: {e}"))?;
        }
        if self.finetune.methods.is_empty() {
            bail!("finetune.methods: list at least one method");
        }
        for m in &self.finetune.methods {
            let entry =
                safetune_core::registry::method(m).map_err(|e| anyhow!("finetune.methods: {e}"))?;
            (entry.build)(
                self.finetune
                    .method_options
                    .get(m)
                    .unwrap_or(&serde_json::Value::Null),
            )?;
        }
        for (m, t) in &self.finetune.method_train {
            if !self.finetune.methods.contains(m) {
                bail!("finetune.method_train.{m}: `{m}` is not in finetune.methods");
            }
            t.validate(&format!("finetune.method_train.{m}"))?;
        }
        for m in self.finetune.method_options.keys() {
            if !self.finetune.methods.contains(m) {
                bail!("finetune.method_options.{m}: `{m}` is not in finetune.methods");
            }
        }
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size: must be at least 1");
        }
        if self.eval.safety_max_new_tokens == 0 || self.eval.task_max_new_tokens == 0 {
            bail!("eval.*_max_new_tokens: must be at least 1");
        }
        safetune_core::registry::judge(&self.eval.judge).map_err(|e| anyhow!("eval.judge: {e}"))?;
        Ok(())
    }

    /// Training settings for one method: its override, else the stage's.
    pub fn method_train(&self, method: &str) -> &TrainConfig {
        self.finetune
            .method_train
            .get(method)
            .unwrap_or(&self.finetune.train)
    }
}
