"""PyTorch + PEFT reference for `cargo xtask perf --compare-torch`.

Times the same workloads as crates/train/examples/perf.rs on the same weights
(a Hugging Face directory exported by that example) and prints one JSON line
per workload: {"workload", "value", "unit", "peak_rss_mb"}. Dev tooling only.

usage: torch_ref.py HF_DIR WORKLOAD [--batch B] [--tokens T] [--steps S] [--new N] [--m M --k K --n N] [--dtype f32|bf16]

`--dtype bf16` loads the model in bfloat16 (the LoRA adapters PEFT adds stay f32)
and multiplies bf16 matrices in `gemm`: PyTorch's bf16 path, for the bf16 target.
"""
import json
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def flag(name, default):
    if name in sys.argv:
        return int(sys.argv[sys.argv.index(name) + 1])
    return default


def dtype():
    name = sys.argv[sys.argv.index("--dtype") + 1] if "--dtype" in sys.argv else "f32"
    return {"f32": torch.float32, "bf16": torch.bfloat16}[name]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_steps(model, batch, tokens, steps, params):
    opt = torch.optim.AdamW(params, lr=2e-4)
    ids = torch.randint(100, 1000, (batch, tokens))
    labels = ids.clone()
    labels[:, : tokens // 2] = -100  # loss on the answer half, as safetune masks prompts

    def step():
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main():
    path, workload = sys.argv[1], sys.argv[2]
    torch.set_num_threads(int(flag("--threads", torch.get_num_threads())))
    batch, tokens, steps, new = flag("--batch", 4), flag("--tokens", 128), flag("--steps", 3), flag("--new", 64)
    if workload == "gemm":
        # x @ W.T with W stored (n, k), as a Linear layer holds it: best of 15 after a warm-up.
        m, k, n = flag("--m", 512), flag("--k", 576), flag("--n", 1536)
        x, w = torch.randn(m, k, dtype=dtype()), torch.randn(n, k, dtype=dtype())
        x @ w.T
        best = float("inf")
        for _ in range(15):
            t = time.perf_counter()
            x @ w.T
            best = min(best, time.perf_counter() - t)
        print(json.dumps({"workload": workload, "value": 2 * m * k * n / best / 1e9, "unit": "GFLOP/s", "peak_rss_mb": peak_rss_mb()}))
        return
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype())
    tok = AutoTokenizer.from_pretrained(path)
    if workload in ("lora-qv", "lora-all"):
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "v_proj"] if workload == "lora-qv" else "all-linear"
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        value, unit = train_steps(model, batch, tokens, steps, params), "s/step"
    elif workload == "full":
        model.train()
        value, unit = train_steps(model, batch, tokens, steps, list(model.parameters())), "s/step"
    elif workload == "decode":
        model.eval()
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        text = tok.apply_chat_template(
            [{"role": "user", "content": "Write a short story about a lighthouse keeper."}], tokenize=False, add_generation_prompt=True
        )
        enc = tok([text] * batch, return_tensors="pt", padding=True)
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=2, do_sample=False)
            t = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0)
            dt = time.perf_counter() - t
        generated = (out[:, enc["input_ids"].shape[1] :] != tok.pad_token_id).sum().item()
        value, unit = generated / dt, "tok/s"
    elif workload == "prefill":
        model.eval()
        ids = torch.randint(100, 1000, (1, tokens))
        with torch.no_grad():
            model(input_ids=ids)
            t = time.perf_counter()
            model(input_ids=ids)
            value, unit = tokens / (time.perf_counter() - t), "tok/s"
    else:
        sys.exit(f"unknown workload {workload}")
    print(json.dumps({"workload": workload, "value": value, "unit": unit, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
