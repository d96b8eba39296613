//! The training loop: streams, accumulation, clipping, schedule, AdamW.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Tensor, Var};
use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::config::TrainConfig;
use safetune_core::model::Perturbation;
use safetune_core::rng::SeededRng;
use safetune_core::training::{stream, StepContext, StepState, TokenBatch, TrainStep};
use safetune_core::{CausalLm, Example, PromptFormat, Result, Tokenize};
use serde::Serialize;

use crate::batch::{collate, encode_example, make_batches, padded_len, EncodedExample};
use crate::checkpoint::{self, Checkpoints, Meta, Saved, StreamState};
use crate::{learning_rate, masked_cross_entropy, AdamW};
use safetune_core::progress::Steps;

/// The named example streams of one stage; `task` sets the epoch length.
#[derive(Default, Clone)]
pub struct StageData {
    pub streams: BTreeMap<String, Vec<Example>>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TrainReport {
    pub steps: usize,
    /// Mean loss of each optimiser step.
    pub losses: Vec<f64>,
    pub tokens: usize,
    pub seconds: f64,
    /// Examples left out because not one answer token fits within `max_len` after the
    /// prompt (ids; they would carry no loss).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

struct Stream {
    encoded: Vec<EncodedExample>,
    batches: Vec<Vec<usize>>,
    pos: usize,
    rng: SeededRng,
    batch_size: usize,
}

struct Ctx<'a> {
    model: &'a dyn CausalLm,
    reference: Option<&'a dyn CausalLm>,
    params: Vec<(String, Var)>,
    streams: BTreeMap<String, Stream>,
    step: usize,
    total: usize,
    tokens: usize,
}

impl StepContext for Ctx<'_> {
    fn model(&self) -> &dyn CausalLm {
        self.model
    }
    fn reference(&self) -> Option<&dyn CausalLm> {
        self.reference
    }
    fn params(&self) -> &[(String, Var)] {
        &self.params
    }
    fn next_batch(&mut self, name: &str) -> Result<Option<TokenBatch>> {
        let Some(s) = self.streams.get_mut(name) else {
            return Ok(None);
        };
        if s.pos >= s.batches.len() {
            s.batches = make_batches(&s.encoded, s.batch_size, &mut s.rng);
            s.pos = 0;
        }
        let rows: Vec<&EncodedExample> = s.batches[s.pos].iter().map(|&i| &s.encoded[i]).collect();
        s.pos += 1;
        self.tokens += rows.iter().map(|r| r.ids.len()).sum::<usize>();
        Ok(Some(collate(&rows, self.model.tokenizer().pad_id(), self.model.device())?))
    }
    fn stream_len(&self, name: &str) -> Option<usize> {
        self.streams.get(name).map(|s| s.encoded.len())
    }
    fn lm_loss(&self, batch: &TokenBatch, perturbation: Option<Perturbation>, output_hidden: bool) -> Result<(Tensor, Vec<Tensor>)> {
        masked_cross_entropy(self.model, batch, perturbation, output_hidden, true)
    }
    fn step(&self) -> usize {
        self.step
    }
    fn total_steps(&self) -> usize {
        self.total
    }
}

impl Ctx<'_> {
    /// Name and shape of every trained tensor, in order: what makes a checkpoint this stage's.
    fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().dims().to_vec())).collect()
    }
}

/// A stream's examples encoded as training sees them, and the ids of those left out: an
/// example whose prompt leaves no answer token within `max_len` would carry no loss.
fn encode_stream(
    tok: &dyn Tokenize,
    format: PromptFormat,
    examples: &[Example],
    max_len: usize,
) -> Result<(Vec<EncodedExample>, Vec<String>)> {
    let all = examples.iter().map(|e| encode_example(tok, format, e, max_len)).collect::<Result<Vec<_>>>()?;
    let (kept, cut): (Vec<EncodedExample>, Vec<EncodedExample>) = all.into_iter().partition(|e| e.is_response.contains(&true));
    Ok((kept, cut.into_iter().map(|e| e.id).collect()))
}

/// The seeded stream a stream's batches are drawn with (each stream its own).
fn batch_rng(cfg: &TrainConfig, stream: &str) -> SeededRng {
    SeededRng::derive(cfg.seed, &format!("batches/{stream}"))
}

/// What one epoch of a stream trains on, counted without a model's weights: the examples
/// kept and left out, their tokens, and the tokens its batches carry once padded to the
/// longest row of each (the encoding, cut, bucketing and first-epoch order of training).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EpochTokens {
    pub examples: usize,
    pub left_out: usize,
    pub batches: usize,
    pub tokens: usize,
    pub padded: usize,
}

impl EpochTokens {
    /// The share of the batches' tokens that is padding.
    pub fn padding_share(&self) -> f64 {
        if self.padded == 0 {
            0.0
        } else {
            1.0 - self.tokens as f64 / self.padded as f64
        }
    }
}

/// [`EpochTokens`] of `examples` as stream `stream` under `cfg`.
pub fn epoch_tokens(
    tok: &dyn Tokenize,
    format: PromptFormat,
    examples: &[Example],
    cfg: &TrainConfig,
    stream: &str,
) -> Result<EpochTokens> {
    let (encoded, cut) = encode_stream(tok, format, examples, cfg.max_len)?;
    let batches = make_batches(&encoded, cfg.batch_size, &mut batch_rng(cfg, stream));
    let mut count = EpochTokens { examples: encoded.len(), left_out: cut.len(), batches: batches.len(), tokens: 0, padded: 0 };
    for b in &batches {
        let lens: Vec<usize> = b.iter().map(|&i| encoded[i].ids.len()).collect();
        count.tokens += lens.iter().sum::<usize>();
        count.padded += b.len() * padded_len(lens.iter().copied());
    }
    Ok(count)
}

/// Encodes and batches every non-empty stream of `data` (each shuffled by its own seeded
/// stream). An example whose prompt leaves no answer token within `max_len` would carry no
/// loss: it is left out before batching, named in the log and in the returned ids (a
/// stream with nothing left is an error).
fn streams_of(model: &dyn CausalLm, data: &StageData, cfg: &TrainConfig) -> Result<(BTreeMap<String, Stream>, Vec<String>)> {
    let format = model.info().format;
    let mut streams = BTreeMap::new();
    let mut left_out = Vec::new();
    for (name, examples) in &data.streams {
        if examples.is_empty() {
            continue;
        }
        let (encoded, ids) = encode_stream(model.tokenizer(), format, examples, cfg.max_len)?;
        if !ids.is_empty() {
            if encoded.is_empty() {
                bail!("stream `{name}`: no example has an answer token within max_len {} (examples {ids:?}): raise max_len", cfg.max_len);
            }
            safetune_core::tracing::warn!(
                "stream `{name}`: {} of {} examples left out, no answer token within max_len {}: {}",
                ids.len(),
                examples.len(),
                cfg.max_len,
                ids.join(", ")
            );
            left_out.extend(ids);
        }
        let mut rng = batch_rng(cfg, name);
        let batches = make_batches(&encoded, cfg.batch_size, &mut rng);
        streams.insert(name.clone(), Stream { encoded, batches, pos: 0, rng, batch_size: cfg.batch_size });
    }
    Ok((streams, left_out))
}

/// Runs `f` with a step context over `model` and the streams of `data` (batched as `cfg`
/// says), training nothing: what a post-tuning repair gets to score weights on data. Its
/// `params` are the model's trainable tensors, as a training stage's are.
pub fn with_context<R>(
    model: &dyn CausalLm,
    reference: Option<&dyn CausalLm>,
    data: &StageData,
    cfg: &TrainConfig,
    f: impl FnOnce(&mut dyn StepContext) -> Result<R>,
) -> Result<R> {
    let (streams, _) = streams_of(model, data, cfg)?;
    let mut ctx = Ctx { model, reference, params: model.trainable(), streams, step: 0, total: 0, tokens: 0 };
    f(&mut ctx)
}

/// Trains the model's trainable tensors on `data` with the objective `step_fn`.
pub fn train(
    model: &mut dyn CausalLm,
    data: &StageData,
    step_fn: &mut dyn TrainStep,
    cfg: &TrainConfig,
    reference: Option<&dyn CausalLm>,
    label: &str,
    quiet: bool,
) -> Result<TrainReport> {
    train_stage(model, data, step_fn, cfg, reference, &StageRun { label, quiet, checkpoints: None })
}

/// How a stage runs beyond its configuration: its label on progress lines, whether it
/// prints them, and where it saves checkpoints (and resumes from the last one).
pub struct StageRun<'a> {
    pub label: &'a str,
    pub quiet: bool,
    pub checkpoints: Option<&'a Checkpoints>,
}

/// [`train`], resuming from and saving checkpoints when `run` names a directory. The
/// model's products run at `cfg.precision` while the stage trains and in f32 again after
/// it, whether it ends or fails (so every evaluation is in f32).
pub fn train_stage(
    model: &mut dyn CausalLm,
    data: &StageData,
    step_fn: &mut dyn TrainStep,
    cfg: &TrainConfig,
    reference: Option<&dyn CausalLm>,
    run: &StageRun,
) -> Result<TrainReport> {
    cfg.validate("train")?;
    model.set_precision(cfg.precision).map_err(|e| anyhow!("{}: {e}", run.label))?;
    let report = (|| -> Result<TrainReport> {
        let label = run.label;
        let params = model.trainable();
        if params.is_empty() {
            bail!("{label}: the model has no trainable weights (attach adapters or unfreeze)");
        }
        let model: &dyn CausalLm = &*model;
        if step_fn.wants_reference() && reference.is_none() {
            bail!("{label}: `{}` needs a reference model and the stage gave none", step_fn.name());
        }
        let (streams, left_out) = streams_of(model, data, cfg)?;
        let per_epoch = streams
            .get(stream::TASK)
            .map(|s| s.batches.len())
            .ok_or_else(|| anyhow!("{label}: no `{}` examples to train on", stream::TASK))?;
        let total = if cfg.max_steps > 0 { cfg.max_steps } else { (cfg.epochs * per_epoch).div_ceil(cfg.grad_accum) };
        let mut ctx = Ctx { model, reference, params, streams, step: 0, total, tokens: 0 };
        let mut opt = AdamW::new(cfg.weight_decay);
        let mut losses = Vec::with_capacity(total);
        let (mut first, mut before) = (0, 0.0);
        if let Some(ck) = run.checkpoints {
            if let Some(saved) = checkpoint::load(&ck.dir, model.device())? {
                (first, before) = restore(saved, &mut ctx, &mut opt, step_fn, &mut losses)?;
                if !run.quiet {
                    safetune_core::tracing::info!(
                        "[{label}] resuming at step {first} of {total} from the checkpoint in {}",
                        ck.dir.display()
                    );
                }
            }
        }
        let progress = Steps::starting_at(label, total, first, "step", run.quiet);
        let start = Instant::now();
        let mut last_save = Instant::now();
        for step in first..total {
            ctx.step = step;
            let mut acc: Vec<Option<Tensor>> = vec![None; ctx.params.len()];
            let mut loss_sum = 0.0;
            for _ in 0..cfg.grad_accum {
                let loss = step_fn.loss(&mut ctx)?;
                let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                if !value.is_finite() {
                    bail!("{label}: the loss became {value} at step {step}; training diverged (lower the learning rate)");
                }
                loss_sum += value;
                let grads = loss.backward()?;
                for ((_, var), slot) in ctx.params.iter().zip(acc.iter_mut()) {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        *slot = Some(match slot.take() {
                            Some(prev) => (prev + g)?,
                            None => g.clone(),
                        });
                    }
                }
            }
            let mut scale = 1.0 / cfg.grad_accum as f64;
            if cfg.max_grad_norm > 0.0 {
                let mut sq = 0.0;
                for g in acc.iter().flatten() {
                    sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                }
                let norm = sq.sqrt() * scale;
                if !norm.is_finite() {
                    bail!("{label}: the gradient norm became {norm} at step {step}; training diverged");
                }
                if norm > cfg.max_grad_norm {
                    scale *= cfg.max_grad_norm / norm;
                }
            }
            let lr = learning_rate(cfg, step, total);
            opt.step(&ctx.params, &acc, lr, scale)?;
            let mean = loss_sum / cfg.grad_accum as f64;
            losses.push(mean);
            progress.set(step + 1, || format!("loss {mean:.4} lr {lr:.2e}"));
            if let Some(ck) = run.checkpoints {
                if step + 1 < total && last_save.elapsed() >= ck.every {
                    save(&ck.dir, &ctx, &opt, &*step_fn, step + 1, &losses, before + start.elapsed().as_secs_f64())
                        .with_context(|| format!("{label}: saving a checkpoint"))?;
                    last_save = Instant::now();
                }
            }
        }
        progress.finish();
        Ok(TrainReport { steps: total, losses, tokens: ctx.tokens, seconds: before + start.elapsed().as_secs_f64(), left_out })
    })();
    model.set_precision(safetune_core::config::Precision::F32)?;
    report
}

/// Saves the stage as it stands before step `next`.
fn save(dir: &std::path::Path, ctx: &Ctx, opt: &AdamW, step_fn: &dyn TrainStep, next: usize, losses: &[f64], seconds: f64) -> Result<()> {
    let mut tensors = std::collections::HashMap::new();
    let (adam_t, moments) = opt.export(&ctx.params)?;
    for (i, ((_, var), mv)) in ctx.params.iter().zip(&moments).enumerate() {
        tensors.insert(format!("param.{i}"), var.as_tensor().clone());
        if let Some((m, v)) = mv {
            tensors.insert(format!("m.{i}"), m.clone());
            tensors.insert(format!("v.{i}"), v.clone());
        }
    }
    let state = step_fn.save_state()?;
    for (j, t) in state.tensors.iter().enumerate() {
        tensors.insert(format!("step.{j}"), t.clone());
    }
    let meta = Meta {
        version: checkpoint::VERSION,
        next_step: next,
        total: ctx.total,
        adam_t,
        params: ctx.param_shapes(),
        moments: moments.iter().map(Option::is_some).collect(),
        step_values: state.values,
        step_tensors: state.tensors.len(),
        losses: losses.to_vec(),
        tokens: ctx.tokens,
        seconds,
        streams: ctx
            .streams
            .iter()
            .map(|(n, s)| (n.clone(), StreamState { pos: s.pos, rng: s.rng.state(), batches: s.batches.clone() }))
            .collect(),
    };
    checkpoint::save(dir, &meta, &tensors)
}

/// Puts a saved stage back: weights, optimiser, streams, the step's state, losses.
/// Returns the first step to take and the training seconds already spent.
fn restore(saved: Saved, ctx: &mut Ctx, opt: &mut AdamW, step_fn: &mut dyn TrainStep, losses: &mut Vec<f64>) -> Result<(usize, f64)> {
    let from = saved.from.display().to_string();
    let m = &saved.meta;
    let names = ctx.param_shapes();
    if m.total != ctx.total || m.params != names || m.moments.len() != names.len() || m.losses.len() != m.next_step || m.next_step > m.total
    {
        bail!(
            "{from}: the checkpoint is of another stage ({} steps, {} tensors; this one: {} steps, {} tensors); delete it to start over",
            m.total,
            m.params.len(),
            ctx.total,
            names.len()
        );
    }
    if m.streams.keys().ne(ctx.streams.keys()) {
        bail!("{from}: the checkpoint's data streams differ from this stage's; delete it to start over");
    }
    let mut moments = Vec::with_capacity(names.len());
    for (i, (_, var)) in ctx.params.iter().enumerate() {
        var.set(&saved.tensor(&format!("param.{i}"))?.to_dtype(var.dtype())?)?;
        moments.push(if m.moments[i] { Some((saved.tensor(&format!("m.{i}"))?, saved.tensor(&format!("v.{i}"))?)) } else { None });
    }
    opt.import(&ctx.params, m.adam_t, moments)?;
    for (name, st) in &m.streams {
        let s = ctx.streams.get_mut(name).expect("same keys, checked above");
        if st.pos > st.batches.len() || st.batches.iter().flatten().any(|&i| i >= s.encoded.len()) {
            bail!("{from}: stream `{name}` does not fit this stage's data; delete the checkpoint to start over");
        }
        s.batches = st.batches.clone();
        s.pos = st.pos;
        s.rng = SeededRng::from_state(st.rng);
    }
    let tensors = (0..m.step_tensors).map(|j| saved.tensor(&format!("step.{j}"))).collect::<Result<Vec<_>>>()?;
    step_fn.load_state(StepState { values: m.step_values.clone(), tensors }).with_context(|| from.clone())?;
    *losses = m.losses.clone();
    ctx.tokens = m.tokens;
    Ok((m.next_step, m.seconds))
}
