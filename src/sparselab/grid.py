"""The experiment grid: params.yaml studies -> runs, and the path of every run's artifacts.

Path grammar (stated once, here and at the top of workflow/Snakefile):
  resources/models/{model}/                       fetched model folder (+ source.json)
  resources/data/{task}/                          fixed splits (+ task.json, source.json)
  results/scores/{model}/{task}/{method}/seed{seed}/scores.safetensors
  results/masks/{model}/{task}/{method}/{allocation}-{structure}/s{sparsity}/seed{seed}/mask.safetensors
  results/finetune/{run}/...                      fine-tuned checkpoint, train log, train metrics
  results/eval/{run}/finetuned.json               metric after fine-tuning
  results/eval/{run}/pruned.json                  dense fine-tuned model pruned one-shot, no retraining
                                                  (one-shot methods only; masks/scores likewise)
where {run} is {model}/{task}/dense/{recipe}/seed{seed} for sparsity 0 (one dense run shared by
every method) and {model}/{task}/{method}/{allocation}-{structure}/s{sparsity}/{recipe}/seed{seed}
otherwise; {structure} is `unstructured` or `NofM` (2of4 for 2:4).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

from sparselab.config import NATIVE, native_allocation
from sparselab.masks import Structure


def format_sparsity(sparsity: float) -> str:
    return f"{sparsity:g}"


@dataclass(frozen=True, order=True)
class Run:
    """One point of the grid: a model, task, pruning set-up, sparsity, recipe and seed."""

    model: str
    task: str
    method: str
    allocation: str
    structure: str
    sparsity: float
    recipe: str
    seed: int

    @property
    def dense(self) -> bool:
        return self.sparsity == 0

    @property
    def setup(self) -> str:
        """`{allocation}-{structure slug}`, e.g. global-unstructured or layerwise-2of4."""
        return f"{self.allocation}-{Structure.parse(self.structure).slug}"

    @property
    def key(self) -> str:
        """The {run} part of the fine-tune and evaluation paths (shared by all dense points)."""
        if self.dense:
            return f"{self.model}/{self.task}/dense/{self.recipe}/seed{self.seed}"
        return (f"{self.model}/{self.task}/{self.method}/{self.setup}/s{format_sparsity(self.sparsity)}"
                f"/{self.recipe}/seed{self.seed}")

    @property
    def dense_key(self) -> str:
        """The key of the dense run this run is compared with (and pruned from, one-shot)."""
        return f"{self.model}/{self.task}/dense/{self.recipe}/seed{self.seed}"

    @property
    def scores_path(self) -> str:
        return f"results/scores/{self.model}/{self.task}/{self.method}/seed{self.seed}/scores.safetensors"

    @property
    def mask_prefix(self) -> str:
        return (f"results/masks/{self.model}/{self.task}/{self.method}/{self.setup}"
                f"/s{format_sparsity(self.sparsity)}/seed{self.seed}")

    def eval_path(self, stage: str) -> str:
        """The evaluation record of `stage` (pruned or finetuned); a dense point is the dense model."""
        if self.dense:
            return f"results/eval/{self.key}/finetuned.json"
        return f"results/eval/{self.key}/{stage}.json"

    def as_dict(self) -> dict:
        return asdict(self)


def study_runs(study: dict, methods: dict) -> list[Run]:
    """All runs of one study: the product of its lists.

    `methods` is params.yaml's `methods` section: the allocation `native` becomes each method's
    own (config.native_allocation). An n:m structure fixes its own sparsity (1 - n/m), so it
    contributes that sparsity (plus the dense point when 0 is listed) instead of the study's
    sparsities.
    """
    runs = []
    for model, task, method, allocation, structure, recipe, seed in itertools.product(
        study["models"], study["tasks"], study["methods"], study["allocations"],
        study["structures"], study["recipes"], study["seeds"],
    ):
        if allocation == NATIVE:
            allocation = native_allocation(methods[method])
        parsed = Structure.parse(structure)
        sparsities = study["sparsities"]
        if parsed.is_nm:
            sparsities = [s for s in sparsities if s == 0] + [parsed.sparsity]
        runs += [Run(model, task, method, allocation, str(parsed), float(s), recipe, seed) for s in sparsities]
    return runs


def expand_studies(config: dict) -> list[Run]:
    """Every run of every study, without duplicates, in a stable order."""
    return sorted({run for study in config["studies"].values() for run in study_runs(study, config["methods"])})


def teacher_of(run: Run, recipes: dict) -> Run | None:
    """The dense run that teaches `run` when its recipe distils (params.yaml `recipes`), else None:
    the same model and task, the distillation's teacher recipe and seed. Every student of a model
    and task shares it, so it is fine-tuned once."""
    distillation = recipes[run.recipe].get("distillation")
    if distillation is None:
        return None
    return replace(run, sparsity=0.0, recipe=distillation["teacher_recipe"], seed=distillation["teacher_seed"])


def with_teachers(runs: list[Run], recipes: dict) -> list[Run]:
    """`runs` and the teachers of their distilled runs (and of their dense runs)."""
    students = [*runs, *(replace(run, sparsity=0.0) for run in runs)]
    teachers = {teacher for run in students if (teacher := teacher_of(run, recipes)) is not None}
    return sorted(set(runs) | teachers)


def upstream_run(source: str) -> Run | None:
    """The dense run a `finetuned:<model>/<task>/dense/<recipe>/seed<n>` model source is the
    fine-tuned backbone of (e.g. a self-supervised backbone after a supervised fine-tune); None for
    any other source."""
    from sparselab.vision_config import finetuned_source

    upstream = finetuned_source(source)
    if upstream is None:
        return None
    model, task, recipe, seed = upstream
    return Run(model, task, "dense", "global", "unstructured", 0.0, recipe, seed)


def upstream_runs(models: dict) -> list[Run]:
    """The dense runs whose fine-tuned backbones are models of their own (params.yaml's `models`)."""
    return sorted(run for entry in models.values() if (run := upstream_run(entry["source"])) is not None)


def runs_by_key(runs: list[Run]) -> dict[str, Run]:
    """{run} key -> a run with that key (the first, for the dense key several points share)."""
    table: dict[str, Run] = {}
    for run in runs:
        table.setdefault(run.key, run)
    return table
