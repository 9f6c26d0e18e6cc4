"""Every scenario runs, ends with an EQUAL verdict, and prints what its golden file holds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from routing_sim import scenarios

FOLDER = Path(__file__).resolve().parent.parent / "scenarios"
NAMES = sorted(scenarios.available())
# Scenarios that need an optional extra, and the modules it provides.
EXTRAS = {"real_model": ("torch", "transformers")}
# Training runs (300 and 600 steps) whose printed digits are not promised from one machine
# to the next (issue 18 asks that their numbers are not asserted): a BLAS kernel that sums
# in another order moves the last bits, and hundreds of Adam steps carry them to other
# weights (induction_heads' seed-0 output differs from one CI machine to the next).
# They have no golden file; test_heads_specialise.py and test_induction_heads.py check
# what they show (roles recomputed from the weights, losses, accuracies, bit-identical
# reruns on one machine).
TRAINED = ("heads_specialise", "induction_heads")
GOLDEN = [name for name in NAMES if name not in TRAINED]
# Scenarios whose default size takes a minute (a million tokens): their golden file holds
# a smaller run, with these arguments (`routing-sim run long_context 4096`).
ARGUMENTS = {"long_context": ("4096",), "sparse_patterns": ("512",)}


def test_every_scenario_has_a_golden_file_and_a_summary():
    assert len(GOLDEN) >= 8 and set(TRAINED) <= set(NAMES)
    assert sorted(p.stem for p in FOLDER.glob("*.out")) == GOLDEN
    assert all(scenarios.available()[name] for name in NAMES)


@pytest.mark.parametrize("name", GOLDEN)
def test_scenario_output_matches_its_golden_file(name, capsys):
    missing = [m for m in EXTRAS.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"scenario {name} needs {', '.join(missing)} (the hf extra)")
    scenarios.load(name).main(*ARGUMENTS.get(name, ()))
    printed = capsys.readouterr().out
    assert printed == (FOLDER / f"{name}.out").read_text(encoding="utf-8")
    last = printed.rstrip().splitlines()[-1]
    assert "verdict: EQUAL to matrix attention" in last


def test_a_scenario_runs_as_a_script():
    result = subprocess.run([sys.executable, str(FOLDER / "routing_table.py")],
                            capture_output=True, text=True, check=True)
    assert result.stdout == (FOLDER / "routing_table.out").read_text(encoding="utf-8")


def test_scenarios_and_benchmarks_import_from_a_plain_checkout_as_installed():
    # The checkout's own routing_sim/ comes first on the path, as in `python -c` from the
    # repository root without installing: the package's scenarios/benchmarks resolve there.
    root = FOLDER.parent
    code = ("import routing_sim.scenarios as s, routing_sim.benchmarks.suite as b; "
            "print(s.__file__); print(b.__file__); print(sorted(s.available()))")
    lines = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert lines[0] == str(root / "routing_sim" / "scenarios" / "__init__.py")
    assert lines[1] == str(root / "routing_sim" / "benchmarks" / "suite.py")
    assert lines[2] == str(NAMES)
