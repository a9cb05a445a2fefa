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


def output_folder_option(help: str = "Output folder.") -> Any:
    """The ``-o/--output FOLDER`` option, with the command's own help."""
    return click.option(
        "-o", "--output", "output", required=True, type=click.Path(file_okay=False), help=help
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
    type=click.Path(exists=True, dir_okay=False),
    help="A TOML file of this job's settings (flag names with _ for -, and a [rules] table); "
    "flags given on the command line win.",
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
        help="Requests in flight.",
    ),
    click.option("--rpm", type=click.IntRange(min=1), help="At most this many requests a minute."),
    click.option(
        "--tpm",
        type=click.IntRange(min=1),
        help="At most this many tokens a minute (prompt + max completion).",
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
    click.option("--max-cost", type=click.FloatRange(min=0), help="USD budget of this invocation."),
    click.option(
        "--history-rationales",
        is_flag=True,
        help="Add earlier steps' rationales to the history (the paper's setting).",
    ),
)


def _job_config(ctx: click.Context, model: Any, flags: dict[str, Any], **fixed: Any) -> Any:
    """A job's config: the --config file, overridden by the flags actually given."""
    from click.core import ParameterSource
    from pydantic import ValidationError

    from rationale.errors import ConfigError

    config_file = flags.pop("config_file", None)
    values: dict[str, Any] = {}
    if config_file:
        try:
            import tomllib
        except ImportError:  # pragma: no cover  (Python 3.10)
            import tomli as tomllib  # type: ignore[no-redef]

        try:
            with open(config_file, "rb") as f:
                values = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None
    for name, value in flags.items():
        if not config_file or ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
            values[name] = value
        else:
            values.setdefault(name, value)
    values.update(fixed)
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"{config_file or 'flags'}: {problems}") from None
