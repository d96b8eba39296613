//! The training-step interface. A method or a training-stage defense turns
//! the next batches of named data streams into one loss; the trainer owns
//! the optimiser, schedule, clipping, accumulation and checkpoints.

use candle_core::{DType, Tensor, Var};

use crate::model::{ForwardRequest, Perturbation, PerturbationSite};

use crate::{CausalLm, Result};

/// Tokenised, padded examples with the loss mask already applied.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[batch, seq]` u32.
    pub ids: Tensor,
    /// 1.0 on real tokens, 0.0 on padding, `[batch, seq]` f32.
    pub attention: Tensor,
    /// Next-token targets `[batch, seq]` u32 (shifted by one).
    pub targets: Tensor,
    /// 1.0 where the target is a response token, `[batch, seq]` f32.
    pub loss_mask: Tensor,
    /// Example ids in this batch.
    pub ids_of_examples: Vec<String>,
}

/// Names of the data streams a step may draw from.
pub mod stream {
    /// The user's (possibly poisoned) fine-tuning data.
    pub const TASK: &str = "task";
    /// Harmful prompt → refusal pairs (alignment data).
    pub const SAFETY: &str = "safety";
    /// Harmful prompt → harmful answer pairs the defender holds (disjoint from the attacker's
    /// variant), for defenses that simulate attacks.
    pub const HARMFUL: &str = "harmful";
}

/// What a step sees. Provided by the trainer.
pub trait StepContext {
    fn model(&self) -> &dyn CausalLm;
    /// A frozen copy of the model before this stage, if the stage keeps one.
    fn reference(&self) -> Option<&dyn CausalLm>;
    /// The tensors the optimiser updates, by name.
    fn params(&self) -> &[(String, Var)];
    /// The next batch of a stream (cycling through epochs); `None` if the
    /// stage has no such stream.
    fn next_batch(&mut self, stream: &str) -> Result<Option<TokenBatch>>;
    /// How many examples a stream holds (`None`: unknown, or no such stream).
    fn stream_len(&self, _stream: &str) -> Option<usize> {
        None
    }
    /// Mean masked next-token cross-entropy of `batch`, with optional
    /// per-layer perturbations; also returns hidden states when asked.
    fn lm_loss(&self, batch: &TokenBatch, perturbation: Option<Perturbation>, output_hidden: bool) -> Result<(Tensor, Vec<Tensor>)>;
    /// Zero-based optimiser step about to be taken, and the planned total.
    fn step(&self) -> usize;
    fn total_steps(&self) -> usize;
}

/// One optimisation step's objective. The default method draws a `task`
/// batch and returns its loss; defenses change what is drawn and what is added.
pub trait TrainStep: Send {
    fn name(&self) -> &str;
    /// Whether the step reads [`StepContext::reference`] (the runtime then keeps a frozen copy
    /// of the model the stage starts from).
    fn wants_reference(&self) -> bool {
        false
    }
    /// The scalar loss whose gradient the trainer applies.
    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor>;
    /// What this step carries from one optimiser step to the next that is not a function of
    /// the step index (anchors, running scores, counters), for a checkpoint: a stage
    /// stopped after one resumes with [`load_state`](Self::load_state) and ends with the
    /// weights of an uninterrupted run. Steps that carry nothing keep the default.
    fn save_state(&self) -> Result<StepState> {
        Ok(StepState::default())
    }
    /// Puts back what [`save_state`](Self::save_state) returned, before the first `loss`
    /// of a resumed stage.
    fn load_state(&mut self, _state: StepState) -> Result<()> {
        Ok(())
    }
}

/// A training step's carried state: plain values and tensors (saved beside the weights).
#[derive(Debug, Default, Clone)]
pub struct StepState {
    pub values: serde_json::Value,
    pub tensors: Vec<Tensor>,
}

/// Plain supervised fine-tuning on the `task` stream.
pub struct PlainSft;

impl TrainStep for PlainSft {
    fn name(&self) -> &str {
        "sft"
    }
    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow::anyhow!("the task stream is empty"))?;
        Ok(ctx.lm_loss(&batch, None, false)?.0)
    }
}

/// The gradient of `batch`'s loss with respect to every decoder layer's hidden state at `site`
/// (one `[batch, seq, hidden]` per layer): one forward/backward pass through zero
/// perturbations there, whose gradients are exactly those. Vaccine's and T-Vaccine's first pass.
pub fn hidden_state_gradients(ctx: &dyn StepContext, batch: &TokenBatch, site: PerturbationSite) -> Result<Vec<Tensor>> {
    let (b, t) = batch.ids.dims2()?;
    let d = ctx.model().info().hidden_size;
    let layers = ctx.model().info().num_layers;
    let zeros: Vec<Var> =
        (0..layers).map(|_| Var::zeros((b, t, d), DType::F32, ctx.model().device())).collect::<candle_core::Result<_>>()?;
    let z: Vec<Tensor> = zeros.iter().map(|v| v.as_tensor().clone()).collect();
    let (loss, _) = ctx.lm_loss(batch, Some(Perturbation { tensors: &z, site }), false)?;
    // The pass's graph (every activation) is freed on return, before the caller builds another.
    gradients_of(&loss, zeros.iter())
}

/// The gradient of `loss` for each of `vars` (zeros where the loss does not reach one), detached.
pub fn gradients_of<'a>(loss: &Tensor, vars: impl IntoIterator<Item = &'a Var>) -> Result<Vec<Tensor>> {
    let grads = loss.backward()?;
    vars.into_iter().map(|v| Ok(grads.get(v.as_tensor()).cloned().map_or_else(|| v.as_tensor().zeros_like(), Ok)?.detach())).collect()
}

/// A term whose value is exactly zero and whose gradient with respect to each of `params` is
/// the matching tensor of `grads` (same order and shapes): added to a loss, it applies a
/// gradient computed by an earlier backward pass, whose graph is already freed. `None` when
/// `params` is empty.
pub fn zero_valued_gradient(params: &[(String, Var)], grads: &[Tensor]) -> Result<Option<Tensor>> {
    if params.len() != grads.len() {
        anyhow::bail!("zero_valued_gradient: {} parameters but {} gradients", params.len(), grads.len());
    }
    let mut linear: Option<Tensor> = None;
    for ((_, v), g) in params.iter().zip(grads) {
        let term = (g.detach() * v.as_tensor())?.sum_all()?;
        linear = Some(match linear {
            None => term,
            Some(acc) => (acc + term)?,
        });
    }
    Ok(match linear {
        Some(linear) => Some((&linear - linear.detach())?),
        None => None,
    })
}

/// `loss` with its backward pass taken now: a tensor of the same value and the same gradient
/// with respect to `params`, holding none of the forward pass's activations (freed on return).
/// A step whose loss adds parts that each run the model (RepNoise: the alignment batch and the
/// harmful batch) then keeps one part's activations alive at a time instead of all of them.
pub fn backward_now(loss: &Tensor, params: &[(String, Var)]) -> Result<Tensor> {
    let grads = gradients_of(loss, params.iter().map(|(_, v)| v))?;
    Ok(match zero_valued_gradient(params, &grads)? {
        Some(term) => (loss.detach() + term)?,
        None => loss.detach(),
    })
}

/// The L2 norm of all `tensors` taken together (per-tensor sums of squares added in f64).
pub fn global_norm(tensors: &[Tensor]) -> Result<f64> {
    let mut sq = 0.0;
    for t in tensors {
        sq += t.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// `ρ·g_l/‖g‖` for every tensor, `‖g‖` over all of them together (zero when every `g_l` is
/// zero), and the norm of the result: the worst-case perturbation of radius ρ.
pub fn perturbations(grads: &[Tensor], rho: f64) -> Result<(Vec<Tensor>, f64)> {
    let norm = global_norm(grads)?;
    let scale = if norm > 0.0 { rho / norm } else { 0.0 };
    let e = grads.iter().map(|g| (g * scale).map(|t| t.detach())).collect::<candle_core::Result<Vec<_>>>()?;
    Ok((e, norm * scale))
}

/// The log-probability of every response token of `batch` (where `loss_mask` is set, in
/// row-major order), `[n]`, with optional per-layer perturbations and hidden states. Logits
/// are computed only at those positions. The masked LM loss is minus their mean; token-wise
/// objectives (constrained SFT) weigh them one by one.
pub fn response_log_probs(
    model: &dyn CausalLm,
    batch: &TokenBatch,
    perturbation: Option<Perturbation>,
    output_hidden: bool,
    train: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let mask: Vec<f32> = batch.loss_mask.flatten_all()?.to_vec1()?;
    let positions: Vec<u32> = mask.iter().enumerate().filter(|(_, &m)| m > 0.0).map(|(i, _)| i as u32).collect();
    if positions.is_empty() {
        anyhow::bail!(
            "a batch has no response tokens (examples {:?}): raise max_len so answers fit after their prompts",
            batch.ids_of_examples
        );
    }
    let dev = model.device();
    let idx = Tensor::new(positions.as_slice(), dev)?;
    let out = model.forward(&ForwardRequest {
        ids: Some(&batch.ids),
        mask: Some(&batch.attention),
        output_hidden,
        perturbation,
        train,
        logits_at: Some(&idx),
        ..Default::default()
    })?;
    let targets = batch.targets.flatten_all()?.index_select(&idx, 0)?;
    Ok((model.target_log_probs(&out.logits, &targets)?, out.hidden))
}

/// For every response token of `batch` (the order of [`response_log_probs`]), its index within
/// its example's response: 0 for the first answer token.
pub fn response_offsets(batch: &TokenBatch) -> Result<Vec<usize>> {
    let mask: Vec<Vec<f32>> = batch.loss_mask.to_vec2()?;
    let mut out = Vec::new();
    for row in mask {
        let mut k = 0;
        for m in row {
            if m > 0.0 {
                out.push(k);
                k += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn params() -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        vec![
            ("a".into(), Var::new(&[0.3f32, -1.2, 2.0], &dev).unwrap()),
            ("b".into(), Var::new(&[[0.5f32, 0.25], [-0.75, 1.5]], &dev).unwrap()),
        ]
    }

    /// Two losses that share both parameters, as a step's parts share the model.
    fn parts(p: &[(String, Var)]) -> (Tensor, Tensor) {
        let (a, b) = (p[0].1.as_tensor(), p[1].1.as_tensor());
        let f = ((a.sqr().unwrap().sum_all().unwrap() * 3.0).unwrap() + b.exp().unwrap().sum_all().unwrap()).unwrap();
        let h = (a.sin().unwrap().sum_all().unwrap() * b.sqr().unwrap().sum_all().unwrap()).unwrap();
        (f, h)
    }

    fn grads(loss: &Tensor, p: &[(String, Var)]) -> Vec<Vec<f32>> {
        gradients_of(loss, p.iter().map(|(_, v)| v)).unwrap().iter().map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    }

    #[test]
    fn backward_now_keeps_the_value_and_the_gradient() {
        let p = params();
        let (f, h) = parts(&p);
        let joint = (&f + &h).unwrap();
        let split = (backward_now(&f, &p).unwrap() + &h).unwrap();
        assert_eq!(joint.to_scalar::<f32>().unwrap(), split.to_scalar::<f32>().unwrap());
        assert_eq!(grads(&joint, &p), grads(&split, &p));
        // Without the gradient term the split loss would train on `h` alone.
        let h_only = grads(&(f.detach() + &h).unwrap(), &p);
        assert_ne!(grads(&split, &p), h_only);
    }

    #[test]
    fn a_zero_valued_gradient_term_applies_the_given_gradient() {
        let p = params();
        let g = vec![
            Tensor::new(&[1.0f32, 2.0, -3.0], &Device::Cpu).unwrap(),
            Tensor::new(&[[0.5f32, 0.0], [4.0, -1.0]], &Device::Cpu).unwrap(),
        ];
        let term = zero_valued_gradient(&p, &g).unwrap().unwrap();
        assert_eq!(term.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(grads(&term, &p), vec![vec![1.0, 2.0, -3.0], vec![0.5, 0.0, 4.0, -1.0]]);
        assert!(zero_valued_gradient(&p, &g[..1]).is_err());
        assert!(zero_valued_gradient(&[], &[]).unwrap().is_none());
    }
}
