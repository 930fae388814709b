"""One-call fitting functions and RL drivers for methods whose artefact must be trained, each through :func:`tokjax.train.train`.

The family modules (``tokjax.decoding``, ``tokjax.tokenizers``, ...) define the pure loss
``(params, cfg, batch, rng) -> (loss, metrics)`` and the batch construction; the recipe here runs
the training (training sits above the families in the import order, so it cannot live there).

* :func:`kangaroo.fit_adapter` -- P44 Kangaroo's early-exit adapter (distillation, base frozen).
* :func:`s2d.sorted_finetune` -- P59 S2D's sorted fine-tuning (SoFT) of a nested draft model.
* :func:`cascades.train_deferral_mlp` -- P42's post-hoc deferral MLP.
* :func:`r2r.train_router` -- P46 R2R's token router (BCE on divergence labels, input standardisation frozen).
* :func:`zett.train_hypernet` -- P26 ZeTT's hypernetwork (the LM frozen through ``trainable``).
* :func:`stochastok.train_stochastok` -- P36 StochasTok's training with stochastic splits.
* :class:`token_hidden_reward.TokenHiddenReward` -- P69 THR-reweighted GRPO as rl_train plug-ins.
* :func:`sae.train_sae` -- top-k sparse autoencoders on tapped activations.
* :func:`vision_classifier.train_classifier` -- the vision quality classifier (cached by data and settings).
"""

from tokjax.train.recipes import cascades, kangaroo, r2r, s2d, sae, stochastok, token_hidden_reward, vision_classifier, zett

__all__ = ["cascades", "kangaroo", "r2r", "s2d", "sae", "stochastok", "token_hidden_reward", "vision_classifier", "zett"]
