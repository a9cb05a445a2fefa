"""The commands that read and show record files: import (mind2web, opera, miniwob, browser-log),
validate, steps, render."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from rationale.cli.options import (
    _job_config,
    _space,
    action_space_option,
    config_option,
    on_error_option,
    open_records,
)


def _import_io(f: Any) -> Any:
    """SOURCES and -o of both importers (each may come from the workspace's [import])."""
    f = click.option(
        "-o",
        "--output",
        "output",
        type=click.Path(dir_okay=False),
        help="Record file to write (atomically).  [default: runs/records.jsonl]",
    )(f)
    return click.argument("sources", nargs=-1, type=click.Path())(f)


_first_existing_option = click.option(
    "--first-existing",
    is_flag=True,
    help="Read only the first SOURCE that exists (a workspace can name the full data, then a "
    "shipped sample for machines without it).",
)


@click.command("mind2web")
@_import_io
@click.option("--add-terminate", is_flag=True, help="Append a terminate step to every session.")
@click.option(
    "--domain",
    multiple=True,
    help="Keep the sessions of this domain (Shopping, Travel, Entertainment; any case); "
    "repeatable.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(min=1),
    help="Keep this many sessions, chosen by a hash of their id (the same ones every time, "
    "spread over every file and website).",
)
@_first_existing_option
@config_option
@click.pass_context
def import_mind2web(ctx: click.Context, sources: tuple[str, ...], **flags: Any) -> None:
    """Import raw Mind2Web train files (files or folders of train_*.json)."""
    _import(ctx, flags, format="mind2web", source=list(sources))


@click.command("opera")
@_import_io
@click.option(
    "--sessions",
    "sessions",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="OPeRA session rows (session_id, user_id) giving each session its user_id.",
)
@click.option(
    "--users",
    "users",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="OPeRA user rows (user_id, survey) giving each user a persona.",
)
@_first_existing_option
@config_option
@click.pass_context
def import_opera(ctx: click.Context, sources: tuple[str, ...], **flags: Any) -> None:
    """Import OPeRA action records (a JSONL/parquet file, or a folder of them)."""
    _import(ctx, flags, format="opera", source=list(sources))


_max_page_tokens_option = click.option(
    "--max-page-tokens",
    type=click.IntRange(min=32),
    help="Cut each simplified page to this many tokens, actionable elements last to go "
    "(default: whole pages; the summary says how many targets survived).",
)


@click.command("miniwob")
@_import_io
@_max_page_tokens_option
@_first_existing_option
@config_option
@click.pass_context
def import_miniwob(ctx: click.Context, sources: tuple[str, ...], **flags: Any) -> None:
    """Import MiniWoB++ human demonstrations (.json/.json.gz files or folders of them)."""
    _import(ctx, flags, format="miniwob", source=list(sources))


@click.command("browser-log")
@_import_io
@_max_page_tokens_option
@config_option
@click.pass_context
def import_browser_log(ctx: click.Context, sources: tuple[str, ...], **flags: Any) -> None:
    """Import a browser log: one JSONL line per raw page event (README, "Browser logs")."""
    _import(ctx, flags, format="browser-log", source=list(sources))


_NO_STEP = {
    "clicks_on_no_element": "clicks on no element of the page",
    "typing_without_text": "key runs that typed nothing",
    "sessions_without_actions": "sessions without an action",
}


def _import(ctx: click.Context, flags: dict[str, Any], **fixed: Any) -> None:
    import time

    from rationale.importers import ImportConfig, run_import

    config = _job_config(ctx, ImportConfig, flags, stage="import", **fixed)
    started = time.monotonic()
    result = run_import(config)
    click.echo(
        f"wrote {result.steps} steps of {result.sessions} sessions to {result.output}"
        f" in {time.monotonic() - started:.1f} s",
        err=True,
    )
    if result.targets is not None:
        t = result.targets
        unnamed = ", ".join(f"{k} {v}" for k, v in t["unnamed"].items()) or "none"
        click.echo(
            f"targets in their page: {t['in_page']} of {t['actions']} actions "
            f"({100 * (t['share_in_page'] or 0):.2f}%); kept and flagged without a name: "
            f"{unnamed}",
            err=True,
        )
        skipped = {k: t[k] for k in _NO_STEP if t.get(k)}
        if skipped:
            click.echo(
                "made no step: " + ", ".join(f"{_NO_STEP[k]} {v}" for k, v in skipped.items()),
                err=True,
            )
        click.echo(
            f"action space (it has a 'type' action): {result.action_space}; pass it as "
            f"--action-space to validate, synth and eval",
            err=True,
        )


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@action_space_option
def validate(file: str, as_json: bool, action_space: str | None) -> None:
    """Check a record file and summarise it; exit 1 if any line is bad."""
    from rationale.records import RecordFile

    with RecordFile(file, space=_space(action_space), on_error="skip") as records:
        stats = records.stats()
        errors = records.errors
        skipped = records.skipped_sessions
    stats["errors"] = [e.to_dict() | {"error": str(e)} for e in errors]
    stats["skipped_sessions"] = sorted(skipped)
    if as_json:
        click.echo(json.dumps(stats, ensure_ascii=False))
    else:
        click.echo(_validate_text(stats))
    if errors:
        sys.exit(1)


def _validate_text(stats: dict[str, Any]) -> str:
    ctx = stats["context_chars"]
    lines = [
        f"{stats['file']}: {stats['sessions']} sessions, {stats['steps']} steps"
        f" ({stats['lines']} lines read)",
        "action types: " + (", ".join(f"{k} {v}" for k, v in stats["action_types"].items()) or "-"),
        "outcomes: " + ", ".join(f"{k} {v}" for k, v in stats["outcomes"].items()),
        f"context characters: {ctx['with_context']} steps with context, {ctx['null']} null"
        + (
            f"; p50 {ctx['p50']}, p90 {ctx['p90']}, p99 {ctx['p99']}, max {ctx['max']}"
            if ctx["with_context"]
            else ""
        ),
    ]
    targets = stats["target_in_page"]
    if targets["checked"]:
        lines.append(
            f"targets in their page: {targets['in_page']} of {targets['checked']} actions with a "
            f"target and a page ({100 * targets['share']:.2f}%)"
        )
    errors = stats["errors"]
    lines.append(f"errors: {len(errors)}")
    shown = 20
    lines += [f"  {e['error']}" for e in errors[:shown]]
    if len(errors) > shown:
        lines.append(f"  ... {len(errors) - shown} more (--json lists them all)")
    if stats["skipped_sessions"]:
        lines.append(
            f"sessions left out because of a bad line: {len(stats['skipped_sessions'])} "
            "(their steps are not counted above)"
        )
    return "\n".join(lines)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--session", "session_ids", multiple=True, help="Only this session (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many steps.")
@click.option(
    "--history-rationales",
    is_flag=True,
    help="Add earlier steps' rationales to the history (the paper's setting).",
)
@on_error_option
@action_space_option
def steps(
    file: str,
    session_ids: tuple[str, ...],
    limit: int | None,
    history_rationales: bool,
    on_error: str,
    action_space: str | None,
) -> None:
    """Print each step with the history every later stage derives for it (JSONL)."""
    from rationale.sessions import iter_steps, session_outcome

    with open_records(file, on_error=on_error, action_space=action_space) as records:
        count = 0
        left_out = records.skipped_sessions if on_error == "skip" else {}
        for session_id in session_ids or records.session_ids():
            if session_id in left_out:
                click.echo(f"session {session_id!r} was left out (a bad line)", err=True)
                continue
            session = records.session(session_id)
            if not session:
                raise click.ClickException(f"{file}: no session {session_id!r}")
            outcome = session_outcome(session, records.space)
            for step in iter_steps(session, with_rationales=history_rationales):
                if limit is not None and count >= limit:
                    return
                line = {
                    "record": step.record.dump(),
                    "history": [h.model_dump(exclude_none=True) for h in step.history],
                    "session_outcome": outcome,
                }
                click.echo(json.dumps(line, ensure_ascii=False))
                count += 1


@click.command()
@click.argument("input_file", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option("--template", help="Template name, .jinja file or folder.  [default: web_shopping]")
@click.option("--max-context-tokens", type=click.IntRange(min=16), default=6000, show_default=True)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Render the first N steps.",
)
@click.option(
    "--blind",
    is_flag=True,
    help="Render without the action (as a verifier, training or evaluation prompt sees it).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per prompt.")
@click.option("--history-rationales", is_flag=True)
@on_error_option
@action_space_option
def render(
    input_file: str,
    template: str | None,
    max_context_tokens: int,
    limit: int,
    blind: bool,
    as_json: bool,
    history_rationales: bool,
    on_error: str,
    action_space: str | None,
) -> None:
    """Print the rendered prompts of the first steps (what the teacher would see)."""
    from rationale.prompts import load_template, render_step

    tmpl = load_template(template)
    with open_records(input_file, on_error=on_error, action_space=action_space) as records:
        for n, step in enumerate(records.steps(with_rationales=history_rationales)):
            if n >= limit:
                break
            prompt, cut = render_step(
                tmpl,
                step,
                max_context_tokens=max_context_tokens,
                with_action=not blind,
                action_space=records.space,
                # the blind stages' own variables: the student's answer format, and the
                # verifier's candidate (the record's own rationale, or a placeholder)
                extra={
                    "with_rationale": True,
                    "rationale": step.record.rationale or "<the candidate rationale>",
                }
                if blind
                else None,
            )
            where = {"session_id": step.record.session_id, "step": step.record.step}
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            **where,
                            "template": tmpl.name,
                            "version": tmpl.version,
                            "messages": prompt.messages,
                            "assistant_prefix": prompt.assistant_prefix,
                            "context_cut_tokens": cut.cut_tokens,
                        },
                        ensure_ascii=False,
                    )
                )
                continue
            click.echo(
                f"=== session {where['session_id']} step {where['step']} "
                f"({tmpl.name}@{tmpl.version}, {cut.cut_tokens} context tokens cut) ==="
            )
            for message in prompt.messages:
                click.echo(f"--- {message['role']} ---\n{message['content']}")
            if prompt.assistant_prefix:
                click.echo(f"--- assistant (prefix) ---\n{prompt.assistant_prefix}")
