//! Prints the last-position logits of a model with a PEFT adapter applied,
//! for comparison with Python peft: `peft_logits MODEL ADAPTER_DIR "TEXT"`.

use safetune_core::model::ForwardRequest;
use safetune_core::CausalLm;

fn main() -> safetune_core::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let dev = candle_core::Device::Cpu;
    let mut m = safetune_model::load_model(std::path::Path::new(&a[1]), &dev)?;
    safetune_lora::load_peft(&mut m, std::path::Path::new(&a[2]), &dev)?;
    let ids = m.tokenizer().encode(&a[3])?;
    let x = candle_core::Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
    let logits = m.forward(&ForwardRequest { ids: Some(&x), ..Default::default() })?.logits;
    let last = logits.squeeze(0)?.get(ids.len() - 1)?.to_vec1::<f32>()?;
    let mut idx: Vec<usize> = (0..last.len()).collect();
    idx.sort_by(|&i, &j| last[j].total_cmp(&last[i]));
    for &i in idx.iter().take(5) {
        println!("{i} {:.5}", last[i]);
    }
    Ok(())
}
