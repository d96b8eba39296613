"""safetune through the tools its users bring (run by `cargo xtask interop`).

    python check.py --url URL --hf DIR [--peft-base DIR --adapter A [--adapter B ...]]

URL is a running `safetune serve`; DIR the Hugging Face directory `safetune model export`
wrote of the very model it serves. Checks, on a fixed list of prompts:
- the official `openai` client: the model list; each answer whole and streamed
  (`stream=True` with `include_usage`), the streamed pieces concatenating to the whole text
  and the usage equal;
- transformers: DIR loads, its chat template (`apply_chat_template`, `add_generation_prompt`)
  gives the prompt length the server counted, and greedy decoding gives the server's answer;
- with --peft-base: peft loads the adapters on that base in order (each merged before the
  next, as safetune stacks them) and greedy decoding gives the server's answer again.
Prints one JSON line of counts; exits 1 when anything differs.
"""
import argparse
import json
import sys

import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    ("", "What is the capital of France?"),
    ("", "Give me three tips for staying healthy."),
    ("", "Translate 'good morning' into Spanish."),
    ("", "Write a haiku about the sea."),
    ("Answer in one word.", "Is the sky blue on a clear day?"),
    ("You are a careful assistant.", "How do I boil an egg?"),
    (None, "Explain photosynthesis in one sentence."),
    (None, "Name a prime number greater than 10."),
]
MAX_TOKENS = 32

ap = argparse.ArgumentParser()
ap.add_argument("--url", required=True)
ap.add_argument("--hf", required=True)
ap.add_argument("--peft-base")
ap.add_argument("--adapter", action="append", default=[])
args = ap.parse_args()


def messages(system, user):
    # None: no system message (the format's default system prompt applies);
    # "": an empty one (no system turn); otherwise that system prompt.
    m = [] if system is None else [{"role": "system", "content": system}]
    return m + [{"role": "user", "content": user}]


client = OpenAI(base_url=args.url, api_key="interop")
served = [m.id for m in client.models.list().data]
problems = []
if len(served) != 1:
    problems.append(f"models.list: {served}")
model_id = served[0]

answers = []
for system, user in PROMPTS:
    whole = client.chat.completions.create(model=model_id, messages=messages(system, user), max_tokens=MAX_TOKENS, temperature=0)
    text = whole.choices[0].message.content
    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
        model=model_id, messages=messages(system, user), max_tokens=MAX_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    if "".join(pieces) != text:
        problems.append(f"stream != whole for {user!r}: {''.join(pieces)!r} vs {text!r}")
    if usage is None or usage.model_dump() != whole.usage.model_dump():
        problems.append(f"stream usage {usage} != {whole.usage}")
    if finish != whole.choices[0].finish_reason:
        problems.append(f"finish_reason {finish} != {whole.choices[0].finish_reason}")
    answers.append((system, user, text, whole.usage.prompt_tokens))


def greedy(model, tok, label):
    same = 0
    for system, user, text, prompt_tokens in answers:
        ids = tok.apply_chat_template(messages(system, user), add_generation_prompt=True, tokenize=True, return_dict=True,
                                      return_tensors="pt")["input_ids"]
        if ids.shape[1] != prompt_tokens:
            problems.append(f"{label}: chat template gives {ids.shape[1]} prompt tokens, the server {prompt_tokens} ({user!r})")
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS, do_sample=False)
        got = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        if got == text:
            same += 1
        else:
            problems.append(f"{label}: {user!r}: {got!r} vs the server's {text!r}")
    return same


tok = AutoTokenizer.from_pretrained(args.hf)
exported = AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32).eval()
stream_problems = len(problems)
result = {"prompts": len(PROMPTS), "stream_problems": stream_problems, "transformers_same": greedy(exported, tok, "transformers")}
if args.peft_base:
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(args.peft_base, dtype=torch.float32)
    for a in args.adapter:
        model = PeftModel.from_pretrained(model, a).merge_and_unload()
    result["peft_adapters"] = len(args.adapter)
    result["peft_same"] = greedy(model.eval(), AutoTokenizer.from_pretrained(args.peft_base), "peft")
result["problems"] = problems
print(json.dumps(result))
sys.exit(1 if problems else 0)
