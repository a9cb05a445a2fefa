"""The ``compare`` command: evals of the same test cases in one table (`rationale.compare`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rationale.cli.options import config_option


@click.command()
@click.argument("eval_dirs", metavar="EVAL_DIR...", nargs=-1, type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False),
    help="Folder to write compare.md (the table) and compare.png (the chart) to.",
)
@click.option(
    "--reference",
    help="The eval the others are measured against (difference and McNemar p); added as a row "
    "if not listed. In a workspace, an arm's name (base, actions, rationale, teacher) is its "
    "eval, runs/eval/<arm>.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the markdown table.")
@config_option
def compare(eval_dirs: tuple[str, ...], output: str | None, reference: str | None,
            as_json: bool, config_file: str | None) -> None:  # fmt: skip
    """Compare evals of the same test cases in one table, like the paper's.

    With no EVAL_DIR, the evals of the workspace's arms (runs/eval/<arm>, from `rationale run`).
    """
    from rationale.compare import compare as compare_evals

    names = None
    if not eval_dirs:
        eval_dirs, names, reference = _workspace_evals(reference, config_file)
        if output is None:
            from rationale.workspace import Workspace

            output = Workspace.find(config_file).table("compare").get("output")
    elif reference is not None and not Path(reference).expanduser().exists():
        workspace, arms, found = _arms(config_file)  # an arm's name, or an error listing them
        reference = workspace.reference_eval(reference, arms, found, "--reference", _UNRUN)
    result = compare_evals(eval_dirs, reference=reference, names=names)
    for row in result.rows:
        if row.metrics.get("failed"):
            click.echo(
                f"warning: {row.folder}: {row.metrics['failed']} cases failed (no answer after "
                "the retries) and count as wrong; rerun its eval to ask them again",
                err=True,
            )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(result.markdown())
    click.echo(
        f"{len(result.rows)} evals of the same {result.n_cases} cases in "
        f"{result.n_sessions} sessions",
        err=True,
    )
    if output:
        table, chart = result.write(output)
        click.echo(f"wrote {table} and {chart}", err=True)


#: Why an arm has no eval to compare.
_UNRUN = "no runs/eval/<arm>/eval.json yet: `rationale run` makes it"


def _arms(config_file: str | None) -> tuple[Any, list[str], list[str]]:
    """The workspace, its arms, and those whose eval exists (runs/eval/<arm>/eval.json)."""
    from rationale.compare import ARMS
    from rationale.workspace import Workspace

    workspace = Workspace.find(config_file)
    arms = workspace.table("compare").get("arms") or list(ARMS)
    found = [a for a in arms if (workspace.default("eval", a) / "eval.json").exists()]
    return workspace, arms, found


def _workspace_evals(
    reference: str | None, config_file: str | None
) -> tuple[tuple[str, ...], list[str], str | None]:
    """The workspace's arm evals that exist, their names, and the reference's folder (given as
    an arm's name or a folder, by --reference or [compare] reference; else the rationale arm's
    eval where there is one)."""
    from rationale.errors import ConfigError
    from rationale.workspace import show

    workspace, arms, found = _arms(config_file)
    if not found:
        raise ConfigError(
            "compare: no EVAL_DIR given, and no arm eval under "
            f"{show(workspace.default('eval'))}; give the eval folders, or `rationale run` first"
        )
    folders = tuple(str(workspace.default("eval", a)) for a in found)
    click.echo(f"compare: the workspace's arms {', '.join(found)} (runs/eval/<arm>)", err=True)
    given = reference or workspace.table("compare").get("reference")
    if given is None and "rationale" not in found:
        return folders, found, None  # by default the rationale arm's, which has no eval here
    where = "--reference" if reference else f"{workspace.where('compare')} reference"
    ref = workspace.reference_eval(given or "rationale", arms, found, where, _UNRUN)
    return folders, found, ref
