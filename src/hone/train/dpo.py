"""Direct Preference Optimization in hone's own loop.

Each preference pair (OpenAI DPO format) becomes two sequences, the prompt followed by the preferred and by
the rejected reply, scored in one batch. The reference model is the frozen base itself: the same weights
with the adapter switched off, so no second copy of the model is held. Reference log-probabilities never
change, so each pair's are computed once and kept.

    loss = -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hone.data.formats import PreferenceExample
from hone.data.render import RenderedExample, render_chat
from hone.models.scoring import Batch, collate, target_token_nll
from hone.train.loop import Trainer


@dataclass
class PreferencePair:
    """A rendered preference pair; only the final reply's tokens are scored in either sequence."""

    chosen: RenderedExample
    rejected: RenderedExample

    @property
    def num_trained(self) -> int:
        return self.chosen.num_trained + self.rejected.num_trained

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def render_pair(tokenizer, example: PreferenceExample) -> PreferencePair:
    """Prompt + preferred reply and prompt + rejected reply; earlier assistant turns are context, not scored."""
    prompt = [{**message, "weight": 0} if message["role"] == "assistant" else message for message in example.prompt]
    return PreferencePair(chosen=render_chat(tokenizer, [*prompt, example.chosen]),
                          rejected=render_chat(tokenizer, [*prompt, example.rejected]))


@dataclass
class PairBatch:
    """Pairs as one padded batch: the chosen sequences in the first half of the rows, the rejected in the second.
    `keys` name the pairs for the reference cache. The loop normalises by `num_trained`, here the pair count."""

    batch: Batch
    keys: list[tuple[str, int]]

    @property
    def num_trained(self) -> int:
        return len(self.keys)

    @property
    def num_tokens(self) -> int:
        return self.batch.num_tokens


def pair_batch(pairs: list[PreferencePair], keys: list[tuple[str, int]], pad_id: int) -> PairBatch:
    return PairBatch(collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id), keys)


def sequence_logps(model, batch: Batch, chunked: bool = True) -> torch.Tensor:
    """Per row: the summed log-probability of its scored reply tokens."""
    return -target_token_nll(model, batch, chunked=chunked)[0]


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Per pair: the DPO loss and the implicit rewards, from [2 * pairs] sequence log-probabilities laid out
    chosen first, rejected second."""
    pairs = policy.shape[0] // 2
    rewards = beta * (policy - reference)
    chosen, rejected = rewards[:pairs], rewards[pairs:]
    return {"loss": -F.logsigmoid(chosen - rejected), "chosen_reward": chosen.detach(),
            "rejected_reward": rejected.detach()}


def summarise(terms: dict[str, torch.Tensor], sums: dict) -> None:
    """Add a micro-batch's per-pair figures to running sums (pairs, reward margin, accuracy, rewards); the sums
    stay on the device until `means` reads them, when they are logged."""
    margin = terms["chosen_reward"] - terms["rejected_reward"]
    sums["pairs"] += margin.numel()
    for name, values in (("loss", terms["loss"].detach()), ("reward_margin", margin),
                         ("preference_accuracy", (margin > 0).float()), ("chosen_reward", terms["chosen_reward"]),
                         ("rejected_reward", terms["rejected_reward"])):
        sums[name] = values.float().sum() + sums[name]


def means(sums: dict, prefix: str = "") -> dict[str, float]:
    pairs = max(1.0, sums["pairs"])
    return {f"{prefix}{name}": round(float(value) / pairs, 6) for name, value in sums.items() if name != "pairs"}


def empty_sums() -> dict[str, float]:
    return dict.fromkeys(("pairs", "loss", "reward_margin", "preference_accuracy", "chosen_reward",
                          "rejected_reward"), 0.0)


class DPOTrainer(Trainer):
    """The training loop with the DPO objective; logs reward margin and preference accuracy each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = self.config.dpo.beta
        self.reference: dict[tuple[str, int], torch.Tensor] = {}  # (split, index) -> [chosen, rejected] logps
        self.sums = empty_sums()

    def _collate(self, units: list[int]) -> PairBatch:
        return pair_batch([self.data.train[i] for i in units], [("train", i) for i in units], self.pad_id)

    @torch.no_grad()
    def _reference_logps(self, pairs: PairBatch) -> torch.Tensor:
        """[2 * pairs] reference log-probabilities, computed with the adapter off the first time a pair is seen."""
        if any(key not in self.reference for key in pairs.keys):
            with self.model.disable_adapter():
                logps = sequence_logps(self.base, pairs.batch).float()
            n = len(pairs.keys)
            for i, key in enumerate(pairs.keys):
                self.reference[key] = torch.stack([logps[i], logps[n + i]])
        stacked = torch.stack([self.reference[key] for key in pairs.keys])
        return torch.cat([stacked[:, 0], stacked[:, 1]])

    def _loss(self, pairs: PairBatch) -> torch.Tensor:
        """Summed DPO loss over the micro-batch's pairs."""
        reference = self._reference_logps(pairs)
        policy = sequence_logps(self.base, pairs.batch, chunked=self.config.training.chunked_loss)
        terms = dpo_loss(policy, reference, self.beta)
        summarise(terms, self.sums)
        return terms["loss"].sum()

    def _targets_of(self, pair: PreferencePair) -> int:
        """The loop normalises by pairs: each counts one."""
        return 1

    def step_metrics(self) -> dict:
        """Means over the pairs trained since the last logged step."""
        sums = self.dist.all_sum(*(float(value) for value in self.sums.values()))  # all ranks' pairs
        figures = means(dict(zip(self.sums, sums, strict=True)))
        figures.pop("loss")  # logged as train_loss already
        self.sums = empty_sums()
        return figures

    @torch.no_grad()
    def eval_metrics(self) -> dict:
        """DPO loss, reward margin and preference accuracy over the eval pairs."""
        was_training = self.base.training
        self.base.eval()
        sums = empty_sums()
        size = self.config.training.batch_size
        for start in range(0, len(self.data.eval), size):
            indices = range(start, min(start + size, len(self.data.eval)))
            pairs = pair_batch([self.data.eval[i] for i in indices], [("eval", i) for i in indices], self.pad_id)
            with self._autocast():
                terms = dpo_loss(sequence_logps(self.base, pairs.batch), self._reference_logps(pairs), self.beta)
            summarise(terms, sums)
        self.base.train(was_training)
        return means(sums, "eval_")
