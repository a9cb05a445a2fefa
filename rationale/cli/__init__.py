"""The ``rationale`` command.

Exit codes: 0 done; 1 a user or run-time error, shown as one line without a traceback;
2 bad flags (click's own). Data goes to files or stdout; progress and summaries go to stderr.
Every module beyond click is imported inside the command that needs it, so ``--help`` is instant.
The flag vocabulary shared by all commands is in the README ("Flags").

This module holds the group and its error handling and registers the commands, which live one
module per command group: ``data`` (import, validate, steps, render), ``synth`` (synth,
filter, report, batches, merge), ``distill`` (distill, export-sft), ``split`` (the train/test
split), ``eval`` and ``compare`` (evaluation), ``workspace`` (init, run); their shared options are
in ``options``.
"""

from __future__ import annotations

from typing import Any

import click

from rationale import __version__
from rationale.cli import compare as compare_
from rationale.cli import data, distill, synth, workspace
from rationale.cli import eval as eval_
from rationale.cli import split as split_


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
        except UnicodeDecodeError as exc:  # a config, action-space or template file
            raise click.ClickException(
                f"a file is not UTF-8 (byte {exc.start}: {exc.reason}); re-encode it as UTF-8"
            ) from None


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="rationale")
def main() -> None:
    """Synthesize the reasons behind recorded human actions and distil them into a student."""


@main.group("import", cls=_Group)
def import_() -> None:
    """Convert a real action log into the record format (JSONL)."""


import_.add_command(data.import_mind2web)
import_.add_command(data.import_opera)
import_.add_command(data.import_miniwob)
import_.add_command(data.import_browser_log)
main.add_command(workspace.init)
main.add_command(workspace.run)
main.add_command(data.validate)
main.add_command(data.steps)
main.add_command(synth.synth)
main.add_command(data.render)
main.add_command(split_.split)
main.add_command(eval_.eval_)
main.add_command(compare_.compare)
main.add_command(synth.filter_)
main.add_command(synth.report)
main.add_command(synth.batches)
main.add_command(synth.merge)
main.add_command(distill.distill)
main.add_command(distill.export_sft)
