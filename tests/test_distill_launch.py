"""`rationale distill` on 2 CPU processes (gloo) under torchrun and accelerate launch (`slow`).

The command is launched exactly as the README shows, on a tiny local Llama. A probe loaded into
every process (tests/launch_probe/sitecustomize.py) records from the outside which process
wrote what under the output folder and a digest of each rank's final weights. Checked:

- both ranks end with bit-identical weights (DDP all-reduces the gradients);
- only rank 0 writes the output folder (with --merge, merged/ too); rank 1 writes nothing there
  but its own RNG state in each checkpoint (``rng_state_1.pth``, which the Trainer needs to
  resume that rank exactly); the probe saw every file there but Rust-written tokenizer.json;
- the loss per step matches a single-process run with the same global batch (8 = 4 per device
  x 2 processes; the single run takes 8 per step), and the adapters match;
- a run killed after its first checkpoint resumes under torchrun to the same weights.

The tolerance. Both runs see the same examples in the same order at every step (16 examples,
a multiple of the global batch, so no epoch ends in a short batch that accelerate's
``even_batches`` would fill from the epoch's start). What differs is float32 arithmetic:
the gradient is a gloo average of two half-batch sums instead of one sum, and each rank pads to
its own longest example. That moves a loss by a few float32 rounding steps (measured on this
machine: 1.6e-7 relative at most over these 4 steps at lr 1e-2). The test allows 1e-5
relative: 60x the measured noise, yet far below what a different global batch does to the same
run (the single-process run with batch 4, also run here, differs by 1.1e-3; the test requires
more than 20x the tolerance), so a launch that trained on the wrong batch, or each rank on its
own data, fails it. The adapters then differ by at most 1.1e-5 (weights up to 0.19 after 4
Adam steps of lr 1e-2, each moving a weight by up to ~1e-2): they are compared at 1e-4, 1% of
one step. A resumed run is bit-identical to the uninterrupted one (measured), and is held to
the same tolerances.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import record, write_lines

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

BIN = Path(sys.executable).parent
PROBE = Path(__file__).parent / "launch_probe"
PAGE = '<page><a name="item.red">red hat</a><a name="item.blue">blue hat</a></page>'
TOLERANCE = 1e-5
# What a process other than rank 0 may write under the output folder: the checkpoint folders
# and its own RNG state in them.
RANK1_MAY_WRITE = re.compile(r"checkpoints(/checkpoint-\d+(/rng_state_1\.pth)?)?")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama and a synth run of 16 accepted steps (4 sessions x 4)."""
    from openai_server import ScriptedServer
    from tiny_model import build_tiny_llama

    from rationale.synth import SynthConfig, run_synth

    root = tmp_path_factory.mktemp("launch")
    tiny = build_tiny_llama(root / "tiny")
    lines = [
        record(f"s{s}", k, context=PAGE, instruction=f"Buy hat {s}",
               action={"type": "click", "name": ("item.red", "item.blue")[(s + k) % 2]})
        for s in range(4)
        for k in range(4)
    ]  # fmt: skip
    source = write_lines(root / "input.jsonl", lines)
    with pytest.MonkeyPatch.context() as mp, ScriptedServer() as server:
        mp.setenv("RATIONALE_HOME", str(root / "home"))
        mp.setenv("OPENAI_API_KEY", "sk-test")
        run_synth(SynthConfig(input=str(source), output=str(root / "run"),
                              teacher="openai/test-model", api_base=server.url,
                              verifier="none"))  # fmt: skip
    (root / "job.toml").write_text("[distill]\nsave_steps = 2\nwarmup_ratio = 0.0\n")
    return {"root": root, "tiny": tiny, "run": root / "run"}


def distill_args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["distill", "--base", str(setup["tiny"]), "--data", str(setup["run"]), "-o", str(out),
            "--method", "lora", "--max-steps", "4", "--learning-rate", "0.01",
            "--max-seq-length", "1024", "--max-context-tokens", "300",
            "--config", str(setup["root"] / "job.toml"), *extra]  # fmt: skip


def launch(kind: str, args: list[str], probe: Path | None, watch: Path) -> Any:
    """Run ``rationale ARGS`` on 2 processes with launcher ``kind`` (or 1 without a launcher)."""
    commands = {
        "torchrun": [str(BIN / "torchrun"), "--nproc-per-node", "2", "-m", "rationale.cli"],
        "accelerate": [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "-m", "rationale.cli"],
        "single": [str(BIN / "rationale")],
    }  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}:"
           f"{os.environ.get('PATH', '')}", "RATIONALE_TEST_WATCH": str(watch)}  # fmt: skip
    env.pop("RATIONALE_TEST_PROBE", None)
    if probe is not None:
        probe.mkdir(parents=True, exist_ok=True)
        env["RATIONALE_TEST_PROBE"] = str(probe)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE), env.get("PYTHONPATH")]))
    proc = subprocess.run([*commands[kind], *args], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps)), f"a step logged twice or out of order: {steps}"
    return {row["step"]: row["loss"] for row in rows}


def adapter(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def writes(probe: Path) -> dict[str, list[str]]:
    """What each rank wrote under the output folder, from the probe's files."""
    found: dict[str, list[str]] = {}
    for path in probe.glob("writes-*.txt"):
        rank = path.name.split("-")[1]
        found.setdefault(rank, []).extend(path.read_text().splitlines())
    return found


@pytest.fixture(scope="module")
def single(setup: dict[str, Path]) -> dict[str, Any]:
    """Single-process references: the same global batch (8), and the per-device batch (4)."""
    root = setup["root"]
    same, small = root / "single-8", root / "single-4"
    launch("single", distill_args(setup, same, "--batch-size", "8"), None, same)
    launch("single", distill_args(setup, small, "--batch-size", "4"), None, small)
    return {"out": same, "losses": losses(same), "small_losses": losses(small)}


@pytest.mark.parametrize("kind", ["torchrun", "accelerate"])
def test_two_processes_train_as_one_with_the_global_batch(
    kind: str, setup: dict[str, Path], single: dict[str, Any]
) -> None:
    out, probe = setup["root"] / f"{kind}-out", setup["root"] / f"{kind}-probe"
    proc = launch(kind, distill_args(setup, out, "--batch-size", "4", "--merge"), probe, out)

    # both ranks hold the same weights at the end
    digests = {p.name: json.loads(p.read_text()) for p in probe.glob("weights-*.json")}
    assert set(digests) == {"weights-0.json", "weights-1.json"}
    assert digests["weights-0.json"] == digests["weights-1.json"]

    # only rank 0 wrote the output; rank 1 only its RNG state in each checkpoint
    written = writes(probe)
    assert set(written) <= {"0", "1", "launcher"} and not written.get("launcher")
    rank0 = {line.split(" ", 1)[1] for line in written["0"]}
    for name in ("training_log.jsonl", "config.json", "README.md", "loss.png",
                 "adapter/adapter_model.safetensors", "adapter/tokenizer_config.json",
                 "checkpoints/checkpoint-2/optimizer.pt", "prompt_format.json",
                 "checkpoints/checkpoint-4/rng_state_0.pth"):  # fmt: skip
        assert name in rank0, f"the probe did not see rank 0 write {name}"
    rank1 = sorted({line.split(" ", 1)[1] for line in written.get("1", [])})
    assert [p for p in rank1 if not RANK1_MAY_WRITE.fullmatch(p)] == []
    assert "checkpoints/checkpoint-4/rng_state_1.pth" in rank1  # the probe sees rank 1 too
    # and the probe saw every file that is there, but the tokenizer.json files that the
    # tokenizers library writes from Rust (their tokenizer_config.json beside them is seen)
    anyone = {line.split(" ", 1)[1] for lines in written.values() for line in lines}
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert sorted(f for f in files - anyone if Path(f).name != "tokenizer.json") == []
    assert "merged/model.safetensors" in rank0  # --merge: in place on rank 0 (DDP)
    assert not (out / "training_args.bin").exists()

    # one report, with the global batch, and the run record says it too
    err = proc.stderr
    assert err.count("global batch 8 examples per step (4 per device x 1 accumulation x "
                     "2 processes (ddp))") == 1  # fmt: skip
    assert err.count("distill: saved to") == 1 and err.count("trained 4 steps of 8 examples") == 1
    assert err.count("[distill]: save-steps, warmup-ratio") == 1  # the settings' note too
    result = json.loads((out / "config.json").read_text())["result"]
    assert (result["processes"], result["global_batch"], result["steps"]) == (2, 8, 4)
    assert result["epochs_done"] == pytest.approx(2.0)  # 4 steps x 8 of 16 examples
    assert (
        "4 per device x 1 accumulation x 2 processes = 8 per step"
        in (out / "README.md").read_text()
    )

    # the loss matches the single process with the same global batch, not the per-device one
    mine, theirs, small = losses(out), single["losses"], single["small_losses"]
    assert list(mine) == list(theirs) == [1, 2, 3, 4]
    assert all(abs(mine[s] - theirs[s]) <= TOLERANCE * abs(theirs[s]) for s in mine), (mine, theirs)
    assert max(abs(mine[s] - small[s]) / abs(small[s]) for s in mine) > 20 * TOLERANCE
    ours, reference = adapter(out), adapter(single["out"])
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-4, msg=name)
    assert any(not t.eq(0).all() for n, t in ours.items() if "lora_B" in n)  # it trained


def test_a_killed_launch_resumes_to_the_same_weights(setup: dict[str, Path]) -> None:
    """Under torchrun: a run that stopped after its step-2 checkpoint, resumed with --resume,
    ends where an uninterrupted run ends (each rank restores its own RNG state)."""
    root = setup["root"]
    whole, cut = root / "resume-whole", root / "resume-cut"
    args = ["--batch-size", "4"]
    launch("torchrun", distill_args(setup, whole, *args), None, whole)
    # the folder as a kill after the step-2 checkpoint leaves it: no later checkpoint, no outputs
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "checkpoint-4")
    for name in ("adapter", "config.json", "README.md", "loss.png"):
        path = cut / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    proc = launch("torchrun", distill_args(setup, cut, *args, "--resume"), None, cut)
    assert proc.stderr.count("resuming from checkpoint-2 (step 2)") == 1
    assert losses(cut) == pytest.approx(losses(whole), rel=TOLERANCE)
    ours, reference = adapter(cut), adapter(whole)
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-4, msg=name)
