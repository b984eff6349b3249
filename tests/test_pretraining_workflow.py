"""The scaling-law grid and abrupt sparsification through the real Snakefile, on the tiny set-up."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tiny_workflow import planned_jobs, small_params, snakemake, write_workdir

from sparselab.io import read_json
from sparselab.pretraining_studies import scaling_run_stage

pytestmark = pytest.mark.workflow

SCALING = {"model": "tiny", "task": "toy", "widths": [16, 32], "heads": 2, "sparsities": [0.0, 0.75],
           "steps": [20, 40], "max_length": 16, "batch_size": 8, "warmup_steps": 2, "gmp_frequency": 2,
           "vocab_size": 16, "fit": {"starts": 5, "bootstrap": 4}}
ABRUPT = {"model": "tiny", "task": "toy", "fractions": [1.0, 0.6], "width": 16, "heads": 2, "steps": 30,
          "max_length": 16, "batch_size": 8, "warmup_steps": 3, "checkpoint_every": 10, "taus": [0.01, 0.05],
          "vocab_size": 16, "downstream": {"recipe": "quick", "sparsities": [0.0, 0.5]}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretraining")
    params = small_params(root)
    params.update(scaling_law=SCALING, abrupt_sparsification=ABRUPT)
    write_workdir(root, params)
    snakemake(root, "scaling_law", "abrupt_sparsification")
    return root


def test_each_analysis_is_a_target_of_its_own(workdir):
    planned = planned_jobs(workdir, "scaling_law")
    assert planned == []  # built already: nothing to do
    assert not (workdir / "results/finetune").exists()  # neither target fine-tuned the studies' runs


def test_scaling_grid_records_and_fit(workdir):
    points = pd.read_csv(workdir / "results/tables/scaling_law_points.csv")
    assert len(points) == 2 * 2 * 2  # the least grid with more points than the law's 7 coefficients
    assert (points["achieved_sparsity"] - points["sparsity"]).abs().max() < 0.01
    # more data at a fixed width and sparsity means proportionally more tokens
    by = points.set_index(["width", "sparsity", "steps"])
    assert by.loc[(16, 0.75, 40), "D"] == pytest.approx(2 * by.loc[(16, 0.75, 20), "D"])
    # N counts the non-zero non-embedding parameters: 3/4 of the encoder's Linear weights are gone
    linear = 2 * (4 * 32 * 32 + 2 * 32 * 128)  # 2 layers of q, k, v, out and the two FFN matrices
    assert by.loc[(32, 0.0, 20), "N"] - by.loc[(32, 0.75, 20), "N"] == pytest.approx(0.75 * linear / 1e6)
    coefficients = pd.read_csv(workdir / "results/tables/scaling_law.csv")
    assert list(coefficients["coefficient"]) == list("abcdefg")
    assert (coefficients["low"] <= coefficients["high"]).all()
    for suffix in ("png", "pdf"):
        assert (workdir / f"results/figures/scaling_law.{suffix}").stat().st_size > 1000


def test_a_grid_job_trains_each_length_as_a_run_of_its_own(workdir, tmp_path):
    """One job trains every length of a width and sparsity; each from scratch, on its own schedule:
    the 40-step record after a 20-step run is that of the 40-step run alone."""
    settings = {"width": 16, "sparsity": 0.75, "layers": 2, "heads": 2, "batch_size": 8, "max_length": 16,
                "learning_rate": 1e-3, "warmup_steps": 2, "vocab_size": 16, "seed": 0, "gmp_frequency": 2}
    model, data = workdir / "resources/models/tiny", workdir / "resources/data/toy"
    grouped = [tmp_path / "n20.json", tmp_path / "n40.json"]
    scaling_run_stage(model, data, grouped, settings, [20, 40], threads=1)
    scaling_run_stage(model, data, [tmp_path / "alone.json"], settings, [40], threads=1)
    records = [read_json(path) for path in (*grouped, tmp_path / "alone.json")]
    assert [record["steps"] for record in records] == [20, 40, 40]
    for record in records:
        record.pop("wall_seconds")
    assert records[1] == records[2]
    with pytest.raises(ValueError, match="2 record paths for 1 training lengths"):
        scaling_run_stage(model, data, grouped, settings, [20], threads=1)


def test_abrupt_sparsification_tables_and_figure(workdir):
    shares = pd.read_csv(workdir / "results/tables/abrupt_sparsification.csv")
    # checkpoints at steps 0, 10, 20 and 30 for each fraction and tau
    assert sorted(shares["step"].unique()) == [0, 10, 20, 30]
    assert len(shares) == 2 * 4 * 2
    assert shares["share"].between(0, 1).all()
    # a larger tau counts at least as many weights as near zero
    wide = shares.pivot_table(index=["fraction", "step"], columns="tau", values="share")
    assert (wide[0.05] >= wide[0.01]).all()
    essential = pd.read_csv(workdir / "results/tables/abrupt_essential.csv")
    assert sorted(essential["fraction"]) == [0.6, 1.0]
    assert essential["essential_sparsity"].isin([0.0, 0.5]).all()
    for suffix in ("png", "pdf"):
        assert (workdir / f"results/figures/abrupt_sparsification.{suffix}").stat().st_size > 1000
    model = workdir / "results/abrupt/pretrain/f0.6/model"
    assert (model / "vocab_mapping.safetensors").exists()  # 16 of the tokenizer's 23 pieces: downstream maps ids
    checkpoints = sorted((workdir / "results/abrupt/pretrain/f0.6/checkpoints").iterdir())
    assert [path.name for path in checkpoints] == [f"step{step:06d}.safetensors" for step in (0, 10, 20, 30)]
