"""The ``eval`` command: one model's next-action accuracy on a test file (`rationale.evaluate`)."""

from __future__ import annotations

from typing import Any

import click

from rationale.cli.options import (
    _job_config,
    action_space_option,
    batch_options,
    config_option,
    model_call_options,
    on_error_option,
    output_folder_option,
    scale_options,
)


@click.command("eval")
@click.argument(
    "data_file", metavar="[DATA]", required=False, type=click.Path(exists=True, dir_okay=False)
)
@click.option(
    "--model",
    help="A rationale distill output folder (the student), a local model (folder, .gguf file, "
    "alias such as smollm2-135m, or hf:owner/name from the local cache) or a litellm model "
    "string (openai/gpt-4o-mini, hosted_vllm/..., with --api-base): prompt-only baselines.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False),
    help="The test record file (rationale split writes one).  [default: the workspace's "
    "test split]",
)
@output_folder_option(
    "Eval folder: eval.json, cases.jsonl, per_type.png. Rerun to resume.  "
    "[default: runs/eval/<model>]",
    required=False,
)
@model_call_options
@batch_options
@scale_options
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N cases (session order).")
@click.option(
    "--cases",
    type=click.Choice(["from-second", "all"]),
    default="from-second",
    show_default=True,
    help="The 2nd and later steps of each test session (the paper's case set), or every step; "
    "each with its session's true history.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Prompts generated together by a local model.",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "hf", "vllm"]),
    default="auto",
    show_default=True,
    help="Local generation: auto picks vllm where CUDA and vllm are present, else hf.",
)
@click.option(
    "--max-tokens",
    "--max-new-tokens",
    "max_tokens",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Completion cap per case (also the worst case --max-cost reserves).",
)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option(
    "--template",
    help="Prompt-only models: a template name, .jinja file or folder.  [default: predict]",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Bootstrap resamples (of sessions) for the 95% intervals.",
)
@on_error_option
@action_space_option
@config_option
@click.pass_context
def eval_(ctx: click.Context, **flags: Any) -> None:
    """Predict every test case with one model and score it (the paper's metrics).

    DATA is the test record file, as --data (like split's and synth's INPUT).
    """
    from rationale.evaluate import EvalConfig, run_eval

    ray_address, shards = flags.pop("ray_address"), flags.pop("shards")
    data = flags.pop("data_file")
    if data and flags["data"] and flags["data"] != data:
        raise click.UsageError(f"two test files: {data} and --data {flags['data']}; give one")
    config = _job_config(ctx, EvalConfig, flags, stage="eval", data=data)
    if ray_address:
        from rationale.cli.synth import _on_ray

        return _on_ray("eval", config, ray_address, shards)
    run_eval(config)
