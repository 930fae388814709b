"""P36 StochasTok: pretrain on token windows that are StochasTok-split on device, through :func:`tokjax.train.train`.

The split itself (:func:`tokjax.tokenizers.stochastok.stochastok_split`) and the loss wrapper
(:func:`~tokjax.tokenizers.stochastok.stochastok_loss`) live with the tokenizer; this is the one call
that trains with them.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from tokjax.model import ModelConfig
from tokjax.tokenizers.stochastok import ExpansionTable, expansion_table, stochastok_loss
from tokjax.train._config import TrainConfig
from tokjax.train._loop import train

__all__ = ["train_stochastok"]


def train_stochastok(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: Any,
    table: ExpansionTable | Any,
    p: float,
    *,
    max_splits: int,
    loss_fn: Callable | None = None,
    params: Any = None,
    workdir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[Any, dict]:
    """Returns (Model, history) of :func:`tokjax.train.train` on ``data`` with every batch StochasTok-split.

    ``table``: an :class:`~tokjax.tokenizers.stochastok.ExpansionTable` or a tokenizer with byte
    tables (its table is built). Each step's ``tokens`` windows get ``min(floor(T * p), max_splits)``
    split attempts per row with the step's key (tokens pushed past the window end are dropped),
    then ``loss_fn`` (default the next-token loss) runs. ``p`` in [0, 1]; the paper pretrains with
    0.1. Batches carrying ``mask``/``weights`` are rejected (a split would misalign them).
    """
    if not isinstance(table, ExpansionTable):
        table = expansion_table(table)
    if table.vocab_size != model_cfg.vocab_size:
        raise ValueError(f"the expansion table covers {table.vocab_size} ids, the model has vocab_size="
                         f"{model_cfg.vocab_size}")
    loss = stochastok_loss(table, p, max_splits=max_splits, loss_fn=loss_fn)
    return train(model_cfg, train_cfg, data, loss_fn=loss, params=params, workdir=workdir, progress=progress)
