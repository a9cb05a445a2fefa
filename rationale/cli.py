"""The ``rationale`` command.

Exit codes: 0 done; 1 a user or run-time error, shown as one line without a traceback;
2 bad flags (click's own). Data goes to files or stdout; progress and summaries go to stderr.
Every module beyond click is imported inside the command that needs it, so ``--help`` is instant.
The flag vocabulary shared by all commands is in the README ("Flags").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from rationale import __version__


class _Group(click.Group):
    """A click group that turns the package's errors into exit code 1 without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from rationale.errors import RationaleError

        try:
            return super().invoke(ctx)
        except RationaleError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            # A file we could not read or write: the OS message names it.
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

output_option = click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="File to write (written atomically: a crash leaves no half file).",
)
output_option_dir = click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder.",
)
action_space_option = click.option(
    "--action-space",
    "action_space",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML file declaring the action types (default: click, type_and_submit, terminate).",
)


def _space(path: str | None) -> Any:
    from rationale.schema import ActionSpace

    return ActionSpace.from_file(path) if path else ActionSpace.default()


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="rationale")
def main() -> None:
    """Synthesize the reasons behind recorded human actions and distil them into a student."""


@main.group("import", cls=_Group)
def import_() -> None:
    """Convert a real action log into the record format (JSONL)."""


@import_.command("mind2web")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@output_option
@click.option("--add-terminate", is_flag=True, help="Append a terminate step to every session.")
def import_mind2web(sources: tuple[str, ...], output: str, add_terminate: bool) -> None:
    """Import raw Mind2Web train files (files or folders of train_*.json)."""
    from rationale.importers.mind2web import read_mind2web
    from rationale.records import write_records

    records = read_mind2web(sources, add_terminate=add_terminate)
    _report_written(output, records, write_records)


@import_.command("opera")
@click.argument("source", type=click.Path(exists=True))
@output_option
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
def import_opera(
    source: str, output: str, sessions: tuple[str, ...], users: tuple[str, ...]
) -> None:
    """Import OPeRA action records (a JSONL/parquet file, or a folder of them)."""
    from rationale.importers.opera import read_opera
    from rationale.records import write_records

    records = read_opera(source, sessions=list(sessions), users=list(users))
    _report_written(output, records, write_records)


def _report_written(output: str, records: Any, write_records: Any) -> None:
    sessions: set[str] = set()

    def counted() -> Any:
        for record in records:
            sessions.add(record.session_id)
            yield record

    steps = write_records(output, counted())
    click.echo(f"wrote {steps} steps of {len(sessions)} sessions to {output}", err=True)


@main.command()
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
    if on_error == "skip" and (errors := records.errors):
        for err in errors:
            click.echo(f"skipped: {err}", err=True)
        skipped = records.skipped_sessions
        for session_id, lines in skipped.items():
            shown = ", ".join(map(str, lines))
            click.echo(f"skipped session {session_id!r}: lines {shown}", err=True)
        alone = sum(1 for e in errors if e.session_id is None)
        click.echo(
            f"{file}: {len(errors)} bad lines; left out {len(skipped)} sessions"
            + (f" and {alone} lines whose session could not be read" if alone else ""),
            err=True,
        )
    return records


@main.command()
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
        for session_id in session_ids or records.session_ids():
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


def verifier_options(f: Any) -> Any:
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


@main.command()
@click.argument("input_file", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: accepted/rejected/failed.jsonl and run.json. Rerun to resume.",
)
@click.option(
    "--teacher",
    default="local",
    show_default=True,
    help="A litellm model string (openai/gpt-4o-mini, anthropic/..., hosted_vllm/...) "
    "or 'local' (SmolLM2-135M in-process, no key; 'local:PATH' for another model).",
)
@model_call_options
@click.option(
    "--template",
    help="A shipped template name (web_shopping, generic) or a .jinja "
    "file or a folder with template.jinja.  [default: web_shopping]",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N steps (session order).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Completion cap per request (also the worst case --max-cost reserves).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Render everything, print the token and cost estimate, call nothing.",
)
@click.option("--retry-failed", is_flag=True, help="Retry the records in failed.jsonl.")
@verifier_options
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Candidate rationales per record (needs --temperature above 0).",
)
@click.option(
    "--keep",
    type=click.Choice(["first", "all"]),
    default="first",
    show_default=True,
    help="Keep the first candidate that passes, or every one that passes.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Rounds per record: a rejected rationale is regenerated with feedback up to N-1 times.",
)
@config_option
@on_error_option
@action_space_option
@click.pass_context
def synth(ctx: click.Context, input_file: str, **flags: Any) -> None:
    """Ask a teacher why each recorded action was taken; results stream to a run folder."""
    from rationale.synth import SynthConfig, run_synth

    config = _job_config(ctx, SynthConfig, flags, input=input_file)
    result = run_synth(config)
    if config.dry_run:
        click.echo(json.dumps(result, indent=2))
        cost = result["max_cost_usd"]
        click.echo(
            f"dry run: {result['to_call']} calls to make ({result['cached']} cached, "
            f"{result['already_done']} done), {result['prompt_tokens']} prompt tokens, at most "
            f"{result['max_completion_tokens']} completion tokens, at most "
            + (
                f"${cost:.4f}"
                if cost is not None
                else "an unknown cost (model not in the price map)"
            ),
            err=True,
        )
        return
    _print_summary("synth", result)


def _print_summary(command: str, result: Any) -> None:
    """The end-of-run summary on stderr."""
    t = result.tally
    cost = f"${t.cost_usd:.4f}" + (
        f" (+{t.cost_unknown} calls of unknown price)" if t.cost_unknown else ""
    )
    click.echo(
        f"{command}: accepted {result.counts['accepted']}, rejected {result.counts['rejected']}, "
        f"failed {result.counts['failed']}, pending {result.pending}; this run: "
        f"{t.requests} requests ({t.verify_requests} to the verifier), {t.cache_hits} cached, "
        f"{t.prompt_tokens}+{t.completion_tokens} tokens, {cost}, {result.wall_s:.1f}s "
        f"-> {result.run_dir}",
        err=True,
    )
    if t.rule_rejections:
        rules = ", ".join(f"{k} {v}" for k, v in t.rule_rejections.most_common())
        click.echo(f"{command}: candidates rejected by {rules}", err=True)
    if t.context_cut_records:
        click.echo(
            f"{command}: cut {t.context_cut_tokens} context tokens from {t.context_cut_records} "
            "records (--max-context-tokens)",
            err=True,
        )
    if result.stopped:
        click.echo(f"{command}: stopped early ({result.stopped}); rerun to continue", err=True)


@main.command()
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


@main.command("filter")
@click.argument("source", metavar="RUN_DIR|SYNTH.jsonl", type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="A new run folder for the filtered records. Rerun to resume.",
)
@verifier_options
@model_call_options
@click.option("--template", help="The teacher template whose rules apply.  [default: the run's]")
@click.option("--keep", type=click.Choice(["first", "all"]), default="first", show_default=True)
@config_option
@on_error_option
@action_space_option
@click.pass_context
def filter_(ctx: click.Context, source: str, **flags: Any) -> None:
    """Check the rationales of a run with the rules and the blind verifier, into a new run."""
    from rationale.synth import SynthConfig, run_filter

    config = _job_config(ctx, SynthConfig, flags, input=source)
    result = run_filter(config)
    _print_summary("filter", result)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def report(run_dir: str, as_json: bool) -> None:
    """Acceptance, rejections per rule, verifier confusion and spend of a run; draws its chart."""
    from rationale.report import build_report, render_text, write_chart

    data = build_report(run_dir)
    chart = write_chart(data, Path(run_dir) / "acceptance.png")
    click.echo(json.dumps(data, indent=2) if as_json else render_text(data))
    click.echo(f"chart: {chart}", err=True)


@main.command()
@click.option(
    "--base",
    required=True,
    help="Student: an alias (llama-3-8b, llama-3.1-8b, llama-3.2-3b, qwen2.5-7b, "
    "mistral-7b, smollm2-135m), a local model folder, or a .gguf file.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True),
    help="A synth run folder, or a JSONL of accepted synthesis records.",
)
@output_option_dir
@click.option(
    "--backend",
    type=click.Choice(["auto", "unsloth", "hf"]),
    default="auto",
    show_default=True,
    help="auto: Unsloth when CUDA and unsloth are there, else hf.",
)
@click.option("--no-rationale", is_flag=True, help="Train on actions only (the ablation).")
@click.option("--session-mode", is_flag=True, help="Whole sessions as multi-turn chats.")
@click.option("--max-seq-length", type=click.IntRange(min=32), default=2048, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after N optimizer steps.")
@click.option(
    "--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True
)
@click.option("--merge", is_flag=True, help="Also write merged 16-bit weights.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in OUT_DIR.")
@click.option("--seed", type=int, default=0, show_default=True)
@config_option
@click.pass_context
def distill(ctx: click.Context, **flags: Any) -> None:
    """Fine-tune a student on accepted rationales (LoRA; Unsloth QLoRA on a GPU)."""
    from distill.config import DistillConfig
    from distill.pipeline import run_distill

    config = _job_config(ctx, DistillConfig, flags)
    run = run_distill(config)
    r, s = run.result, run.stats
    click.echo(
        f"distill: {run.backend} ({run.reason}); {s.examples} examples ({s.steps} steps), "
        f"{r.steps} steps, final loss {r.final_loss:.4f}, {r.train_runtime_s:.1f}s -> {run.output}",
        err=True,
    )
    if s.history_entries_dropped or s.examples_context_shrunk:
        click.echo(
            f"distill: to fit --max-seq-length, dropped {s.history_entries_dropped} history "
            f"entries from {s.examples_with_history_dropped} examples and cut the context of "
            f"{s.examples_context_shrunk}",
            err=True,
        )


@main.command("export-sft")
@click.argument("data", metavar="RUN_DIR|FILE.jsonl", type=click.Path(exists=True))
@output_option
@click.option("--no-rationale", is_flag=True, help="Action-only targets (the ablation).")
@click.option("--session-mode", is_flag=True, help="Whole sessions as multi-turn chats.")
@click.option("--max-context-tokens", type=click.IntRange(min=32), default=4000, show_default=True)
@click.option("--history-rationales", is_flag=True)
@action_space_option
def export_sft(
    data: str,
    output: str,
    no_rationale: bool,
    session_mode: bool,
    max_context_tokens: int,
    history_rationales: bool,
    action_space: str | None,
) -> None:
    """Write the SFT data as TRL conversational JSONL (TRL, axolotl, LLaMA-Factory load it)."""
    from distill.data import SFTData

    sft = SFTData(
        data, no_rationale=no_rationale, session_mode=session_mode,
        max_context_tokens=max_context_tokens, history_rationales=history_rationales,
        action_space=action_space,
    )  # fmt: skip
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for ex in sft.examples():
            f.write(json.dumps(sft.trl_row(ex), ensure_ascii=False) + "\n")
    tmp.replace(out)
    s = sft.stats
    click.echo(
        f"wrote {s.steps} examples ({s.sessions} sessions; {s.skipped_not_accepted} steps without "
        f"an accepted rationale left out) to {output}",
        err=True,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
