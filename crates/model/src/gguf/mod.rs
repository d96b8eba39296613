//! Loading a llama-architecture GGUF file: weights dequantized to f32 and
//! renamed to Hugging Face names (q/k rows un-permuted back to the HF
//! rotate-half layout), the configuration, and the tokenizer built from the
//! embedded vocabulary and merges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;

use crate::config::LlamaConfig;
use crate::tokenizer::{PreTokenizer, TextTokenizer};
use crate::Llama;

mod header;

/// GGUF token type of control tokens (`<|im_start|>`).
const CONTROL: i32 = 3;

/// A GGUF file whose header passed every check, with what loading its weights needs.
struct Checked {
    file: String,
    f: std::fs::File,
    content: Content,
    cfg: LlamaConfig,
    tokenizer: TextTokenizer,
    format: safetune_core::PromptFormat,
    name: String,
}

/// Reads and checks everything but the weights: metadata, sizes against the file, tokenizer.
fn read_checked(path: &Path) -> Result<Checked> {
    let file = path.display().to_string();
    let mut f = std::fs::File::open(path).with_context(|| format!("{file}: cannot open"))?;
    // candle's reader divides by `general.alignment`: a zero there must be caught first.
    if let Some(0) = header::alignment(&mut f).map_err(|e| anyhow!("{file}: not a readable GGUF file: {e}"))? {
        bail!("{file}: `general.alignment` must be positive");
    }
    let content = Content::read(&mut f).map_err(|e| anyhow!("{file}: not a readable GGUF file: {e}"))?;
    let md = &content.metadata;
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "llama" {
        bail!("{file}: architecture `{arch}` is not supported (expected llama)");
    }
    let u = |k: &str| -> Result<usize> {
        let v = md.get(k).ok_or_else(|| anyhow!("{file}: missing metadata `{k}`"))?;
        v.to_u32().map(|x| x as usize).or_else(|_| v.to_u64().map(|x| x as usize)).map_err(|e| anyhow!("{file}: `{k}`: {e}"))
    };
    let fl = |k: &str, d: f64| md.get(k).and_then(|v| v.to_f32().ok()).map(|x| x as f64).unwrap_or(d);
    let hidden = u("llama.embedding_length")?;
    let heads = u("llama.attention.head_count")?;
    if heads == 0 || heads > hidden {
        bail!("{file}: `llama.attention.head_count` = {heads} is out of range (1..={hidden}, the embedding length)");
    }
    let kv_heads = u("llama.attention.head_count_kv").unwrap_or(heads);
    let blocks = u("llama.block_count")?;
    let present = content.tensor_infos.keys().filter_map(|k| k.strip_prefix("blk.")?.split_once('.')?.0.parse::<usize>().ok()).max();
    if Some(blocks) != present.map(|l| l + 1) {
        bail!("{file}: `llama.block_count` = {blocks}, but the file has tensors for {} blocks", present.map_or(0, |l| l + 1));
    }
    check_tensor_sizes(&content, &mut f, &file)?;
    let tokens = string_array(md.get("tokenizer.ggml.tokens"), &file, "tokenizer.ggml.tokens")?;
    let tied = !content.tensor_infos.contains_key("output.weight");
    // Rescaled rotary frequencies: linear is read; others (Llama-3.1's `rope_freqs` factors,
    // yarn) are refused rather than run silently wrong.
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        bail!("{file}: `rope_freqs.weight` (rescaled RoPE frequencies, e.g. Llama 3.1) is not supported in GGUF files; load the Hugging Face directory");
    }
    let rope_scaling = match md.get("llama.rope.scaling.type").and_then(|v| v.to_string().ok()).map(|s| s.as_str()) {
        None | Some("none") => None,
        Some("linear") => {
            let factor = fl("llama.rope.scaling.factor", 0.0);
            if !(factor.is_finite() && factor > 0.0) {
                bail!("{file}: `llama.rope.scaling.factor` must be a positive number");
            }
            Some(crate::config::RopeScaling::Linear { factor })
        }
        Some(other) => bail!("{file}: `llama.rope.scaling.type` = `{other}` is not supported (none and linear are)"),
    };
    let cfg = LlamaConfig {
        vocab_size: tokens.len(),
        hidden_size: hidden,
        intermediate_size: u("llama.feed_forward_length")?,
        num_layers: blocks,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hidden / heads,
        rope_theta: fl("llama.rope.freq_base", 10_000.0),
        rms_eps: fl("llama.attention.layer_norm_rms_epsilon", 1e-5),
        tie_embeddings: tied,
        max_positions: u("llama.context_length").unwrap_or(4096).min(8192),
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        rope_scaling,
    };
    cfg.validate(&file)?;
    let declared = content
        .tensor_infos
        .iter()
        .map(|(name, t)| Ok((hf_name(name).ok_or_else(|| anyhow!("{file}: unexpected tensor `{name}`"))?, t.shape.dims().to_vec())))
        .collect::<Result<Vec<_>>>()?;
    cfg.check_shapes(&declared, &file)?;

    let merges = string_array(md.get("tokenizer.ggml.merges"), &file, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        bail!("{file}: `tokenizer.ggml.token_type` has {} entries for {} tokens", types.len(), tokens.len());
    }
    let special: BTreeSet<u32> = types.iter().enumerate().filter(|(_, &t)| t == CONTROL).map(|(i, _)| i as u32).collect();
    let pre = match md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str) {
        Some("smollm") => PreTokenizer::DigitsThenByteLevel,
        _ => PreTokenizer::ByteLevel,
    };
    let inner = TextTokenizer::byte_level_bpe(&tokens, &merges, &special, pre)?;
    let eos = u("tokenizer.ggml.eos_token_id").ok().map(|x| x as u32);
    if let Some(e) = eos.filter(|&e| e as usize >= tokens.len()) {
        bail!("{file}: `tokenizer.ggml.eos_token_id` = {e} is not a token id (vocabulary of {})", tokens.len());
    }
    let template = md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let format = crate::hf::detect_format(&template, &tokens);
    let tok = crate::hf::finish_tokenizer(inner, format, eos, None).map_err(|e| anyhow!("{file}: {e}"))?;
    let name = md.get("general.name").and_then(|v| v.to_string().ok()).cloned().unwrap_or_else(|| file.clone());
    Ok(Checked { file, f, content, cfg, tokenizer: tok, format, name })
}

/// Checks a GGUF file as [`load_gguf`] does, without reading its weights: the configuration,
/// tokenizer and format it would load, or the error loading would give (cheap: runs check it
/// before writing anything).
pub fn check_gguf(path: &Path) -> Result<crate::CheckedModel> {
    let Checked { cfg, tokenizer, format, .. } = read_checked(path)?;
    Ok(crate::CheckedModel { config: cfg, tokenizer, format })
}

pub fn load_gguf(path: &Path, device: &Device) -> Result<Llama> {
    let Checked { file, mut f, content, cfg, tokenizer, format, name } = read_checked(path)?;
    let (heads, kv_heads) = (cfg.num_heads, cfg.num_kv_heads);

    let mut weights = BTreeMap::new();
    for name in content.tensor_infos.keys() {
        let hf = hf_name(name).ok_or_else(|| anyhow!("{file}: unexpected tensor `{name}`"))?;
        let q = content.tensor(&mut f, name, device).map_err(|e| anyhow!("{file}: tensor `{name}`: {e}"))?;
        let mut t = q.dequantize(device)?;
        if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") {
            t = unpermute(&t, heads)?;
        } else if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") {
            t = unpermute(&t, kv_heads)?;
        }
        weights.insert(hf, t);
    }

    Llama::from_weights(cfg, weights, tokenizer, &name, format, device).map_err(|e| anyhow!("{file}: {e}"))
}

/// Every tensor's element count and bytes, computed without overflow, must fit in the file
/// before any is read (candle sizes its buffer from the header's dimensions).
fn check_tensor_sizes(content: &Content, f: &mut std::fs::File, file: &str) -> Result<()> {
    use std::io::Seek;
    let len = f.seek(std::io::SeekFrom::End(0))?;
    for (name, t) in &content.tensor_infos {
        let elems = t.shape.dims().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let (block, size) = (t.ggml_dtype.block_size(), t.ggml_dtype.type_size());
        let bytes = elems.and_then(|n| (n / block).checked_mul(size)).map(|b| b as u64);
        let end = bytes.and_then(|b| content.tensor_data_offset.checked_add(t.offset)?.checked_add(b));
        if end.is_none_or(|e| e > len) {
            bail!("{file}: tensor `{name}` of shape {:?} does not fit in the file ({len} bytes)", t.shape.dims());
        }
    }
    Ok(())
}

fn string_array(v: Option<&Value>, file: &str, key: &str) -> Result<Vec<String>> {
    match v {
        Some(Value::Array(a)) => a.iter().map(|x| x.to_string().cloned().map_err(|e| anyhow!("{file}: `{key}`: {e}"))).collect(),
        _ => bail!("{file}: missing metadata `{key}`"),
    }
}

fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let m = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{m}.{kind}"))
}

/// Inverts llama.cpp's q/k row permutation (interleaved → rotate-half).
fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / heads;
    Ok(t.reshape((heads, hd / 2, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}
