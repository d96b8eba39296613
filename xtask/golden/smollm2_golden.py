"""Produce fixtures/smollm2_golden.json with Hugging Face transformers.

Run once (dev tooling, not a runtime dependency):
    python3 xtask/golden/smollm2_golden.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf fixtures/smollm2_golden.json
transformers dequantizes the GGUF to f32 and un-permutes q/k itself, so it is
an independent reference for safetune's loader and forward pass.
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM

gguf = sys.argv[1]
out = sys.argv[2]
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf), torch_dtype=torch.float32)
model.eval()
# Token ids of a fixed benign ChatML prompt (tokenised by safetune's tokenizer test:
# the ids are checked against the tokenizer separately).
prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
ids = tok(prompt, add_special_tokens=False)["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
    gen = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0][len(ids):].tolist()
positions = [0, len(ids) // 2, len(ids) - 1]
golden = {
    "prompt": prompt,
    "ids": ids,
    "positions": positions,
    "argmax": [int(logits[p].argmax()) for p in positions],
    "logits_head": [[float(x) for x in logits[p][:64]] for p in positions],
    "top5": [[int(i) for i in logits[p].topk(5).indices] for p in positions],
    "top5_logits": [[float(x) for x in logits[p].topk(5).values] for p in positions],
    "greedy": gen,
    "reference": "transformers " + __import__("transformers").__version__ + ", torch " + torch.__version__,
}
json.dump(golden, open(out, "w"), indent=1)
print("wrote", out, "greedy:", tok.decode(gen))
