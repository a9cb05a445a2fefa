"""How distill sets itself up on several processes, per method (fast; no launch, no GPU).

The launches themselves are trained in tests/test_distill_launch.py (`slow`). Here: reading the
launcher's variables, the choice of backend (Unsloth stays single-GPU), where each process puts
the model on a GPU (DDP: its own; FSDP/DeepSpeed: nowhere, 4-bit stored as bf16), the trainer's
DDP settings, and the renamed `load_in_4bit` setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distill import DistillError
from distill.config import DistillConfig
from distill.distributed import Launch, current, global_batch

LAUNCHED = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}


def test_the_launchers_variables() -> None:
    assert current({}) == Launch() and current({}).is_main and not current({}).distributed
    ddp = current(LAUNCHED)
    assert (ddp.rank, ddp.local_rank, ddp.world_size, ddp.strategy) == (3, 1, 4, "ddp")
    assert not ddp.is_main and ddp.distributed and not ddp.shards_model
    assert ddp.describe() == "4 processes (ddp)" and Launch().describe() == "1 process"
    fsdp = current({**LAUNCHED, "ACCELERATE_USE_FSDP": "true"})
    assert fsdp.strategy == "fsdp" and fsdp.shards_model
    assert current({**LAUNCHED, "ACCELERATE_USE_DEEPSPEED": "true"}).strategy == "deepspeed"
    assert current({"WORLD_SIZE": "1", "RANK": "0"}) == Launch()
    # an accelerate config for FSDP applies on one process too: the model is wrapped there
    alone = current({"WORLD_SIZE": "1", "RANK": "0", "ACCELERATE_USE_FSDP": "true"})
    assert alone.shards_model and not alone.distributed and alone.describe() == "1 process (fsdp)"
    assert global_batch(4, 2, ddp) == 32 and global_batch(4, 2, Launch()) == 8


def test_unsloth_stays_single_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill import models

    monkeypatch.setattr(models, "cuda_available", lambda: True)
    monkeypatch.setattr(models, "_unsloth_installed", lambda: True)
    assert models.choose_backend("auto") == ("unsloth", "CUDA and unsloth available")
    assert models.choose_backend("auto", processes=8) == (
        "hf",
        "8 processes: Unsloth is the single-GPU path",
    )
    assert models.choose_backend("auto", method="full") == ("hf", "full fine-tuning")
    with pytest.raises(DistillError, match=r"launched on 8 processes, but Unsloth trains on one"):
        models.choose_backend("unsloth", processes=8)
    with pytest.raises(DistillError, match=r"--method full needs --backend hf"):
        models.choose_backend("unsloth", method="full")
    monkeypatch.setattr(models, "cuda_available", lambda: False)
    assert models.choose_backend("auto", processes=2) == ("hf", "no CUDA")


FSDP = {**LAUNCHED, "ACCELERATE_USE_FSDP": "true"}


@pytest.mark.parametrize(
    ("env", "method", "device_map", "storage", "dtype"),
    [
        ({}, "qlora", {"": 0}, None, "bfloat16"),
        (LAUNCHED, "qlora", {"": 1}, None, "bfloat16"),  # DDP: this process's GPU on its node
        (LAUNCHED, "lora", {"": 1}, None, "bfloat16"),
        # FSDP/DeepSpeed place the model: the launch's arguments have set this process's GPU
        (FSDP, "qlora", None, "bfloat16", "bfloat16"),
        ({**LAUNCHED, "ACCELERATE_USE_DEEPSPEED": "true"}, "qlora", None, "bfloat16", "bfloat16"),
        # full fine-tuning keeps float32 master weights (bf16 autocast) unless sharded
        ({}, "full", {"": 0}, None, "float32"),
        (LAUNCHED, "full", {"": 1}, None, "float32"),
        (FSDP, "full", None, None, "bfloat16"),
    ],
)
def test_where_each_process_loads_the_base(
    env: dict[str, str],
    method: str,
    device_map: Any,
    storage: str | None,
    dtype: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """On CUDA (stood in for: this machine has none), against a recording from_pretrained."""
    import importlib.util

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from distill import student
    from distill.models import ResolvedBase

    # bitsandbytes only where CUDA is: stand-ins for it and for its config (which checks it)
    find_spec = importlib.util.find_spec

    def with_bitsandbytes(name: str, *args: Any) -> Any:
        return object() if name == "bitsandbytes" else find_spec(name, *args)

    monkeypatch.setattr(student.importlib.util, "find_spec", with_bitsandbytes)
    monkeypatch.setattr(transformers, "BitsAndBytesConfig", lambda **kwargs: kwargs)

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_USE_FSDP",
                 "ACCELERATE_USE_DEEPSPEED"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    seen: dict[str, Any] = {}

    class Model:
        @staticmethod
        def from_pretrained(source: str, **kwargs: Any) -> Any:
            seen.update(kwargs)
            return object()

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    config = DistillConfig(base="b", data="d", output=str(tmp_path), method=method)
    student._load_hf(ResolvedBase(str(tmp_path)), config=config, device="cuda")
    assert seen.get("device_map") == device_map
    assert seen["dtype"] == getattr(torch, dtype)
    quantization = seen.get("quantization_config")
    assert (quantization is not None) == (method == "qlora")
    if quantization is not None:
        assert quantization["load_in_4bit"] and quantization["bnb_4bit_quant_type"] == "nf4"
        stored = quantization.get("bnb_4bit_quant_storage")  # absent: bitsandbytes' uint8
        assert stored == (getattr(torch, storage) if storage else None)


def test_trainer_settings_under_ddp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    from distill.training_args import _sft_arguments

    config = DistillConfig(base="b", data="d", output=str(tmp_path), batch_size=2, grad_accum=3)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)

    def args(device: str) -> dict[str, Any]:
        return _sft_arguments("hf", device, config, trl.SFTConfig)

    single = args("cuda")
    assert single["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert "ddp_find_unused_parameters" not in single
    assert (single["per_device_train_batch_size"], single["gradient_accumulation_steps"]) == (2, 3)
    for name, value in LAUNCHED.items():
        monkeypatch.setenv(name, value)
    launched = args("cuda")
    assert launched["ddp_find_unused_parameters"] is False
    # the per-device numbers are the flags' own: the processes multiply the global batch
    assert (launched["per_device_train_batch_size"], launched["gradient_accumulation_steps"]) == (
        2,
        3,
    )
    assert "gradient_checkpointing_kwargs" not in args("cpu")  # no checkpointing on a CPU


def test_the_renamed_4bit_setting_says_what_to_write(tmp_path: Path) -> None:
    from rationale.errors import RationaleError
    from rationale.workspace import Workspace

    path = tmp_path / "rationale.toml"
    path.write_text("[distill]\nload-in-4bit = false\n")
    with pytest.raises(RationaleError, match=r"'load-in-4bit' is now method: method = \"qlora\""):
        Workspace.find(str(path))


def test_fsdp_without_gpus_is_refused_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from distill import student

    for name, value in {**LAUNCHED, "ACCELERATE_USE_FSDP": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(student, "cuda_available", lambda: False)
    config = DistillConfig(base="no/such-model", data="d", output="o", backend="hf")
    with pytest.raises(DistillError, match=r"launched with FSDP .* needs GPUs.*torchrun"):
        student.prepare(config)  # the base is never looked up


@pytest.mark.parametrize("env", [{}, LAUNCHED, FSDP])
def test_a_launch_sets_up_its_process_before_loading(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's arguments (process group, this process's GPU, ZeRO-3's partitioned load)
    come before the model under a launcher; without one they are made by the trainer."""
    pytest.importorskip("torch")
    from distill import student

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(student, "cuda_available", lambda: True)
    monkeypatch.setattr(student, "resolve_base", lambda base, backend: student.ResolvedBase(base))
    order: list[str] = []

    class Loaded(Exception):
        pass

    def arguments(config: Any, **kw: Any) -> str:
        order.append("arguments")
        return "args"

    def load(*args: Any, **kw: Any) -> Any:
        order.append("load")
        raise Loaded

    monkeypatch.setattr(student, "training_arguments", arguments)
    monkeypatch.setattr(student, "load_model_and_tokenizer", load)
    with pytest.raises(Loaded):
        student.prepare(DistillConfig(base="b", data="d", output="o", backend="hf"))
    assert order == (["arguments", "load"] if env else ["load"])


@pytest.mark.parametrize(("env", "autocast"), [({}, True), (LAUNCHED, True),
                         ({**LAUNCHED, "ACCELERATE_USE_DEEPSPEED": "true"}, False)])  # fmt: skip
def test_lora_adapters_keep_the_base_dtype_under_deepspeed(
    env: dict[str, str], autocast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """peft's float32 adapters on a bf16 base break ZeRO-3's gathering (trl does the same)."""
    pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from distill import student

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(peft, "get_peft_model", lambda model, lora, **kw: seen.update(kw))
    model = type("Model", (), {"is_loaded_in_4bit": False})()
    student.add_lora(model, DistillConfig(base="b", data="d", output="o"), backend="hf")
    assert seen == {"autocast_adapter_dtype": autocast}
