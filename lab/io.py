"""Small file helpers shared by run folders, reports and benchmarks."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path | str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and a rename, so readers never
    see half a file and a failure leaves the old file as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes the file owner-only; configs and reports are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path | str, data) -> None:
    """``data`` as indented JSON, written atomically (``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class OneLineParser(argparse.ArgumentParser):
    """argparse for the scripts: an error is one line on stderr (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
