"""Wanda: |W_ij| * ||X_j||_2, weight magnitude times the calibration norm of its input feature."""

from __future__ import annotations

import torch
from torch import nn

from sparselab.scoring.base import SCORERS, Scorer, ScoringContext
from sparselab.scoring.calibration import require_calibration


@SCORERS.register("wanda")
class WandaScorer(Scorer):
    """Score S_ij = |W_ij| * ||X_j||_2 (out x in), X_j input feature j of the Linear that owns W
    (weight "a.b.weight" -> module "a.b") over every real calibration token.

    The norms come from forward pre-hooks; inputs shaped (batch, length, in) keep only the tokens
    the attention mask marks real, other inputs (the pooler's (batch, in); every patch token of an
    image batch, which has no attention mask) count every row.
    Wanda's code averages squared norms over samples instead: a constant factor per matrix, so the
    same ranking within a row. It also prunes block by block and takes each block's inputs from the
    already-pruned blocks before it; here every norm comes from the dense model in one pass,
    because a score must not depend on the sparsity it is later pruned to.

    Wanda compares scores only within each output row, which no normalisation of the scores makes
    equal to a matrix- or set-wide ranking: it forces the `row` allocation (every row keeps
    round((1 - s) * in_features) weights; n:m groups already lie within a row).
    """

    hyperparameters = {"num_batches": 8, "batch_size": 32, "max_length": 128}
    needs_data = True
    allowed_allocations = ("row",)

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        calibration = require_calibration(ctx, "wanda")
        model = ctx.model
        modules = dict(model.named_modules())
        owners: dict[str, nn.Linear] = {}
        for name in ctx.prunable:
            owner = modules.get(name.removesuffix(".weight"))
            if not isinstance(owner, nn.Linear) or owner.weight is not ctx.prunable[name]:
                raise ValueError(f"wanda scores only nn.Linear weights; {name!r} is not the weight of one")
            owners[name] = owner
        # name -> (in,) sum of squares of input feature j over real tokens
        squares = {name: torch.zeros(owner.in_features, dtype=torch.float32, device=owner.weight.device)
                   for name, owner in owners.items()}
        real: torch.Tensor | None = None  # (batch, length) bool, the current batch's attention mask (text)

        def collector(name: str):
            def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                x = inputs[0].detach().float()  # (batch, length, in) or (batch, in)
                masked = real is not None and x.dim() == 3 and x.shape[:2] == real.shape
                tokens = x[real] if masked else x.reshape(-1, x.shape[-1])
                squares[name] += tokens.pow(2).sum(dim=0)  # tokens: (n_tokens, in)
            return hook

        was_training = model.training
        handles = [owner.register_forward_pre_hook(collector(name)) for name, owner in owners.items()]
        device = next(iter(ctx.prunable.values())).device
        drawn = 0
        try:
            model.eval()
            with torch.no_grad():
                for batch in calibration.batches(self.hyper["num_batches"], self.hyper["batch_size"],
                                                 self.hyper["max_length"]):
                    # input_ids, token_type_ids, attention_mask: (batch, length), or pixel_values
                    # (batch, channels, height, width); labels are not needed
                    inputs = {key: value.to(device) for key, value in batch.items() if key != "labels"}
                    real = inputs["attention_mask"].bool() if "attention_mask" in inputs else None
                    model(**inputs)
                    drawn += 1
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        if drawn == 0:
            raise ValueError(f"scorer 'wanda' drew no calibration batch (num_batches={self.hyper['num_batches']})")
        # |W| (out, in) * ||X|| (1, in)
        return {name: weight.detach().abs().float() * squares[name].sqrt().unsqueeze(0)
                for name, weight in ctx.prunable.items()}
