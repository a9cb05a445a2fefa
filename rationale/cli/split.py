"""The ``split`` command: a record file into train and test files (`rationale.split`)."""

from __future__ import annotations

from typing import Any

import click

from rationale.cli.options import (
    action_space_option,
    on_error_option,
    open_records,
    output_folder_option,
)


@click.command()
@click.argument("input_file", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@output_folder_option("Folder to write train.jsonl and test.jsonl to (each written atomically).")
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
def split(
    input_file: str,
    output: str,
    test_frac: float,
    by: str,
    seed: int,
    on_error: str,
    action_space: str | None,
) -> None:
    """Split a record file into train and test files with no session or user on both sides."""
    from rationale.split import split_records

    with open_records(input_file, on_error=on_error, action_space=action_space) as records:
        result = split_records(records, output, test_frac=test_frac, by=by, seed=seed)  # type: ignore[arg-type]
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
