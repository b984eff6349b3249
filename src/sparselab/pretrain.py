"""Masked-LM pre-training of tiny BERTs from scratch, dense or pruned by gmp while they train.

Two studies call it (methods.md): the miniature sparse scaling-law grid of section 2 (final
validation loss against sparsity S, non-zero non-embedding parameters N and data D) and the
abrupt sparsification of section 1 (dense runs on a fraction of the corpus, with the prunable
weights saved every k steps to follow the share of |w| < tau).

Data: the tokenized texts are concatenated with [SEP] after each one and cut into blocks of
max_length tokens, each [CLS] + max_length - 1 tokens of the stream; the incomplete tail is
dropped. Blocks carry no padding, so every position is a real token. The MLM loss is taken only
at the masked positions: the vocabulary projection then costs 15% of a full one, which is most
of a tiny model's step when the vocabulary is BERT's 30k words.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerBase

from sparselab.finetune import LR_SCHEDULES, training_step
from sparselab.io import save_tensors
from sparselab.masks import Structure
from sparselab.modeling import PRECISIONS, autocast
from sparselab.prunable import select_prunable
from sparselab.sparsifiers import SPARSIFIERS, Sparsifier, Target

# The encoder's Linear weights, as params.yaml's prunable set (embeddings and the MLM head stay dense).
PRUNABLE = (r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
            r"|intermediate\.dense|output\.dense)\.weight$")
# Seed of the evaluation masks: the same for every run, so eval losses compare between runs.
EVAL_MASK_SEED = 0
IGNORE = -100  # label of the positions that are not predicted (cross_entropy's ignore_index)


@dataclass(frozen=True)
class PretrainConfig:
    """A pre-training run: model shape, optimisation, MLM masking, gmp pruning and checkpoints.

    sparsity > 0 prunes the encoder's Linear weights with gmp (the same sparsity in every matrix,
    cubic ramp from gmp_start to gmp_end of training, masks updated every gmp_frequency steps).
    checkpoint_every saves the prunable weights every that many steps (None: no checkpoints).
    vocab_size keeps the corpus' most frequent word pieces (None: the tokenizer's whole vocabulary).
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_length: int = 64
    batch_size: int = 16
    steps: int = 200
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    mlm_probability: float = 0.15
    dropout: float = 0.0
    sparsity: float = 0.0
    gmp_start: float = 0.25
    gmp_end: float = 0.75
    gmp_frequency: int = 10
    checkpoint_every: int | None = None
    vocab_size: int | None = None
    seed: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "batch_size", "steps",
                     "gmp_frequency"):
            _check(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "an integer >= 1")
        _check(self, "hidden_size", self.hidden_size % self.num_heads == 0,
               f"a multiple of num_heads={self.num_heads}")
        _check(self, "max_length", _is_int(self.max_length) and self.max_length >= 2,
               "an integer >= 2 ([CLS] + 1 token)")
        _check(self, "learning_rate", _is_real(self.learning_rate) and self.learning_rate > 0, "a number > 0")
        _check(self, "warmup_steps", _is_int(self.warmup_steps) and 0 <= self.warmup_steps < self.steps,
               f"an integer in [0, steps={self.steps})")
        _check(self, "weight_decay", _is_real(self.weight_decay) and self.weight_decay >= 0, "a number >= 0")
        _check(self, "mlm_probability", _is_real(self.mlm_probability) and 0 < self.mlm_probability <= 1,
               "a number in (0, 1]")
        _check(self, "dropout", _is_real(self.dropout) and 0 <= self.dropout < 1, "a number in [0, 1)")
        _check(self, "sparsity", _is_real(self.sparsity) and 0 <= self.sparsity < 1, "a number in [0, 1); 0 = dense")
        _check(self, "gmp_start", _is_real(self.gmp_start) and 0 <= self.gmp_start <= 1, "a number in [0, 1]")
        _check(self, "gmp_end", _is_real(self.gmp_end) and self.gmp_start <= self.gmp_end <= 1,
               f"a number in [gmp_start={self.gmp_start}, 1]")
        _check(self, "checkpoint_every", self.checkpoint_every is None
               or (_is_int(self.checkpoint_every) and self.checkpoint_every >= 1), "None or an integer >= 1")
        _check(self, "vocab_size", self.vocab_size is None or (_is_int(self.vocab_size) and self.vocab_size >= 16),
               "None (the tokenizer's) or an integer >= 16")
        _check(self, "seed", _is_int(self.seed) and self.seed >= 0, "an integer >= 0")
        _check(self, "precision", self.precision in PRECISIONS, ", ".join(PRECISIONS))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(config: PretrainConfig, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"PretrainConfig.{name}={getattr(config, name)!r} is not allowed (allowed: {allowed})")


class StepLog(NamedTuple):
    """One optimizer step: steps done, training loss, learning rate used, sparsity of the prunable set after it."""

    step: int
    loss: float
    lr: float
    sparsity: float


@dataclass
class PretrainResult:
    """What a run measured. N counts: non-embedding parameters are all but the word, position and
    token-type embeddings and the vocabulary-sized output bias (the output matrix is the tied word
    embedding); the non-zero ones are those less the weights the masks prune (other parameters
    count as dense). D counts: every position of every block trained on, [CLS] and [SEP] included."""

    eval_loss: float  # mean over every masked token of the eval blocks (masks seeded EVAL_MASK_SEED)
    train_loss: float  # mean over the last 10% of steps (at least one)
    steps: int
    sequences_seen: int  # steps x batch_size
    tokens_seen: int  # sequences_seen x max_length
    non_embedding_params: int
    nonzero_non_embedding_params: int
    sparsity: float  # achieved, over the prunable set
    wall_seconds: float
    log: list[StepLog]
    checkpoints: list[Path]
    model: BertForMaskedLM = field(repr=False)
    masks: dict[str, torch.Tensor] | None = field(repr=False)  # True = kept; None for a dense run
    vocab: Vocabulary | None = field(default=None, repr=False)  # the ids the model reads


@dataclass(frozen=True)
class Vocabulary:
    """The token ids a run trains on: the tokenizer's own, or the corpus' `size` most frequent.

    A tiny model with BERT's 30k word pieces spends its first hundreds of steps learning unigram
    frequencies, and most of its parameters and step time in the embeddings and the output layer;
    keeping the most frequent pieces of the training corpus (the special tokens always, every
    other id mapped to [UNK]) lets short runs learn more than frequencies.
    """

    size: int
    special_ids: list[int]  # in the run's ids
    mask_id: int
    mapping: torch.Tensor | None  # (tokenizer ids,) tokenizer id -> run id; None: the identity

    @classmethod
    def from_corpus(cls, tokenizer: PreTrainedTokenizerBase, blocks: torch.Tensor, size: int | None) -> Vocabulary:
        special = sorted(set(tokenizer.all_special_ids))
        if size is None or size >= len(tokenizer):
            return cls(len(tokenizer), special, tokenizer.mask_token_id, None)
        if size <= len(special):
            raise ValueError(f"vocab_size={size} leaves no room beside the {len(special)} special tokens "
                             f"(allowed: more than {len(special)})")
        counts = torch.bincount(blocks.flatten(), minlength=len(tokenizer)).double()
        counts[special] = -1.0
        frequent = torch.argsort(counts, descending=True, stable=True)[: size - len(special)]  # ties: lower id
        kept = torch.tensor(special + sorted(frequent.tolist()))
        mapping = torch.full((len(tokenizer),), special.index(tokenizer.unk_token_id), dtype=torch.long)
        mapping[kept] = torch.arange(size)
        return cls(size, list(range(len(special))), special.index(tokenizer.mask_token_id), mapping)

    def encode(self, blocks: torch.Tensor) -> torch.Tensor:
        """Tokenizer ids -> the run's ids (rare pieces become [UNK])."""
        return blocks if self.mapping is None else self.mapping[blocks]


def build_model(config: PretrainConfig, vocab_size: int) -> BertForMaskedLM:
    """A randomly initialised BERT masked LM of the config's shape (BERT's init, seeded by config.seed)."""
    bert_config = BertConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_length, hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(config.seed)
        return BertForMaskedLM(bert_config)


def data_fraction(texts: Sequence[str], fraction: float) -> list[str]:
    """The first round(fraction x len) texts: nested subsets of one corpus (100/80/60% runs)."""
    if not (_is_real(fraction) and 0 < fraction <= 1):
        raise ValueError(f"fraction={fraction!r} is not allowed (allowed: a number in (0, 1])")
    return list(texts[: round(fraction * len(texts))])


def make_blocks(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> torch.Tensor:
    """(blocks, max_length) int64 token ids: the texts' tokens, [SEP] after each text, cut into
    [CLS] + (max_length - 1) tokens per block; the incomplete tail is dropped. Empty texts are skipped."""
    ids = tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    stream = torch.tensor([token for text in ids if text for token in [*text, tokenizer.sep_token_id]],
                          dtype=torch.long)
    body = max_length - 1
    count = len(stream) // body
    if count == 0:
        raise ValueError(f"the texts hold {len(stream)} tokens with separators, fewer than one block of "
                         f"{body} (max_length={max_length} less [CLS])")
    cls = torch.full((count, 1), tokenizer.cls_token_id, dtype=torch.long)
    return torch.cat([cls, stream[: count * body].view(count, body)], 1)


def mask_tokens(
    blocks: torch.Tensor, vocab: Vocabulary, probability: float, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's MLM corruption of (n, L) token ids: (inputs, labels), both (n, L).

    Every non-special token is chosen with `probability`; a chosen token becomes [MASK] with
    probability 0.8, a token drawn uniformly from the whole vocabulary with 0.1 (as BERT's
    create_pretraining_data), and stays itself with 0.1. labels hold the original id where chosen
    and -100 elsewhere. Deterministic given the generator's state (a CPU generator).
    """
    special = torch.isin(blocks, torch.tensor(vocab.special_ids))
    chosen = (torch.rand(blocks.shape, generator=generator) < probability) & ~special  # (n, L)
    split = torch.rand(blocks.shape, generator=generator)  # < 0.8: [MASK]; [0.8, 0.9): random; else kept
    random_ids = torch.randint(vocab.size, blocks.shape, generator=generator)
    inputs = torch.where(chosen & (split < 0.8), vocab.mask_id, blocks)
    inputs = torch.where(chosen & (split >= 0.8) & (split < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, blocks, IGNORE)


def mlm_loss(model: BertForMaskedLM, inputs: torch.Tensor, labels: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the masked positions only (labels != -100): the head runs on those alone."""
    hidden = model.bert(input_ids=inputs).last_hidden_state  # (n, L, H)
    picked = labels != IGNORE  # (n, L)
    logits = model.cls(hidden[picked])  # (masked, V)
    return F.cross_entropy(logits.float(), labels[picked], reduction=reduction)


def learning_rate_at(step: int, config: PretrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then linear decay towards 0."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    return config.learning_rate * LR_SCHEDULES["linear"](step, config.warmup_steps, config.steps, (), 0.0)


@torch.no_grad()
def evaluate(model: BertForMaskedLM, blocks: torch.Tensor, vocab: Vocabulary, config: PretrainConfig) -> float:
    """Mean MLM loss over every masked token of `blocks`, masked with EVAL_MASK_SEED (so the same
    tokens in every run), in batches of config.batch_size on the model's device."""
    generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
    inputs, labels = mask_tokens(blocks, vocab, config.mlm_probability, generator)
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    total = 0.0
    for begin in range(0, len(blocks), config.batch_size):
        batch_inputs, batch_labels = (t[begin : begin + config.batch_size].to(device) for t in (inputs, labels))
        with autocast(device, config.precision):
            total += float(mlm_loss(model, batch_inputs, batch_labels, reduction="sum"))
    model.train(was_training)
    return total / max(1, int((labels != IGNORE).sum()))


def non_embedding_parameters(model: BertForMaskedLM) -> list[nn.Parameter]:
    """All parameters but the word, position and token-type embeddings and the output bias (V,)."""
    embeddings = model.bert.embeddings
    excluded = {id(p) for p in (embeddings.word_embeddings.weight, embeddings.position_embeddings.weight,
                                embeddings.token_type_embeddings.weight, model.cls.predictions.decoder.bias)}
    return [p for p in model.parameters() if id(p) not in excluded]


def _batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless (batch_size,) block indices: passes over the blocks, each in a fresh random order;
    a batch that crosses a pass boundary takes the end of one pass and the start of the next."""
    order = torch.empty(0, dtype=torch.long)
    while True:
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(count, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def _mlm_objective(model: BertForMaskedLM, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """finetune.training_step's loss function for pre-training: the MLM loss, objective and task loss."""
    loss = mlm_loss(model, batch["input_ids"], batch["labels"])
    return loss, loss


def _pruned(masks: dict[str, torch.Tensor] | None) -> int:
    return 0 if masks is None else sum(int((~mask).sum()) for mask in masks.values())


def _save_checkpoint(prunable: dict[str, nn.Parameter], directory: Path, step: int) -> Path:
    path = directory / f"step{step:06d}.safetensors"
    save_tensors(path, {name: weight.detach().cpu() for name, weight in prunable.items()}, {"step": str(step)})
    return path


def pretrain(
    texts: Sequence[str],
    eval_texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    config: PretrainConfig,
    checkpoint_dir: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> PretrainResult:
    """Pre-train a fresh BERT masked LM on `texts` for config.steps AdamW steps; evaluate on `eval_texts`.

    Batches cycle over the blocks, reshuffled each pass; masks are drawn anew for every batch
    (dynamic masking). Order, masks, init and dropout all follow config.seed, and the caller's
    random state is left as it was. With config.checkpoint_every the prunable weights are saved
    to checkpoint_dir/stepNNNNNN.safetensors at step 0, every checkpoint_every steps and at the
    end (after gmp's finalize). `threads` sets torch's CPU threads for the run only.
    """
    if (config.checkpoint_every is None) != (checkpoint_dir is None):
        raise ValueError("checkpoint_dir and config.checkpoint_every go together (allowed: both set, or neither)")
    start = time.perf_counter()
    device = torch.device(device)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)  # dropout
            return _pretrain(texts, eval_texts, tokenizer, config, checkpoint_dir, device, start)
    finally:
        torch.set_num_threads(previous_threads)


def _pretrain(texts: Sequence[str], eval_texts: Sequence[str], tokenizer: PreTrainedTokenizerBase,
              config: PretrainConfig, checkpoint_dir: str | Path | None, device: torch.device,
              start: float) -> PretrainResult:
    train_blocks = make_blocks(texts, tokenizer, config.max_length)  # (blocks, L)
    vocab = Vocabulary.from_corpus(tokenizer, train_blocks, config.vocab_size)
    train_blocks = vocab.encode(train_blocks)
    eval_blocks = vocab.encode(make_blocks(eval_texts, tokenizer, config.max_length))
    model = build_model(config, vocab.size).to(device).train()
    prunable = select_prunable(model, [PRUNABLE], [])
    sparsifier = None
    if config.sparsity > 0:
        sparsifier = SPARSIFIERS.get("gmp")(start=config.gmp_start, end=config.gmp_end, frequency=config.gmp_frequency)
        sparsifier.attach(model, prunable, Target(config.sparsity, "layerwise", Structure()))
        sparsifier.begin(config.steps)
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
         {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}],
        lr=config.learning_rate, fused=True,
    )
    generator = torch.Generator().manual_seed(config.seed)  # data order and training masks
    batches = _batches(len(train_blocks), config.batch_size, generator)
    prunable_total = sum(w.numel() for w in prunable.values())
    checkpoints = [_save_checkpoint(prunable, Path(checkpoint_dir), 0)] if checkpoint_dir is not None else []

    log: list[StepLog] = []
    for step in range(config.steps):
        lr = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, labels = mask_tokens(train_blocks[next(batches)], vocab, config.mlm_probability, generator)
        batch = {"input_ids": inputs.to(device), "labels": labels.to(device)}
        loss, _ = training_step(model, batch, optimizer, sparsifier, step, config.precision, _mlm_objective)
        masks = sparsifier.masks if sparsifier is not None else None
        log.append(StepLog(step + 1, loss.item(), lr, _pruned(masks) / prunable_total))
        if checkpoint_dir is not None and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            checkpoints.append(_save_checkpoint(prunable, Path(checkpoint_dir), step + 1))
    if sparsifier is not None:
        sparsifier.finalize()  # pruned weights exactly +0.0
    if checkpoint_dir is not None:
        checkpoints.append(_save_checkpoint(prunable, Path(checkpoint_dir), config.steps))

    masks = sparsifier.masks if sparsifier is not None else None
    non_embedding = sum(p.numel() for p in non_embedding_parameters(model))
    eval_loss = evaluate(model, eval_blocks, vocab, config)
    tail = max(1, config.steps // 10)
    return PretrainResult(
        eval_loss=eval_loss,
        train_loss=sum(entry.loss for entry in log[-tail:]) / tail,
        steps=config.steps,
        sequences_seen=config.steps * config.batch_size,
        tokens_seen=config.steps * config.batch_size * config.max_length,
        non_embedding_params=non_embedding,
        nonzero_non_embedding_params=non_embedding - _pruned(masks),
        sparsity=_pruned(masks) / prunable_total,
        wall_seconds=time.perf_counter() - start,
        log=log,
        checkpoints=checkpoints,
        model=model,
        masks=masks,
        vocab=vocab,
    )
