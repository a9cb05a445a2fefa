"""Test probe, loaded by every Python process of a launch when this folder is on PYTHONPATH.

tests/test_distill_launch.py puts it there to watch `rationale distill` under accelerate launch
and torchrun from the outside, with the product's code unchanged. It does nothing unless
RATIONALE_TEST_PROBE names a folder; then each process (tagged with its RANK, or "launcher")
writes there:

- ``writes-<rank>-<pid>.txt``: every path under RATIONALE_TEST_WATCH that the process opened
  for writing, created, renamed or removed: Python's audit events (``open``, ``os.mkdir``,
  ``os.rename``, ``os.remove``, ...), plus ``torch.save`` and safetensors' ``save_file``, which
  write from C++/Rust and raise no audit event;
- ``weights-<rank>.json``: a digest of the model's parameters when training ends (through
  `distill.train._make_trainer`, the hook the benchmarks use), so ranks can be compared.
"""

from __future__ import annotations

import os
import sys

_PROBE = os.environ.get("RATIONALE_TEST_PROBE")

if _PROBE:
    _WATCH = os.path.realpath(os.environ["RATIONALE_TEST_WATCH"])
    _RANK = os.environ.get("RANK", "launcher")
    _LOG = open(  # noqa: SIM115 (kept open for the life of the process)
        os.path.join(_PROBE, f"writes-{_RANK}-{os.getpid()}.txt"), "a", buffering=1
    )
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def _note(kind: str, path: object) -> None:
        if isinstance(path, int) or path is None:
            return
        try:
            real = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        if real == _WATCH or real.startswith(_WATCH + os.sep):
            _LOG.write(f"{kind} {os.path.relpath(real, _WATCH)}\n")

    def _hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            ):
                _note("write", path)
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree"):
            _note(event, args[0])
        elif event == "os.rename":
            _note(event, args[0])
            _note(event, args[1])

    sys.addaudithook(_hook)

    import safetensors.torch
    import torch

    _torch_save = torch.save
    _safe_save = safetensors.torch.save_file

    def _save(obj: object, f: object, *args: object, **kwargs: object) -> object:
        if isinstance(f, (str, os.PathLike)):
            _note("torch.save", f)
        return _torch_save(obj, f, *args, **kwargs)

    def _save_file(tensors: object, filename: object, *args: object, **kwargs: object) -> object:
        _note("save_file", filename)
        return _safe_save(tensors, filename, *args, **kwargs)

    torch.save = _save
    torch.serialization.save = _save
    safetensors.torch.save_file = _save_file

    import distill.train

    _make_trainer = distill.train._make_trainer

    def _probed_make_trainer(*args: object, **kwargs: object) -> object:
        import hashlib
        import json

        from transformers import TrainerCallback

        class Digest(TrainerCallback):  # type: ignore[misc]
            def on_train_end(self, args, state, control, model=None, **kw):  # type: ignore[no-untyped-def]
                digest = hashlib.sha256()
                names = []
                for name, param in sorted(model.named_parameters()):
                    digest.update(name.encode())
                    digest.update(param.detach().cpu().contiguous().numpy().tobytes())
                    names.append(name)
                with open(os.path.join(_PROBE, f"weights-{_RANK}.json"), "w") as f:
                    json.dump({"sha256": digest.hexdigest(), "parameters": len(names)}, f)

        trainer = _make_trainer(*args, **kwargs)
        trainer.add_callback(Digest())
        return trainer

    distill.train._make_trainer = _probed_make_trainer
