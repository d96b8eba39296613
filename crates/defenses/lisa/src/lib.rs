//! Lisa (Huang et al. 2024, "Lazy Safety Alignment for Large Language Models
//! against Harmful Fine-tuning"): bi-state optimisation with a proximal term.
//!
//! Training alternates `alignment_step` steps on safety data (the `safety`
//! stream) and `finetune_step` steps on the user's data (`task`). At each
//! switch the current weights become the anchor, and each state's loss adds
//! `(ρ/2)·‖w − w_anchor‖²`, pulling it toward where the other state left the
//! weights. The proximal term is off for the first `warmup_ratio` of steps.

use candle_core::{Tensor, Var};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::training::{stream, StepContext, StepState, TrainStep};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Defaults are those of the paper's code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LisaConfig {
    /// Steps on safety data per cycle.
    pub alignment_step: usize,
    /// Steps on the user's data per cycle.
    pub finetune_step: usize,
    /// Proximal strength ρ.
    pub rho: f64,
    /// Share of all steps at the start with the proximal term off.
    pub warmup_ratio: f64,
}

impl Default for LisaConfig {
    fn default() -> Self {
        Self { alignment_step: 100, finetune_step: 900, rho: 1.0, warmup_ratio: 0.1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Alignment,
    Finetune,
}

pub struct Lisa {
    pub cfg: LisaConfig,
    state: Option<State>,
    pub anchor: Vec<Tensor>,
    /// Step at which each switch happened (for tests and logs).
    pub switches: Vec<(usize, State)>,
}

impl Lisa {
    pub fn new(cfg: LisaConfig) -> Result<Self> {
        for (key, v) in [("alignment_step", cfg.alignment_step), ("finetune_step", cfg.finetune_step)] {
            if v == 0 {
                bail!("defense_options.lisa.{key}: must be at least 1");
            }
        }
        if !(cfg.rho >= 0.0 && cfg.rho.is_finite()) {
            bail!("defense_options.lisa.rho: must be a number ≥ 0");
        }
        if !(0.0..=1.0).contains(&cfg.warmup_ratio) {
            bail!("defense_options.lisa.warmup_ratio: must be in [0, 1]");
        }
        Ok(Self { cfg, state: None, anchor: Vec::new(), switches: Vec::new() })
    }

    /// The state of optimiser step `step`: each cycle starts with alignment.
    pub fn state_at(&self, step: usize) -> State {
        let cycle = self.cfg.alignment_step + self.cfg.finetune_step;
        if step % cycle < self.cfg.alignment_step {
            State::Alignment
        } else {
            State::Finetune
        }
    }

    /// `(ρ/2)·Σ‖w − anchor‖²` over the trainable tensors.
    pub fn proximal(&self, params: &[(String, Var)]) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for ((_, w), a) in params.iter().zip(&self.anchor) {
            let d = (w.as_tensor() - a)?.sqr()?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + d)?,
                None => d,
            });
        }
        Ok(match total {
            Some(t) => Some((t * (self.cfg.rho / 2.0))?),
            None => None,
        })
    }
}

impl TrainStep for Lisa {
    fn name(&self) -> &str {
        "lisa"
    }

    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let step = ctx.step();
        let state = self.state_at(step);
        if self.state != Some(state) {
            // The weights the other state leaves behind anchor this one.
            self.anchor = ctx.params().iter().map(|(_, v)| v.as_tensor().detach().copy()).collect::<candle_core::Result<_>>()?;
            self.state = Some(state);
            self.switches.push((step, state));
        }
        let name = match state {
            State::Alignment => stream::SAFETY,
            State::Finetune => stream::TASK,
        };
        let batch = ctx.next_batch(name)?.ok_or_else(|| anyhow!("lisa needs a `{name}` data stream"))?;
        let loss = ctx.lm_loss(&batch, None, false)?.0;
        let warm = (self.cfg.warmup_ratio * ctx.total_steps() as f64).ceil() as usize;
        if step < warm || self.cfg.rho == 0.0 {
            return Ok(loss);
        }
        Ok(match self.proximal(ctx.params())? {
            Some(p) => (loss + p)?,
            None => loss,
        })
    }

    /// The state in force, the switches so far and the anchor weights.
    fn save_state(&self) -> Result<StepState> {
        let name = |s: State| match s {
            State::Alignment => "alignment",
            State::Finetune => "finetune",
        };
        let switches: Vec<(usize, &str)> = self.switches.iter().map(|&(step, s)| (step, name(s))).collect();
        Ok(StepState { values: serde_json::json!({ "state": self.state.map(name), "switches": switches }), tensors: self.anchor.clone() })
    }

    fn load_state(&mut self, saved: StepState) -> Result<()> {
        let parse = |v: &serde_json::Value| match v.as_str() {
            Some("alignment") => Ok(State::Alignment),
            Some("finetune") => Ok(State::Finetune),
            _ => Err(anyhow!("lisa: checkpoint: `{v}` is not a state")),
        };
        self.state = match &saved.values["state"] {
            serde_json::Value::Null => None,
            v => Some(parse(v)?),
        };
        let switches = saved.values["switches"].as_array().ok_or_else(|| anyhow!("lisa: checkpoint: no switches"))?;
        self.switches = switches
            .iter()
            .map(|p| Ok((p[0].as_u64().ok_or_else(|| anyhow!("lisa: checkpoint: bad switch step"))? as usize, parse(&p[1])?)))
            .collect::<Result<_>>()?;
        self.anchor = saved.tensors;
        Ok(())
    }
}

impl Defense for Lisa {
    const NAME: &'static str = "lisa";
    const DESCRIPTION: &'static str =
        "bi-state optimisation: alternate safety and task steps with a proximal pull to the other state's weights (Huang et al. 2024)";
    const DIFFERS: &'static str = "as the reference (git-disl/Lisa: rho 1, 100 alignment / 900 fine-tuning steps per cycle, no proximal term in the first 10% of steps)";
    type Options = LisaConfig;
    fn plan(cfg: LisaConfig) -> Result<DefensePlan> {
        Ok(DefensePlan { step: Some(Box::new(Lisa::new(cfg)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(Lisa);
