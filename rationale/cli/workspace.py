"""The workspace commands: ``init`` (a starter rationale.toml) and ``run`` (the whole chain)."""

from __future__ import annotations

import json

import click

STAGE_CHOICE = click.Choice(["import", "split", "synth", "distill", "eval", "compare"])


@click.command()
@click.argument("records", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing rationale.toml.")
def init(records: str | None, force: bool) -> None:
    """Write a commented starter rationale.toml here (RECORDS: your record file)."""
    from rationale.starter import write_starter

    path = write_starter(records=records, force=force)
    click.echo(
        f"wrote {path}: set [split] input to your record file"
        + (" (done)" if records else "")
        + ", [synth] teacher and [distill] base; then `rationale run --dry-run` shows the plan "
        "and its cost, and `rationale run` runs it",
        err=True,
    )


@click.command()
@click.argument("config", required=False, type=click.Path(exists=True))
@click.option("--from", "start", type=STAGE_CHOICE, help="Start at this stage.")
@click.option("--until", type=STAGE_CHOICE, help="Stop after this stage.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the stages, their commands and the synth cost estimate; run nothing.",
)
def run(config: str | None, start: str | None, until: str | None, dry_run: bool) -> None:
    """Run the workspace's chain: import, split, synth, distill, eval and compare.

    CONFIG is the workspace file (default: $RATIONALE_CONFIG, else rationale.toml here or in a
    parent). A finished stage is skipped when its settings and inputs are unchanged; one that
    was stopped resumes.
    """
    from rationale.workflow import run_workspace

    report = run_workspace(config, start=start, until=until, dry_run=dry_run,
                           echo=lambda line: click.echo(line, err=True))  # fmt: skip
    if report.estimate is not None:
        est = report.estimate
        cost = est["max_cost_usd"]
        click.echo(
            f"synth estimate: {est['to_call']} calls ({est['cached']} cached, "
            f"{est['already_done']} done), {est['prompt_tokens']} prompt tokens, at most "
            f"{est['max_completion_tokens']} completion tokens, at most "
            + (f"${cost:.4f}" if cost is not None else "an unknown cost (not in the price map)")
            + (
                f" online, at most ${est['max_cost_usd_batch']:.4f} with batch = true"
                if est.get("max_cost_usd_batch") is not None
                else ""
            ),
            err=True,
        )
        click.echo(json.dumps(est, indent=2))
    if report.table is not None:
        click.echo(report.table)
    if not dry_run:
        for line in report.summary_lines():
            click.echo(line, err=True)
