"""Setting up the trainer: check the tokenized dataset, add its labels, configure trl's SFTTrainer.

The dataset is a `datasets.Dataset` with ``input_ids`` (list of token ids) and
``completion_mask`` (1 on the tokens the loss is computed on, 0 on the prompt), as
`distill.data.SFTData.tokenize` builds it. Every example must fit ``max_seq_length`` and train at
least one token: `check_dataset` raises `DistillError` rather than let TRL truncate or drop
anything, and `make_trainer` refuses a dataset that TRL's preparation shrank.

trl and torch are imported inside the functions, never at import time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from distill.errors import DistillError
from distill.training_args import training_arguments

if TYPE_CHECKING:
    from datasets import Dataset

    from distill.config import DistillConfig
    from distill.student import Student

__all__ = ["build_trainer", "check_dataset", "make_trainer", "training_arguments"]

# -- the dataset --------------------------------------------------------------------------------


def check_dataset(dataset: Dataset, config: DistillConfig) -> tuple[int, int]:
    """(trained tokens, total tokens) of a tokenized dataset, after checking every example.

    Each example needs ``input_ids`` and ``completion_mask`` of equal length, at most
    ``max_seq_length`` tokens, and at least one trained token: TRL would otherwise truncate an
    over-long example and silently drop one left with nothing to train. The first offenders are
    named (by their ``id`` column when there is one) in the `DistillError`.
    """
    missing = [c for c in ("input_ids", "completion_mask") if c not in dataset.column_names]
    if missing:
        raise DistillError(
            f"the training dataset lacks {', '.join(missing)} (it has "
            f"{', '.join(dataset.column_names) or 'no columns'}): expected the tokenized "
            "examples of distill.data"
        )
    if len(dataset) == 0:
        raise DistillError("the training dataset is empty: there is nothing to train on")
    columns = ["input_ids", "completion_mask"] + (["id"] if "id" in dataset.column_names else [])
    problems: list[str] = []
    count = trained = total = 0
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=1000):
        ids_list, masks = batch["input_ids"], batch["completion_mask"]
        names = batch.get("id") or [None] * len(ids_list)
        for ids, mask, name in zip(ids_list, masks, names, strict=True):
            where = f"example {index}" + (f" (id {name!r})" if name is not None else "")
            index += 1
            n, m = len(ids), sum(1 for bit in mask if bit)
            problem = None
            if len(mask) != n:
                problem = f"{where}: completion_mask has {len(mask)} entries for {n} tokens"
            elif n > config.max_seq_length:
                problem = f"{where}: {n} tokens, more than max_seq_length {config.max_seq_length}"
            elif m == 0:
                problem = f"{where}: no completion tokens to train (completion_mask is all 0)"
            if problem is not None:
                count += 1
                if len(problems) < 3:
                    problems.append(problem)
                continue
            trained += m
            total += n
    if count:
        more = f" (and {count - len(problems)} more)" if count > len(problems) else ""
        raise DistillError(
            f"{count} of {len(dataset)} training examples cannot be trained as they are: "
            f"{'; '.join(problems)}{more}. Nothing is truncated or dropped silently: raise "
            "--max-seq-length, or lower --max-context-tokens so prompts are cut to fit"
        )
    return trained, total


def _with_labels(dataset: Dataset) -> Dataset:
    """The dataset plus a ``labels`` column: the token id where completion_mask is 1, else -100.

    TRL (1.15 and 1.16) would build the same column from ``completion_mask`` itself; building
    it here makes the masking independent of TRL's version and of Unsloth's patched trainer,
    both of which use a ``labels`` column as it is.
    """

    def label(example: dict[str, Any]) -> dict[str, list[int]]:
        return {
            "labels": [
                token if bit else -100
                for token, bit in zip(example["input_ids"], example["completion_mask"], strict=True)
            ]
        }

    return dataset.map(label, desc="Masking prompt tokens")


# -- the trainer --------------------------------------------------------------------------------


def build_trainer(
    student: Student,
    dataset: Dataset,
    config: DistillConfig,
    *,
    callbacks: Iterable[Any] = (),
) -> Any:
    """A trl ``SFTTrainer`` set up for ``config``, on the checked, labelled ``dataset``.

    The dataset is used as it is: TRL does not tokenize a dataset that has ``input_ids``, and
    keeps a ``labels`` column. Raises `DistillError` if TRL's preparation lost an example.
    """
    check_dataset(dataset, config)
    return make_trainer(student, dataset, config, callbacks)


def make_trainer(
    student: Student, dataset: Dataset, config: DistillConfig, callbacks: Iterable[Any] = ()
) -> Any:
    """`build_trainer` for a dataset that `check_dataset` has passed (`fit` checks it first)."""
    from trl import SFTTrainer

    labelled = _with_labels(dataset)
    args = student.training_args or training_arguments(
        config, backend=student.backend, device=student.device
    )
    trainer = SFTTrainer(
        model=student.model,
        args=args,
        train_dataset=labelled,
        processing_class=student.tokenizer,
        callbacks=list(callbacks),
    )
    kept = len(trainer.train_dataset)
    if kept != len(dataset):
        raise DistillError(
            f"trl's dataset preparation kept {kept} of {len(dataset)} examples; refusing to "
            "train on a silently reduced dataset"
        )
    return trainer
