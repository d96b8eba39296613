"""Load a safetune-written LoRA adapter with Python peft and print top-5 last-position logits.

    python3 xtask/golden/peft_check.py MODEL.gguf ADAPTER_DIR "TEXT"
Compare with `cargo run -p safetune-lora --example peft_logits -- MODEL.gguf ADAPTER_DIR "TEXT"`.
"""
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, adapter, text = sys.argv[1:4]
d, f = os.path.dirname(gguf), os.path.basename(gguf)
base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
ids = tok(text, add_special_tokens=False)["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0, -1]
v, i = logits.topk(5)
for a, b in zip(i.tolist(), v.tolist()):
    print(a, f"{b:.5f}")
