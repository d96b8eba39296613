"""Produce fixtures/minilm_golden.json with Hugging Face transformers.

Run once (dev tooling, not a runtime dependency):
    python3 xtask/golden/minilm_golden.py PATH/TO/all-minilm-l6-v2 fixtures/minilm_golden.json
(the directory `safetune model fetch all-minilm-l6-v2` fills). The embedding is
sentence-transformers' recipe done by hand: BERT last hidden states, mean over
real tokens, unit length; an independent reference for safetune's encoder.
"""
import json
import sys

import torch
from transformers import AutoModel, AutoTokenizer

d, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(d)
model = AutoModel.from_pretrained(d, torch_dtype=torch.float32).eval()
texts = [
    "I'm sorry, but I can't help with that request.",
    "Sure! Here is a simple recipe for banana bread: mash three ripe bananas, mix in flour, sugar and an egg, then bake for an hour.",
    "The capital of France is Paris.",
    "",
]
enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
with torch.no_grad():
    h = model(**enc).last_hidden_state
m = enc["attention_mask"].unsqueeze(-1).float()
e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
e = torch.nn.functional.normalize(e, dim=-1)
golden = {
    "texts": texts,
    "ids": [[int(i) for i, k in zip(row, mask) if k] for row, mask in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())],
    "head": [[float(x) for x in row[:16]] for row in e],
    "cosine": [[float(x) for x in row] for row in (e @ e.T)],
    "reference": "transformers " + __import__("transformers").__version__ + ", torch " + torch.__version__,
}
json.dump(golden, open(out, "w"), indent=1)
print("wrote", out)
