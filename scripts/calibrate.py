"""Fits the verdict's confidence calibration on a calibration-split benchmark (README, "Measuring the verdict").

    python scripts/benchmark.py --split calibration --cases 150 --seed 0 --out bench/calibration0
    python scripts/benchmark.py --split calibration --cases 300 --seed 1 --out bench/calibration1
    python scripts/calibrate.py bench/calibration0 bench/calibration1 --out probes/calibration.json

Reads DIR/benchmark.json and DIR/reports.pkl of every DIR given (calibration benchmarks of different seeds), fits
``probes.calibration.fit`` (the thresholds of ``decide``, then isotonic maps from the raw score to the share of
right verdicts out of fold, per class found) and writes the table to OUT (written whole or not at all). A benchmark
of the test split is refused: the test split is never fitted on. Bad input ends with a one-line error and exit
code 2.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

from lab import cli


def parse(argv=None):
    p = cli.Parser(prog="calibrate.py", description=__doc__.split("\n\n")[0], compile_cache=False)
    p.add_argument("benchmark", type=Path, nargs="+",
                   help="folders written by scripts/benchmark.py --split calibration (one or more seeds)")
    p.add_argument("--out", type=Path, required=True, help="the calibration table to write (JSON)")
    args = p.parse_args(argv)
    problem = cli.writable_file(args.out)
    if problem:
        p.error(f"--out {problem}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    from lab.io import dumps, write_text_atomic
    from probes import calibration
    from probes.zoo import cases

    fitted, seeds = [], []
    try:
        for folder in args.benchmark:
            source = folder / "benchmark.json"
            record = json.loads(source.read_text())
            if record.get("split") != "calibration":
                raise ValueError(f"{source} is a {record.get('split')!r} benchmark; fit only on the calibration split")
            if record["seed"] in seeds:
                raise ValueError(f"{source}: seed {record['seed']} is given twice (its cases would count twice)")
            seeds.append(record["seed"])
            reports = pickle.loads((folder / "reports.pkl").read_bytes())
            fitted += [calibration.Case(reports[e["name"]], cases.draw_case(*cases.parse_name(e["name"])).world,
                                        e["expected"], e["expected_pursued"]) for e in record["entries"]]
        table = calibration.fit(fitted, {"split": "calibration", "seeds": seeds, "cases": len(fitted)})
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        print(f"calibrate.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    write_text_atomic(args.out, dumps(table, indent=2, sort_keys=True) + "\n")
    maps = ", ".join(f"{c} ({t['n']})" for c, t in table["classes"].items())
    values = ", ".join(f"{k} {v:g}" for k, v in table["thresholds"].items())
    print(f"fitted on {len(fitted)} calibration cases (seeds {', '.join(map(str, seeds))}): thresholds {values}; "
          f"{table['source']['right_fitted']}/{len(fitted)} right with them (a training figure); out of fold "
          f"{table['source']['right']}/{table['source']['answered']} answered right, of which "
          f"{table['source']['abstained']} would abstain ({table['source']['right_of_kept']} right of the rest); "
          f"confidence maps {maps}; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
