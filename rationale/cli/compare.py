"""The ``compare`` command: evals of the same test cases in one table (`rationale.compare`)."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument(
    "eval_dirs", metavar="EVAL_DIR...", nargs=-1, required=True, type=click.Path(exists=True)
)
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False),
    help="Folder to write compare.md (the table) and compare.png (the chart) to.",
)
@click.option(
    "--reference",
    type=click.Path(exists=True),
    help="The eval the others are measured against (difference and McNemar p); added as a row "
    "if not listed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the markdown table.")
def compare(eval_dirs: tuple[str, ...], output: str | None, reference: str | None,
            as_json: bool) -> None:  # fmt: skip
    """Compare evals of the same test cases in one table, like the paper's."""
    from rationale.compare import compare as compare_evals

    result = compare_evals(eval_dirs, reference=reference)
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
