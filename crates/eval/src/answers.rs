//! A model's answers to prompt texts: greedy decoding settings and continuations cut at a
//! settled verdict, shared by the evaluation of sets (`evaluate`) and MT-Bench.

use safetune_core::judge::Judge;
use safetune_core::{CausalLm, GenerationParams, Result};

/// Greedy decoding with `max_new_tokens` and `batch_size`.
pub(crate) fn greedy(max_new_tokens: usize, batch_size: usize) -> GenerationParams {
    GenerationParams { max_new_tokens, temperature: 0.0, top_p: 1.0, seed: 0, batch_size }
}

/// The model's continuations of prompt texts (already in a template), decoded and trimmed;
/// with `settle`, each ends once that judge's verdict on it is settled (flag true: cut there).
pub(crate) fn complete_until(
    model: &dyn CausalLm,
    texts: &[String],
    params: &GenerationParams,
    settle: Option<&dyn Judge>,
) -> Result<Vec<(String, bool)>> {
    let tok = model.tokenizer();
    let prompts = texts.iter().map(|t| tok.encode(t)).collect::<Result<Vec<_>>>()?;
    let cut: Vec<std::sync::atomic::AtomicBool> = prompts.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
    let ids = match settle {
        None => model.generate(&prompts, params)?,
        Some(judge) => {
            let settled = |i: usize, ids: &[u32]| {
                // The text as the judge will see it (decoded, trimmed); a prefix that does not
                // decode is not settled.
                let done = tok.decode(ids).is_ok_and(|t| judge.settled(t.trim()));
                if done {
                    cut[i].store(true, std::sync::atomic::Ordering::Relaxed);
                }
                done
            };
            model.generate_until(&prompts, params, &settled)?
        }
    };
    ids.iter().zip(&cut).map(|(ids, c)| Ok((tok.decode(ids)?.trim().to_string(), c.load(std::sync::atomic::Ordering::Relaxed)))).collect()
}
