"""How big a base model is, and whether to try training it on this machine's CPU.

The parameter count is read without downloading or loading any weights: from the alias table
(`distill.models.ALIASES`), a local folder's ``config.json`` (or the copy of one already in the
Hugging Face cache), a ``.gguf`` file's tensor table, or the size in a repo name
(``...-8B-Instruct``). When none of them tells, nothing is refused.

Training on a CPU (the hf backend, float32) needs at least 4 bytes per parameter for the frozen
weights, 16 per LoRA parameter (weights, gradients and Adam's two moments; LoRA is counted as 1%
of the model, more than r 16 on every linear layer adds) and a fifth more for activations and the
framework: a floor, not a promise. A base over `CPU_PARAMS_LIMIT` parameters, or one whose floor
is more than the machine's memory, is refused unless ``allow_cpu``: it would take days.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.models import ALIASES, ResolvedBase

__all__ = [
    "CPU_PARAMS_LIMIT",
    "check_cpu_training",
    "cpu_training_bytes",
    "machine_memory_bytes",
    "parameter_count",
    "params_from_config",
]

CPU_PARAMS_LIMIT = 3.0e9
_LORA_SHARE = 0.01
_OVERHEAD = 1.2
# GGUF metadata value types of a fixed size: (u)int8/16/32, float32, bool, (u)int64, float64.
_GGUF_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
# "8B", "1.5b", "135M" as a word of a repo name; not the "4bit" of "bnb-4bit".
_SIZE_IN_NAME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([bBmM])(?![a-zA-Z])")


def parameter_count(resolved: ResolvedBase) -> float | None:
    """The base's parameter count, estimated without downloading or loading; None if unknown."""
    if resolved.alias in ALIASES:
        return float(ALIASES[resolved.alias]["params"])
    folder = Path(resolved.source)
    if resolved.gguf_file is not None:
        return _gguf_count(folder / resolved.gguf_file)
    if folder.is_dir():
        return _config_count(folder / "config.json")
    cached = _cached_config(resolved.source)
    if cached is not None:
        count = _config_count(cached)
        if count is not None:
            return count
    # the last size-like word: "Qwen2.5-7B" names the size after the version
    sizes = _SIZE_IN_NAME.findall(resolved.source.split("/")[-1])
    if not sizes:
        return None
    number, unit = sizes[-1]
    return float(number) * (1e9 if unit in "bB" else 1e6)


def params_from_config(config: dict[str, Any]) -> float | None:
    """Parameters of a decoder-only transformer from its ``config.json`` values.

    Attention (grouped-query heads), a gated MLP (times the experts of a mixture), the
    embeddings and, unless tied, the output head; norms and biases are left out.
    """
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]  # a multimodal wrapper around the language model

    def get(*names: str) -> Any:
        for name in names:
            if isinstance(config.get(name), int) and config[name] > 0:
                return config[name]
        return None

    hidden = get("hidden_size", "n_embd")
    layers = get("num_hidden_layers", "n_layer")
    vocab = get("vocab_size")
    if not (hidden and layers and vocab):
        return None
    inner = get("intermediate_size", "n_inner") or 4 * hidden
    heads = get("num_attention_heads", "n_head") or 1
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or hidden // heads
    experts = get("num_local_experts", "num_experts") or 1
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * inner * experts
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return float(layers * (attention + mlp) + embeddings)


def cpu_training_bytes(params: float) -> float:
    """The memory floor of LoRA training on a CPU in float32 (see the module docstring)."""
    return params * (4 + 16 * _LORA_SHARE) * _OVERHEAD


def machine_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def check_cpu_training(
    resolved: ResolvedBase, *, allow_cpu: bool, memory: int | None = None
) -> str | None:
    """Refuse, with its memory estimate, a base too big to train on this machine's CPU.

    Raises `DistillError` for a base over `CPU_PARAMS_LIMIT` parameters or whose memory floor
    is more than ``memory`` (default: `machine_memory_bytes`). With ``allow_cpu`` the same
    finding is returned as a warning instead; None when the base is small enough or its size
    is unknown.
    """
    params = parameter_count(resolved)
    if params is None:
        return None
    memory = machine_memory_bytes() if memory is None else memory
    need = cpu_training_bytes(params)
    size = f"~{params / 1e9:.1f}B" if params >= 1e9 else f"~{params / 1e6:.0f}M"
    if params > CPU_PARAMS_LIMIT:
        why = f"needs ~{need / 1e9:.0f} GB and days"
    elif memory is not None and need > memory:
        why = f"needs ~{need / 1e9:.0f} GB, more than this machine's {memory / 1e9:.0f} GB"
    else:
        return None
    finding = f"base {resolved.describe()} has {size} parameters: training on a CPU {why}"
    if allow_cpu:
        return f"{finding} (--allow-cpu: trying anyway)"
    raise DistillError(f"{finding}; use a GPU, or --allow-cpu to try anyway")


def _config_count(path: Path) -> float | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading reports an unreadable config properly
    return params_from_config(config) if isinstance(config, dict) else None


def _cached_config(repo_id: str) -> Path | None:
    """The hub repo's config.json if the Hugging Face cache already holds it (no download)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id or cache: the size is then just unknown
        return None
    return Path(found) if isinstance(found, str) else None


def _gguf_count(path: Path) -> float | None:
    """The elements of every tensor in a GGUF file, from its header alone.

    Parsed here rather than with the gguf package's reader, which decodes every metadata array
    (a tokenizer's vocabulary: seconds) to get there. None for a file that is not GGUF v2+.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"GGUF" or struct.unpack_from("<I", m, 4)[0] not in (2, 3):
                return None  # not GGUF, version 1 (32-bit counts) or big-endian
            tensors, entries = struct.unpack_from("<QQ", m, 8)
            pos = 24

            def skip_value(kind: int, pos: int) -> int:
                if kind == 8:  # a string: u64 length, bytes
                    return pos + 8 + struct.unpack_from("<Q", m, pos)[0]
                if kind == 9:  # an array: u32 item type, u64 count, items
                    item, count = struct.unpack_from("<IQ", m, pos)
                    pos += 12
                    if item in _GGUF_SCALAR_BYTES:
                        return pos + count * _GGUF_SCALAR_BYTES[item]
                    for _ in range(count):
                        pos = skip_value(item, pos)
                    return pos
                return pos + _GGUF_SCALAR_BYTES[kind]

            for _ in range(entries):  # metadata: key string, u32 value type, value
                pos = skip_value(8, pos)
                pos = skip_value(struct.unpack_from("<I", m, pos)[0], pos + 4)
            total = 0
            for _ in range(tensors):  # name, u32 dims, u64 shape[dims], u32 type, u64 offset
                pos = skip_value(8, pos)
                dims = struct.unpack_from("<I", m, pos)[0]
                total += math.prod(struct.unpack_from(f"<{dims}Q", m, pos + 4))
                pos += 4 + 8 * dims + 12
            return float(total)
    except (OSError, ValueError, KeyError, RecursionError, struct.error):
        return None  # loading the file says what is wrong with it
