//! The runtime fills every extension point a defense may use: a fine-tuning
//! objective gets the defender's harmful stream and the frozen aligned model as
//! reference, an alignment objective gets the harmful stream and the base model,
//! and a repair runs the fine-tuned model on data. Probe defenses, registered in
//! this test binary only, record what they were given; a run on a tiny model
//! checks it. Each fails if the runtime stops providing what it reads.

use std::sync::Mutex;

use candle_core::Tensor;
use safetune_core::anyhow::anyhow;
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::model::ForwardRequest;
use safetune_core::repair::{Repair, WeightSets, Weights};
use safetune_core::training::{stream, StepContext, TrainStep};
use safetune_core::Result;

/// The probes take no options.
#[derive(Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

/// What the probes saw, by probe.
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn saw(what: String) {
    SEEN.lock().unwrap().push(what);
}

/// Reads the harmful stream and compares with the reference model's loss on it, then
/// trains on the task stream as plain SFT does.
struct ProbeStep {
    tag: &'static str,
}

impl TrainStep for ProbeStep {
    fn name(&self) -> &str {
        self.tag
    }
    fn wants_reference(&self) -> bool {
        true
    }
    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let harmful = ctx.next_batch(stream::HARMFUL)?.ok_or_else(|| anyhow!("{}: no harmful stream", self.tag))?;
        let reference = ctx.reference().ok_or_else(|| anyhow!("{}: no reference model", self.tag))?;
        let out = reference.forward(&ForwardRequest { ids: Some(&harmful.ids), mask: Some(&harmful.attention), ..Default::default() })?;
        // The reference scores the same batch: logits [batch, seq, vocab].
        let ok = out.logits.dims()[..2] == *harmful.ids.dims();
        let ids = harmful.ids_of_examples.join(",");
        saw(format!("{} harmful={} reference_ok={ok}", self.tag, ids));
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("no task stream"))?;
        Ok(ctx.lm_loss(&batch, None, false)?.0)
    }
}

struct ProbeFinetune;
impl Defense for ProbeFinetune {
    const NAME: &'static str = "probe-finetune";
    const DESCRIPTION: &'static str = "test probe: a fine-tuning objective reading the harmful stream and the reference";
    const DIFFERS: &'static str = "a test probe, no reference";
    type Options = NoOptions;
    fn plan(_: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { step: Some(Box::new(ProbeStep { tag: "finetune" })), ..Default::default() })
    }
}
safetune_core::register_defense!(ProbeFinetune);

struct ProbeAlign;
impl Defense for ProbeAlign {
    const NAME: &'static str = "probe-align";
    const DESCRIPTION: &'static str = "test probe: an alignment objective reading the harmful stream and the reference";
    const DIFFERS: &'static str = "a test probe, no reference";
    type Options = NoOptions;
    fn plan(_: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { align_step: Some(Box::new(ProbeStep { tag: "align" })), ..Default::default() })
    }
}
safetune_core::register_defense!(ProbeAlign);

/// Runs the fine-tuned model on the harmful stream and changes nothing.
struct ProbeRepair;
impl Repair for ProbeRepair {
    fn name(&self) -> &str {
        "probe-repair"
    }
    fn repair(&self, w: &WeightSets, ctx: &mut dyn StepContext) -> Result<Weights> {
        let batch = ctx.next_batch(stream::HARMFUL)?.ok_or_else(|| anyhow!("repair: no harmful stream"))?;
        let (loss, hidden) = ctx.lm_loss(&batch, None, true)?;
        let loss = loss.to_scalar::<f32>()?;
        saw(format!(
            "repair harmful={} loss_finite={} hidden={} weights={} reference={}",
            batch.ids_of_examples.join(","),
            loss.is_finite(),
            hidden.len(),
            w.finetuned.len(),
            ctx.reference().is_some()
        ));
        Ok(Weights::new())
    }
}
impl Defense for ProbeRepair {
    const NAME: &'static str = "probe-repair";
    const DESCRIPTION: &'static str = "test probe: a repair running the model on data";
    const DIFFERS: &'static str = "a test probe, no reference";
    type Options = NoOptions;
    fn plan(_: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { repair: Some(Box::new(ProbeRepair)), ..Default::default() })
    }
}
safetune_core::register_defense!(ProbeRepair);

#[test]
fn defenses_get_the_harmful_stream_the_reference_model_and_data_for_repair() {
    let dir = std::env::temp_dir().join(format!("safetune-ext-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The only test in this binary: the cache is this test's own.
    std::env::set_var("SAFETUNE_CACHE", dir.join("cache"));
    let model = dir.join("model");
    safetune_model::export_hf(&safetune_model::tiny_model(21).unwrap(), &model).unwrap();
    let spec = format!(
        r#"
name = "probes"
seed = 7
[model]
source = "{}"
[data]
task = "builtin"
[alignment]
refusals = 8
benign = 4
lora = {{ r = 4, alpha = 8.0, dropout = 0.0, targets = ["q_proj", "v_proj"] }}
train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 384 }}
[finetune]
n = 8
regimes = ["high-harm"]
methods = ["sft-lora"]
defenses = [["probe-finetune"], ["probe-align", "probe-repair"]]
train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 384 }}
[eval]
safety_limit = 2
task_limit = 2
safety_max_new_tokens = 2
task_max_new_tokens = 2
batch_size = 2
"#,
        model.display()
    );
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec).unwrap();
    let spec = safetune_runtime::RunSpec::load(&path).unwrap();
    let opts = safetune_runtime::options::RunOptions::new(None, dir.join("out"), true);
    safetune_runtime::run(&spec, &opts).unwrap();

    let seen = SEEN.lock().unwrap().clone();
    // The attacker's harmful examples of the cell: the defender's stream never holds them.
    let cell: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/probes/cells/sft-lora+probe-finetune__high-harm.json")).unwrap())
            .unwrap();
    let attacker: Vec<String> = cell["harmful_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert!(!attacker.is_empty());
    for tag in ["finetune", "align"] {
        let lines: Vec<&String> = seen.iter().filter(|l| l.starts_with(&format!("{tag} "))).collect();
        assert!(!lines.is_empty(), "the {tag} objective never ran: {seen:?}");
        for l in lines {
            let ids = l.split("harmful=").nth(1).unwrap().split(' ').next().unwrap();
            assert!(!ids.is_empty() && ids.split(',').all(|id| !attacker.iter().any(|a| a == id)), "{l}");
            assert!(l.ends_with("reference_ok=true"), "{l}");
        }
    }
    let repair: Vec<&String> = seen.iter().filter(|l| l.starts_with("repair ")).collect();
    assert_eq!(repair.len(), 1, "{seen:?}");
    assert!(repair[0].contains("loss_finite=true") && repair[0].contains("reference=true"), "{}", repair[0]);
    assert!(!repair[0].contains("weights=0") && !repair[0].contains("hidden=0"), "{}", repair[0]);
    let _ = std::fs::remove_dir_all(&dir);
}
