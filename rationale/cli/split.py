"""The ``split`` command: a record file into train and test files (`rationale.split`)."""

from __future__ import annotations

from typing import Any

import click

from rationale.cli.options import (
    _job_config,
    action_space_option,
    config_option,
    input_argument,
    on_error_option,
    open_records,
    output_folder_option,
)


@click.command()
@input_argument
@output_folder_option(
    "Folder to write train.jsonl and test.jsonl to (each written atomically).  "
    "[default: runs/split]",
    required=False,
)
@click.option(
    "--test-frac",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Fraction of the sessions (or users) on the test side, rounded to a whole number.",
)
@click.option(
    "--by",
    type=click.Choice(["session", "user"]),
    default="session",
    show_default=True,
    help="Keep each session, or each user (user_id; none: the session alone), on one side.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Which split.")
@on_error_option
@action_space_option
@config_option
@click.pass_context
def split(ctx: click.Context, input_file: str | None, **flags: Any) -> None:
    """Split a record file into train and test files with no session or user on both sides."""
    from rationale.split import SplitConfig, split_records

    config = _job_config(ctx, SplitConfig, flags, stage="split", input=input_file)
    with open_records(
        config.input, on_error=config.on_error, action_space=config.action_space
    ) as records:
        result = split_records(
            records, config.output, test_frac=config.test_frac, by=config.by, seed=config.seed
        )
    by, test_frac, seed = config.by, config.test_frac, config.seed
    for side in (result.train, result.test):
        click.echo(_side_line(side, by), err=True)
    total = result.train.groups + result.test.groups
    groups = "user groups" if by == "user" else "sessions"
    click.echo(
        f"test: {result.test.groups} of {total} {groups} ({result.achieved_frac:.3f}; "
        f"asked {test_frac}), seed {seed}",
        err=True,
    )


def _side_line(side: Any, by: str) -> str:
    types = ", ".join(f"{k} {v}" for k, v in side.action_types.items()) or "no steps"
    users = f"{side.groups} user groups, " if by == "user" else ""
    return f"wrote {users}{side.sessions} sessions, {side.steps} steps ({types}) to {side.path}"
