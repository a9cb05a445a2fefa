"""The JSON parser of the importers: bounded in depth, and every failure a one-line message.

Source files are parsed by jiter (the Rust JSON parser inside pydantic), as record lines are in
`rationale.record_line`, rather than by `json.loads`: a value nested a hundred thousand levels
deep made `json.loads` raise `RecursionError` and crash the import, and one nested a few hundred
levels deep was read but made a record that could not be written. jiter refuses both beyond
`JSON_MAX_DEPTH` levels, as it refuses bytes that are not UTF-8 and lone surrogates (which no
UTF-8 file can hold). NaN and Infinity are read as floats and a repeated key keeps its last
value, as with `json.loads`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jiter

from rationale.errors import SourceError
from rationale.record_line import JSON_MAX_DEPTH

_TOO_DEEP = "recursion limit exceeded"  # how jiter starts its message for a value too deep


def loads(raw: bytes) -> Any:
    """The value of the JSON in ``raw``; `ValueError` if it is not JSON or nested too deeply."""
    return jiter.from_json(raw)


def parse_json(raw: bytes, where: str, *, not_json: str = "not valid JSON") -> Any:
    """The value of the JSON in ``raw``, or a `SourceError` that starts with ``where``."""
    try:
        return loads(raw)
    except ValueError as exc:
        message = str(exc)
        if message.startswith(_TOO_DEEP):
            position = message.removeprefix(_TOO_DEEP).strip()
            raise SourceError(
                f"{where}: nested more than {JSON_MAX_DEPTH} levels of arrays and objects deep "
                f"({position}); flatten it"
            ) from None
        raise SourceError(f"{where}: {not_json} ({message})") from None


def source_files(
    sources: Iterable[str | Path], folder_files: Callable[[Path], Iterable[Path]], what: str
) -> list[Path]:
    """The files named, each folder expanded to ``folder_files(folder)`` (sorted); a folder
    with none of ``what`` in it, or a name that is neither, is a `SourceError`."""
    files: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            found = sorted(p for p in folder_files(path) if p.is_file())
            if not found:
                raise SourceError(f"{src}: folder has no {what} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SourceError(f"{src}: no such file or folder")
    return files
