"""Small file helpers shared by run folders, reports and benchmarks."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def write_json_atomic(path: Path | str, data) -> None:
    """Writes JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class OneLineParser(argparse.ArgumentParser):
    """argparse for the scripts: an error is one line on stderr (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
