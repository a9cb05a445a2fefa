"""A tiny random Llama and a locally trained tokenizer, for tests that need a real model.

`build_tiny_llama(folder)` saves a 2-layer Llama (hidden size 32) and a byte-level BPE tokenizer
trained with `tokenizers` on a few sentences, with a ChatML chat template: loading, generating,
training and merging all run in well under a second on one CPU thread, and nothing is
downloaded. Callers import torch and transformers first (``pytest.importorskip``).
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SENTENCES = [
    "I clicked buy now because the kettle was blue and under forty dollars.",
    "I typed the search words to find a cheaper pair of running shoes.",
    "I stopped here because the order was placed and the task was done.",
    "I opened the product page to read the reviews before buying.",
    "The shopper wants a blue kettle under forty dollars.",
    "Task: buy a blue kettle. Action: click product.buy_now",
    "You explain why a shopper took an action.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_llama(
    folder: str | Path,
    *,
    chat_template: str | None = CHATML,
    pad_token: str | None = "<|endoftext|>",
    hidden_size: int = 32,
    seed: int = 0,
) -> Path:
    """Save a random 2-layer Llama and its BPE tokenizer (bos, eos and pad set) in ``folder``.

    ``chat_template=None`` / ``pad_token=None`` leave the tokenizer without one.
    """
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = Path(folder)
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(SENTENCES * 3, trainer=trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token=pad_token,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
