"""The Pareto benchmark's claim, reduced: half the channels removed, accuracy within 1 point."""

import importlib.util
import pathlib
import sys

import pytest

pytest.importorskip("sklearn")

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "pareto.py"


def _pareto():
    if str(_PATH.parent) not in sys.path:  # the script imports its siblings, as when run
        sys.path.insert(0, str(_PATH.parent))
    spec = importlib.util.spec_from_file_location("pareto", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_half_the_channels_within_one_point_of_dense(tmp_path):
    pareto = _pareto()
    grid = {"channel": ("channel", {"round_to": 8}, (0.5,))}
    points = pareto.run(grid=grid, epochs=15, finetune_epochs=8, compile_model=False)
    dense, pruned = points
    assert pruned.mflops < 0.4 * dense.mflops  # half the channels: about a quarter of the work
    assert pruned.accuracy >= dense.accuracy - 1.0, (dense, pruned)
    pareto.write(points, tmp_path)
    assert (tmp_path / "pareto.md").read_text().count("|") > 10
