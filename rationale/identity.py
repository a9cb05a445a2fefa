"""What answered, by content: an API endpoint's identity, and the digests of files and models.

A model string says which model was asked, not who answered: ``hosted_vllm/student`` behind two
servers is two models. `endpoint` names an ``--api-base`` by its redacted form (for people) and
a slow hash of the whole URL (for comparison: two URLs that differ only in their credentials
are two endpoints, and the hash does not give a password away to a quick search).
`answered_by` is the string the response cache keys on.

A path says where a model or a test file is, not what it holds: weights retrained at the same
path, or a test file edited in place, are other content. `file_digest` is the sha256 of a
file's bytes; a model file's is cached beside it (``.rationale-digests.json``, keyed by size,
mtime, ctime and inode, so a 16 GB base is read once) or, where that folder is read-only or
another tool's (an installed package, the Hugging Face cache), under
``$RATIONALE_HOME/digests/``. `model_digest` is the digest of the files that decide a model's
answers: its weights, configs and tokenizer (a student: its adapter and its base).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rationale.errors import redact

__all__ = [
    "answered_by",
    "effective_api_base",
    "endpoint",
    "file_digest",
    "folder_digest",
    "model_digest",
]

SIDECAR = ".rationale-digests.json"
#: The files of a model folder that decide its answers (top level only: a hub folder's
#: ``original/`` copy of the weights is not what transformers loads).
MODEL_FILES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json", ".model", ".txt",
               ".jinja", ".tiktoken")  # fmt: skip
_ITERATIONS = 100_000  # pbkdf2: about 50 ms once per run; a guess costs the same


def endpoint(api_base: str | None) -> dict[str, str] | None:
    """``{"api_base": redacted URL, "sha256": slow hash of the whole URL}``, or None (the
    provider's own endpoint)."""
    if not api_base:
        return None
    return {"api_base": redact(api_base), "sha256": _slow_hash(api_base)}


def effective_api_base(model: str, api_base: str | None) -> str | None:
    """The endpoint litellm sends ``model``'s requests to: ``api_base``, else its global
    setting or the environment (``<PROVIDER>_API_BASE`` / ``_BASE_URL``; OpenAI's also
    ``OPENAI_BASE_URL``, ``OPENAI_API_BASE``); None: the provider's own."""
    import sys

    if api_base:
        return api_base
    provider = model.split("/", 1)[0].upper().replace("-", "_") if "/" in model else "OPENAI"
    names = [f"{provider}_API_BASE", f"{provider}_BASE_URL"]
    if provider in ("OPENAI", "TEXT_COMPLETION_OPENAI", "CUSTOM_OPENAI"):
        names += ["OPENAI_BASE_URL", "OPENAI_API_BASE"]
    litellm = sys.modules.get("litellm")  # its global, where a library caller set one
    found = [getattr(litellm, "api_base", None), *(os.environ.get(n) for n in names)]
    return next((str(v) for v in found if v), None)


_hashes: dict[str, str] = {}


def _slow_hash(url: str) -> str:
    if url not in _hashes:
        raw = hashlib.pbkdf2_hmac("sha256", url.encode(), b"rationale endpoint", _ITERATIONS)
        _hashes[url] = raw.hex()[:32]
    return _hashes[url]


def answered_by(client: Any) -> str:
    """The identity of whoever answers a client's requests: its model id, and its endpoint
    when it has one (``model @ redacted-url #hash``). The response cache keys on it."""
    found = endpoint(getattr(client, "endpoint_url", None))
    model = str(client.model_id)
    return model if found is None else f"{model} @ {found['api_base']} #{found['sha256']}"


# -- content digests --------------------------------------------------------------------------

_memo: dict[tuple[str, int, int, int, int], str] = {}


def _stat_key(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def file_digest(path: str | Path, *, remember: bool = True) -> str:
    """sha256 of a file's bytes, read once per (size, mtime, ctime, inode): cached in this
    process, and with ``remember`` beside the file (model weights; a data file is read again by
    a new process rather than leaving a file in the user's data folder)."""
    path = Path(path).resolve()
    size, mtime, ctime, ino = _stat_key(path)
    memo_key = (str(path), size, mtime, ctime, ino)
    if memo_key in _memo:
        return _memo[memo_key]
    stat = {"size": size, "mtime_ns": mtime, "ctime_ns": ctime, "ino": ino}
    cache = _sidecar(path.parent) if remember else {}
    entry = cache.get(path.name)
    if isinstance(entry, dict) and {k: entry.get(k) for k in stat} == stat:
        digest = str(entry["sha256"])
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        if remember:
            _store(path.parent, path.name, {**stat, "sha256": digest})
    _memo[memo_key] = digest
    return digest


def _sidecar_paths(folder: Path) -> list[Path]:
    """Beside the files, unless they belong to another tool (an installed package, the Hugging
    Face cache), then in the state folder only."""
    from rationale.paths import state_dir

    mine = hashlib.sha256(str(folder).encode()).hexdigest()[:24]
    ours = state_dir() / "digests" / f"{mine}.json"
    parts = set(folder.parts)  # a hub cache's files resolve into its blobs/
    theirs = {"site-packages", "dist-packages", "snapshots"} & parts or (
        "blobs" in parts and any(p.startswith("models--") for p in parts)
    )
    return [ours] if theirs else [folder / SIDECAR, ours]


def _sidecar(folder: Path) -> dict[str, Any]:
    for path in _sidecar_paths(folder):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def _store(folder: Path, name: str, entry: dict[str, Any]) -> None:
    """Record a digest beside the file, or in the state folder where its folder is read-only
    (a cache: a failure to write it only costs a second read)."""
    for path in _sidecar_paths(folder):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = _sidecar(folder)
            data[name] = entry
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
            return
        except OSError:
            continue


def folder_digest(folder: str | Path, suffixes: tuple[str, ...] = MODEL_FILES) -> str:
    """sha256 over the names and digests of a folder's top-level files with ``suffixes``."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffixes)
                   and p.name != SIDECAR and not p.name.startswith("."))  # fmt: skip
    for p in files:
        h.update(f"{p.name}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


def model_digest(spec: Any) -> str | None:
    """The content digest of a local model (a `rationale.predictor.ModelSpec`): its weights
    file or folder, and a student's adapter on top; None for an API model. A hub id that is not
    in the local cache counts by its name."""
    if spec.kind == "api":
        return None
    parts = []
    source = _local_folder(str(spec.source))
    if source is None:  # a hub id not in the local cache: its name is all there is to go by
        parts.append(f"hub\0{spec.source}")
    elif spec.gguf_file:
        parts.append(f"gguf\0{file_digest(source / spec.gguf_file)}")
    else:
        parts.append(f"model\0{folder_digest(source)}")
    if spec.adapter:
        parts.append(f"adapter\0{folder_digest(spec.adapter)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _local_folder(source: str) -> Path | None:
    """A model's folder: a path, or a hub id's snapshot in the local Hugging Face cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # not cached (or no huggingface_hub): nothing to digest
        return None
