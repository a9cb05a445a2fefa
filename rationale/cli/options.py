"""The options and helpers shared by the commands, each defined once.

The output, action-space, on-error, config, verifier and model-call options; opening a record file
(``open_records``); and merging a ``--config`` TOML file with the flags actually given into a job's
config (``_job_config``). Only click is imported at module level.
"""

from __future__ import annotations

from typing import Any

import click

output_option = click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="File to write (written atomically: a crash leaves no half file).",
)


def output_folder_option(help: str = "Output folder.", *, required: bool = True) -> Any:
    """The ``-o/--output FOLDER`` option, with the command's own help."""
    return click.option(
        "-o", "--output", "output", required=required, type=click.Path(file_okay=False), help=help
    )


#: A record file argument that the workspace may give instead (split, synth).
input_argument = click.argument(
    "input_file", metavar="INPUT", required=False, type=click.Path(exists=True, dir_okay=False)
)

action_space_option = click.option(
    "--action-space",
    "action_space",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML file declaring the action types (default: click, type_and_submit, terminate).",
)


def _space(path: str | None) -> Any:
    """The action space declared in ``path``, or the default one."""
    from rationale.schema import ActionSpace

    return ActionSpace.from_file(path) if path else ActionSpace.default()


on_error_option = click.option(
    "--on-error",
    "on_error",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="fail: stop at the first bad line. skip: leave out the whole session of each bad line "
    "and report every line and session left out.",
)


def open_records(file: str, *, on_error: str, action_space: str | None = None) -> Any:
    """Open a record file for a command; with ``skip``, report on stderr what was left out."""
    from rationale.records import RecordFile

    records = RecordFile(file, space=_space(action_space), on_error=on_error)  # type: ignore[arg-type]
    for line in records.skip_report():
        click.echo(line, err=True)
    return records


def verifier_options(f: Any) -> Any:
    """The --verifier and --verifier-template options (synth, filter)."""
    f = click.option(
        "--verifier-template",
        help="The blind verifier's template (name, .jinja file or folder).  [default: verifier]",
    )(f)
    return click.option(
        "--verifier",
        default="auto",
        show_default=True,
        help="The blind verifier: a litellm model string, 'none' to turn the check off, or "
        "'auto': the teacher (none with --teacher local, which cannot verify).",
    )(f)


config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True),
    help="The workspace file (default: $RATIONALE_CONFIG, else rationale.toml here or in a "
    "parent); its table for this command holds flag names as keys; flags given here win.",
)


def _stack(*decorators: Any) -> Any:
    """Several click options as one decorator, applied in the order written."""

    def apply(f: Any) -> Any:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


#: The options of every command that calls models (synth, filter): one definition each.
model_call_options = _stack(
    click.option(
        "--api-base",
        help="An OpenAI-compatible endpoint (also the verifier's when it has the teacher's "
        "provider prefix).",
    ),
    click.option(
        "--client",
        type=click.Choice(["auto", "litellm", "fast"]),
        default="auto",
        show_default=True,
        help="auto: an openai/ or hosted_vllm/ model with --api-base takes the fast aiohttp path; "
        "everything else goes through litellm + instructor.",
    ),
    click.option(
        "--concurrency",
        type=click.IntRange(min=1),
        default=16,
        show_default=True,
        help="Requests in flight (per shard under --ray).",
    ),
    click.option(
        "--rpm",
        type=click.IntRange(min=1),
        help="At most this many requests a minute (all --ray shards together).",
    ),
    click.option(
        "--tpm",
        type=click.IntRange(min=1),
        help="At most this many tokens a minute (prompt + max completion; all --ray shards "
        "together).",
    ),
    click.option(
        "--max-context-tokens",
        type=click.IntRange(min=16),
        default=6000,
        show_default=True,
        help="Cut longer contexts to this many tokens (the teacher's around the acted-on "
        "element when found; blind prompts without looking at the action).",
    ),
    click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed."),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=60.0,
        show_default=True,
        help="Seconds per request.",
    ),
    click.option(
        "--max-cost",
        type=click.FloatRange(min=0),
        help="USD cap on what the run folder is billed, over every invocation (and every --ray "
        "shard together).",
    ),
    click.option(
        "--history-rationales",
        is_flag=True,
        help="Add earlier steps' rationales to the history (the paper's setting).",
    ),
    click.option(
        "--shard",
        metavar="K/N",
        help="Only shard K of N of the sessions (by a hash of session_id): N runs, one per "
        "shard, cover the input once; `rationale merge` joins them.",
    ),
)


#: The provider batch API options (synth, filter, eval): one definition each.
batch_options = _stack(
    click.option(
        "--batch",
        is_flag=True,
        help="Send the requests through the provider's batch API (openai/..., anthropic/...): "
        "half the price, answers within 24 h. Without --wait it submits and exits; rerun the "
        "same command to collect.",
    ),
    click.option(
        "--wait", is_flag=True, help="With --batch: wait for the jobs and finish the run here."
    ),
    click.option(
        "--poll-interval",
        type=click.FloatRange(min=0.01),
        default=60.0,
        show_default=True,
        help="With --batch --wait: seconds between two looks at the jobs.",
    ),
)


#: Running the shards of a job on a Ray cluster (synth, filter, eval).
scale_options = _stack(
    click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="auto",
        default=None,
        metavar="[ADDRESS]",
        help="Run --shards N shards as Ray tasks (auto: the running cluster, else a local one; "
        "or an address, or local), then merge them into -o, which every node must reach.",
    ),
    click.option(
        "--shards",
        type=click.IntRange(min=1),
        default=None,
        help="With --ray: how many shards (default: the CPUs of this machine).",
    ),
)


def _job_config(
    ctx: click.Context,
    model: Any,
    flags: dict[str, Any],
    *,
    stage: str | None = None,
    quiet: bool = False,
    **fixed: Any,
) -> Any:
    """A job's config: the flags typed, over the workspace file's table for ``stage``, over the
    defaults that chain the stages (each printed on stderr unless ``quiet``), over the flags'
    own defaults."""
    from click.core import ParameterSource

    from rationale.workspace import Workspace

    workspace = Workspace.find(flags.pop("config_file", None))
    typed: dict[str, Any] = {k: v for k, v in fixed.items() if v not in (None, (), [])}
    defaults: dict[str, Any] = {}
    for name, value in flags.items():
        source = ctx.get_parameter_source(name)
        if source in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            if value not in (None, ()):
                defaults[name] = value
        else:
            typed[name] = list(value) if isinstance(value, tuple) else value
    if stage == "filter":  # the filter re-applies synth's checks: it shares [synth]'s settings
        table = workspace.table("synth")
        wanted = (set(flags) | {"rules"}) - set(typed) - {"template"}  # template: the run's
        shared = {k: v for k, v in table.items() if k in wanted}
        if shared and not quiet:
            used = ", ".join(k.replace("_", "-") for k in shared)
            click.echo(f"filter: from {workspace.where('synth')}: {used}", err=True)
        values = {**defaults, **shared, **typed}
        stage = "synth"  # what error messages name
    elif stage:
        resolved = workspace.resolve(stage, typed)
        for note in () if quiet else resolved.notes:
            click.echo(note, err=True)
        values = {**defaults, **resolved.values}
    else:
        values = {**defaults, **typed}
    return workspace.validate(model, values, stage)
