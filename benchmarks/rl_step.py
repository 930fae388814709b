"""Seconds per GRPO step on SmolLM2-135M-Instruct: tokjax (last 4 layers, full) vs TRL's GRPOTrainer on torch CPU.

    python benchmarks/rl_step.py                        # 8 prompts x G=4, 48 new tokens, 1 warm-up + 3 timed steps
    python benchmarks/rl_step.py --steps 1              # one timed step per arm
    python benchmarks/rl_step.py --tiny --trl-python none   # smoke: a random 2-layer model, byte tokenizer, no TRL
    python benchmarks/rl_step.py --prompts 2 --old-path     # + the partial arm on the pre-issue-21 scoring path
    python benchmarks/rl_step.py --no-full --threads 2      # the default size in ~14 GB: last-4 arm vs TRL (2 threads)
    bash benchmarks/setup_trl_venv.sh                   # builds the venv the TRL side runs in

One GRPO step, as :func:`tokjax.train.rl.rl_train` runs it (issue 21), split in three timed phases:

* ``rollout``: the step's prompts, ``group_size`` sampled completions of each through
  :func:`tokjax.train.rl.rollout` (``tokjax.generate``, T = 1, eos ends a row) and the reward
  (``tokjax.data.check_answer`` on the decoded completion: 1 when the last stated / written integer
  is the answer of a ``tokjax.data.word_problems`` level-1 problem, else 0);
* ``trunk``: the no-gradient forward over the rollout batch that gives ``old_logp`` (rl_train's
  ``token_stats`` log-probs; the reference forward too when beta > 0, here beta = 0). With
  ``inner_steps`` = 1 rl_train skips it (``tokjax.train.rl.scoring``: ``old_logp`` is the stop-gradient
  of the loss's own forward, as TRL's), so it is 0 here; ``--old-path`` adds a partial arm that runs it,
  and scores every position of the rollout width rather than each row's completion window, as rl_train
  did before (issue 21);
* ``update``: group advantages and ``inner_steps`` = 1 optimiser step of the registered ``grpo``
  loss through ``make_train_step`` (forward, backward, global-norm clip, AdamW); the head and
  log-softmax run on each row's ``max_new_tokens`` completion targets only (``token_stats(span=)``).

The tokjax arms run the body of ``rl_train``'s step from its own pieces (``rollout``, ``rollout_batch``,
``make_grpo_loss``, ``group_advantages``, ``make_train_step`` with ``RLConfig.train_config()``), so each
phase can be timed; tests/test_benchmarks.py checks that one such step gives bit for bit the params of
``rl_train`` with the same config. Arms: ``trainable=("last:4",)`` (the last 4 of 30 layers train;
embeddings, tied head and final norm frozen) and full-parameter (``trainable=None``).
``max_prompt_len`` is the longest prompt of the run, so the rollout width (prompt + 48) is what a user
of rl_train would set and the step compiles once (the warm-up step holds the compiles).

The baseline is TRL's ``GRPOTrainer`` (trl 0.19.1, transformers 4.57, torch 2.13 CPU wheel; pins in
benchmarks/setup_trl_venv.sh), run in a child process with the venv's interpreter (``--trl-python``),
on the same float32 weights (transformers' GGUF loader dequantises the same Q4_1 file that
``tokjax.pretrained`` loads, as in benchmarks/decode_real.py), the same problems per step in the same
order (conversational prompts: TRL applies the same chat template), the same reward, G, 48 new tokens,
T = 1 (top_p 1, no top-k), AdamW lr 1e-5, betas (0.9, 0.999), weight decay 0, clip-norm 1, constant lr,
beta = 0, eps_low 0.2 / eps_high 0.28, token-mean loss over the batch (``loss_type="bnpo"`` = rl_train's
``reduction="token_mean", denominator="valid"``), reward std scaling per group, one optimiser step per
generation batch. TRL's step is timed from ``on_step_begin`` to ``on_step_end``; ``rollout`` =
``_generate_and_score_completions`` (tokenise, ``model.generate``, reward, decode) less any log-prob
forward inside it (``trunk``; none here: with ``num_iterations=1`` and beta = 0 TRL takes ``old_logp``
as the detached log-probs of the loss's own forward, so it has no separate forward, and neither has
rl_train since issue 21's fast paths); ``update`` = the rest (loss forward, backward, clip, AdamW). The child waits for the
parent before every step, so all arms run interleaved, one step each per round, and machine load hits
them alike. TRL runs with ``torch.set_num_threads(1)`` and with 2, and the faster is the reference.

Reported: the median seconds of each phase over the timed steps, the total s/step, and the ratio TRL's
best total / the arm's total (above 1: the arm is faster). Also the mean prompt / completion lengths
and rewards, to show the arms did comparable work (completions are sampled, so their lengths differ
between engines). Without the TRL venv (or ``--trl-python none``) the tokjax arms run alone and the
command that builds the venv is printed.

Memory: the tokjax process holds both arms (params + AdamW state) and, at 8 prompts x G=4, peaks near
13 GB resident (the GRPO loss's ``token_stats`` forms the full [rows, width, 49152] logits, and the
backward runs through all 30 layers even under ``last:4``); each TRL child about 1 GB idle plus its step
(TRL keeps logits of the completion positions only). On a 24 GB machine shared with other jobs the
8 x 4 run was OOM-killed, so the reported run uses ``--prompts 4 --group 4`` (16 rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, positive_int  # noqa: E402

MODEL = "smollm2-135m-instruct"
LEVEL = 1  # word-problem level (docs/data.md: SmolLM2-135M's T=1 accuracy is highest here)
PROBLEM_SEED = 2100  # problems of step s: word_problems(n, LEVEL, PROBLEM_SEED + s)
STEP_TAG = "RLSTEP "  # the child's protocol lines on stdout


def default_trl_python() -> Path:
    """Returns the interpreter of the venv that benchmarks/setup_trl_venv.sh builds."""
    from tokjax._paths import cache_root

    return cache_root() / "trl-venv" / "bin" / "python"


# ------------------------------------------------------------------------------------------ the task


def problems(step: int, n: int) -> list:
    """Returns the ``n`` word problems of RL step ``step`` (a pure function of both; every arm gets the same)."""
    from tokjax.data import word_problems

    return word_problems(n, LEVEL, PROBLEM_SEED + step)


class WordProblemTask:
    """An :class:`tokjax.train.rl.RLTask`: chat-template prompts of :func:`problems`, ``check_answer`` reward."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.chat = callable(getattr(tokenizer, "apply_chat_template", None)) and \
            getattr(tokenizer, "chat_template", None) is not None

    def prompt_ids(self, text: str) -> list[int]:
        if self.chat:
            return list(self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))
        return list(self.tok.encode(text))

    def prompts(self, step: int, n: int):
        ps = problems(step, n)
        return [self.prompt_ids(p.prompt()) for p in ps], [p.answer for p in ps]

    def reward(self, completions, answers):
        from tokjax.data import check_answer

        graded = [check_answer(self.tok.decode([int(t) for t in c]), a) for c, a in zip(completions, answers)]
        return np.array([float(c) for c, _ in graded], np.float32), np.array([f for _, f in graded], bool)


# ------------------------------------------------------------------------------------------ tokjax arms


class TokjaxArm:
    """One tokjax GRPO run whose steps are rl_train's step body, phase by phase (see the module docstring)."""

    def __init__(self, model, task, config, *, eos_id=None, old_path: bool = False):
        import jax

        from tokjax.losses.grpo import make_grpo_loss
        from tokjax.train import init_state, make_optimizer, make_train_step
        from tokjax.train.rl import scoring

        self.cfg, self.task, self.config, self.eos_id = model.cfg, task, config, eos_id
        # rl_train's scoring, or (old_path) the step before issue 21's fast paths: a separate old-logp forward
        # and the head over every position of the rollout width
        self.on_policy, self.span = (False, None) if old_path else scoring(config)
        tc = config.train_config()
        opt = make_optimizer(tc)
        self.state = init_state(model.cfg, opt, config.seed, params=model.params)
        loss = make_grpo_loss(eps_low=config.eps_low, eps_high=config.eps_high, beta=config.beta,
                              reduction=config.reduction, denominator=config.denominator, on_policy=self.on_policy,
                              span=self.span)
        self.step_fn = make_train_step(model.cfg, opt, loss, trainable=tc.trainable, donate=False)
        self.key = jax.random.key(config.seed)
        self.width = config.max_prompt_len + config.max_new_tokens

    def step(self, step: int) -> dict:
        """Runs RL step ``step``; returns its phase seconds and what it did (lengths, mean reward)."""
        import jax

        from tokjax.losses.grpo import group_advantages
        from tokjax.model import Model
        from tokjax.train.rl import _logp, rollout, rollout_batch  # _logp: rl_train's own old-logp program

        c, G = self.config, self.config.group_size
        t0 = time.perf_counter()
        prompts, answers = self.task.prompts(step, c.prompts_per_step)
        r = rollout(Model(params=self.state.params, cfg=self.cfg), prompts, answers,
                    key=jax.random.fold_in(self.key, step), group_size=G, max_new_tokens=c.max_new_tokens,
                    temperature=c.temperature, eos_id=self.eos_id, width=self.width)
        rewards, fmt = self.task.reward(r.completions, r.answers)
        r.rewards, r.format_ok = np.asarray(rewards, np.float32), np.asarray(fmt, bool)
        t1 = time.perf_counter()
        batch = rollout_batch(r, mask_truncated=c.mask_truncated)
        if not self.on_policy:
            batch["old_logp"] = jax.block_until_ready(_logp(self.state.params, self.cfg, batch, span=self.span))
        t2 = time.perf_counter()
        batch["advantages"] = group_advantages(r.rewards, G, scale=c.scale, rloo=c.rloo)
        for _ in range(c.inner_steps):
            self.state, metrics = self.step_fn(self.state, batch)
        metrics = {k: float(v) for k, v in metrics.items()}  # rl_train reads them back every step too
        t3 = time.perf_counter()
        return {"rollout": t1 - t0, "trunk": t2 - t1, "update": t3 - t2, "total": t3 - t0,
                "prompt_len": float(np.mean(r.prompt_lengths)),
                "completion_len": float(np.mean(r.lengths - r.prompt_lengths)),
                "reward": float(r.rewards.mean()), "loss": metrics["loss"]}


def rl_config(opts: dict, trainable, max_prompt_len: int):
    from tokjax.train.rl import RLConfig

    return RLConfig(steps=opts["warmup"] + opts["steps"], prompts_per_step=opts["prompts"], group_size=opts["group"],
                    max_new_tokens=opts["new"], max_prompt_len=max_prompt_len, temperature=1.0, lr=opts["lr"],
                    eps_low=0.2, eps_high=0.28, beta=0.0, grad_clip=1.0, weight_decay=0.0,
                    trainable=trainable, seed=0)


# ------------------------------------------------------------------------------------------ TRL child


def trl_child(spec_path: str) -> int:
    """The TRL side (runs under the TRL venv's interpreter; imports no jax / tokjax): one GRPOTrainer run whose
    steps wait for a line on stdin and report their phase seconds on stdout."""
    import importlib.util
    import types

    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    import datasets
    import transformers
    import trl
    from transformers import TrainerCallback

    # the same grader as the tokjax arms, from tokjax's file, without importing tokjax (and jax)
    for name in ("tokjax", "tokjax.data"):
        sys.modules.setdefault(name, types.ModuleType(name))
    packing = types.ModuleType("tokjax.data._packing")
    packing.check_int = lambda name, v, lo: v
    sys.modules.setdefault("tokjax.data._packing", packing)
    mspec = importlib.util.spec_from_file_location("_wp", ROOT / "tokjax" / "data" / "_word_problems.py")
    wp = importlib.util.module_from_spec(mspec)
    sys.modules["_wp"] = wp
    mspec.loader.exec_module(wp)

    src = Path(spec["gguf"])
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name,
                                                              torch_dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name, padding_side="left")
    # transformers reads <|im_start|> as the GGUF's eos; the chat model ends its turn with tokjax's eos (<|im_end|>)
    tok.eos_token = tok.convert_ids_to_tokens(spec["eos_id"])
    tok.pad_token = tok.eos_token
    for c in (model.config, model.generation_config):
        c.eos_token_id = c.pad_token_id = spec["eos_id"]
    data = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": a}
                                       for q, a in spec["problems"]])

    def reward(completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(wp.check_answer(t, a)[0]) for t, a in zip(texts, answer)]

    o = spec["opts"]
    out_dir = tempfile.mkdtemp(prefix="trl-rl-step-")
    args = trl.GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=o["prompts"] * o["group"], gradient_accumulation_steps=1,
        num_generations=o["group"], max_completion_length=o["new"], max_prompt_length=None, temperature=1.0,
        top_p=1.0, top_k=None, learning_rate=o["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, beta=0.0, epsilon=0.2,
        epsilon_high=0.28, loss_type="bnpo", num_iterations=1, scale_rewards=True,
        max_steps=o["warmup"] + o["steps"], logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
        bf16=False, fp16=False, shuffle_dataset=False, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok)

    clock = {"score": 0.0, "trunk": 0.0, "inside": False, "prompt_len": 0.0, "completion_len": 0.0, "reward": 0.0}
    score_fn, logp_fn = trainer._generate_and_score_completions, trainer._get_per_token_logps

    def timed_score(inputs):
        clock["inside"] = True
        t = time.perf_counter()
        try:
            out = score_fn(inputs)
        finally:
            clock["inside"] = False
        clock["score"] += time.perf_counter() - t
        clock["prompt_len"] = float(out["prompt_mask"].sum(1).float().mean())
        clock["completion_len"] = float(out["completion_mask"].sum(1).float().mean())
        return out

    def timed_logp(*a, **k):
        t = time.perf_counter()
        out = logp_fn(*a, **k)
        if clock["inside"]:
            clock["trunk"] += time.perf_counter() - t
        return out

    trainer._generate_and_score_completions = timed_score
    trainer._get_per_token_logps = timed_logp

    class Pace(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not sys.stdin.readline():  # the parent is gone
                raise SystemExit(0)
            clock.update(score=0.0, trunk=0.0, t0=time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            total = time.perf_counter() - clock["t0"]
            rewards = trainer._metrics["train"].get("reward", [float("nan")])
            print(STEP_TAG + json.dumps({
                "rollout": clock["score"] - clock["trunk"], "trunk": clock["trunk"], "update": total - clock["score"],
                "total": total, "prompt_len": clock["prompt_len"], "completion_len": clock["completion_len"],
                "reward": float(rewards[-1]) if rewards else float("nan")}), flush=True)

    trainer.add_callback(Pace)
    print(STEP_TAG + json.dumps({"ready": True, "trl": trl.__version__, "transformers": transformers.__version__,
                                 "torch": torch.__version__}), flush=True)
    trainer.train()
    return 0


class TrlArm:
    """The parent's handle on one TRL child process (``threads`` torch threads)."""

    def __init__(self, python: Path, threads: int, spec: dict, workdir: Path):
        self.name = f"TRL GRPOTrainer, {threads} thread{'s' if threads > 1 else ''}"
        path = workdir / f"trl-spec-{threads}.json"
        path.write_text(json.dumps({**spec, "threads": threads}))
        self.log = workdir / f"trl-child-{threads}.log"
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([str(python), __file__, "--trl-child", str(path)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=str(ROOT))
        self.info = self._read()
        self.failed = self.info is None

    def _read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return None
            if line.startswith(STEP_TAG):
                return json.loads(line[len(STEP_TAG):])

    def step(self, step: int):
        if self.failed:
            return None
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.failed = True
            return None
        row = self._read()
        self.failed = row is None
        return row

    def error_tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log.read_text().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------------------------------ main


def trl_interpreter(arg: str | None, *, tiny: bool = False) -> tuple[Path | None, str | None]:
    """Returns (the TRL venv's interpreter or None, a note saying why TRL is skipped or None).

    ``arg``: ``--trl-python`` (None: the default venv; "none": skip). The tiny smoke model has no TRL twin."""
    if (arg or "").lower() == "none" or (tiny and arg is None):
        return None, None
    python = Path(arg) if arg else default_trl_python()
    if not python.exists():
        return None, (f"note: no TRL interpreter at {python}; TRL skipped. Build it with `bash "
                      "benchmarks/setup_trl_venv.sh` (a separate venv: torch 2.13 CPU, transformers 4.57, trl 0.19.1 "
                      "--no-deps) or pass --trl-python PATH")
    return python, None



def tiny_model():
    """Returns (a random 2-layer tokjax Model, a byte tokenizer): the smoke-test stand-in for SmolLM2."""
    import jax

    import tokjax
    from tokjax.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    cfg = tokjax.ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_len=512)
    return tokjax.model.Model(params=tokjax.model.init_params(cfg, jax.random.key(0)), cfg=cfg), tok


def summarize(rows: list[dict]) -> dict:
    keys = ("rollout", "trunk", "update", "total", "prompt_len", "completion_len", "reward")
    return {k: float(np.median([r[k] for r in rows])) if k in ("rollout", "trunk", "update", "total")
            else float(np.mean([r[k] for r in rows])) for k in keys}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=positive_int, default=3, help="timed steps per arm (default 3)")
    ap.add_argument("--warmup", type=positive_int, default=1, help="untimed first steps per arm (compiles; default 1)")
    ap.add_argument("--prompts", type=positive_int, default=8, help="prompts per step (default 8)")
    ap.add_argument("--group", type=int, default=4, help="rollouts per prompt, G >= 2 (default 4)")
    ap.add_argument("--new", type=positive_int, default=48, help="max new tokens per rollout (default 48)")
    ap.add_argument("--last", type=positive_int, default=4, help="layers the partial arm trains (default 4)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", default="1,2", help="torch threads of the TRL arms (default 1,2; best reported)")
    ap.add_argument("--trl-python", default=None,
                    help="interpreter of the TRL venv (default: trl-venv/bin/python in tokjax's cache directory; "
                         "'none' skips TRL)")
    ap.add_argument("--no-full", action="store_true",
                    help="leave out the full-parameter arm (its AdamW state and compiles: ~6 GB more at 8 x 4)")
    ap.add_argument("--tiny", action="store_true", help="a random 2-layer model with a byte tokenizer (smoke test)")
    ap.add_argument("--old-path", action="store_true",
                    help="also run the partial arm as rl_train stepped before issue 21's fast paths (a separate "
                         "old-logp forward, the head over every position), interleaved with the others")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--trl-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.trl_child:
        return trl_child(args.trl_child)
    if args.group < 2:
        ap.error(f"--group must be >= 2 (GRPO compares rollouts of a prompt), got {args.group}")
    opts = {"steps": args.steps, "warmup": args.warmup, "prompts": args.prompts, "group": args.group,
            "new": args.new, "lr": args.lr}

    import jax

    import tokjax

    gguf = None
    if args.tiny:
        model, tok = tiny_model()
        label = "random 2-layer model (smoke)"
    else:
        from tokjax.pretrained import gguf_model_path

        try:
            gguf = gguf_model_path(MODEL)
        except ValueError as e:
            print(f"note: {e}; benchmark skipped")
            return 0
        model, tok = tokjax.pretrained(MODEL, progress=False)
        label = "SmolLM2-135M-Instruct, float32"
    task = WordProblemTask(tok)
    total_steps = args.warmup + args.steps
    max_prompt = max(len(p) for s in range(total_steps) for p in task.prompts(s, args.prompts)[0])
    n_layers = model.cfg.n_layers
    last = min(args.last, n_layers - 1) if n_layers > 1 else 1

    workdir = Path(tempfile.mkdtemp(prefix="rl-step-"))
    trl_arms = []
    python, note = trl_interpreter(args.trl_python, tiny=args.tiny)
    if note:
        print(note)
    if python is not None:
        spec = {"gguf": str(gguf), "opts": opts, "eos_id": int(tok.eos_id),
                "problems": [(p.prompt(), p.answer) for s in range(total_steps) for p in problems(s, args.prompts)]}
        for t in [int(x) for x in args.threads.split(",") if x.strip()]:
            arm = TrlArm(python, t, spec, workdir)
            if arm.failed:
                print(f"note: the TRL child ({t} thread(s)) failed to start; TRL arm skipped. Its log:\n"
                      f"{arm.error_tail()}")
                arm.close()
            else:
                trl_arms.append(arm)
        if trl_arms:
            i = trl_arms[0].info
            print(f"TRL side: trl {i['trl']}, transformers {i['transformers']}, torch {i['torch']} ({python})")

    arms = {f"tokjax last:{last}": TokjaxArm(model, task, rl_config(opts, (f"last:{last}",), max_prompt),
                                             eos_id=tok.eos_id)}
    if not args.no_full:
        arms["tokjax full"] = TokjaxArm(model, task, rl_config(opts, None, max_prompt), eos_id=tok.eos_id)
    if args.old_path:
        arms[f"tokjax last:{last} old path"] = TokjaxArm(model, task, rl_config(opts, (f"last:{last}",), max_prompt),
                                                         eos_id=tok.eos_id, old_path=True)
    steppers = {**{k: a.step for k, a in arms.items()}, **{a.name: a.step for a in trl_arms}}

    print(f"machine: {machine()}; jax {jax.__version__} ({jax.default_backend()})")
    print(f"{label}; {args.prompts} prompts x G={args.group}, <= {args.new} new tokens, T=1, word problems level "
          f"{LEVEL}; {args.warmup} warm-up + {args.steps} timed steps per arm, interleaved; tokjax rollout width "
          f"{max_prompt} + {args.new}\n", flush=True)
    rows = {k: [] for k in steppers}
    for s in range(total_steps):
        for name, fn in steppers.items():
            row = fn(s)
            if row is None:
                if rows[name] is not None:
                    arm = next(a for a in trl_arms if a.name == name)
                    print(f"note: {name} failed at step {s}; its log:\n{arm.error_tail()}", flush=True)
                rows[name] = None
                continue
            if rows[name] is not None and s >= args.warmup:
                rows[name].append(row)
            print(f"  step {s}{' (warm-up)' if s < args.warmup else ''} {name}: {row['total']:.2f} s "
                  f"(rollout {row['rollout']:.2f}, trunk {row['trunk']:.2f}, update {row['update']:.2f})", flush=True)
    for a in trl_arms:
        a.close()
    shutil.rmtree(workdir, ignore_errors=True)

    res = {k: summarize(v) for k, v in rows.items() if v}
    trl_keys = [k for k in res if k.startswith("TRL")]
    ref = min(trl_keys, key=lambda k: res[k]["total"]) if trl_keys else None
    print(f"\nmedian seconds over {args.steps} timed step(s); x TRL = TRL's best total / the arm's total\n")
    hdr = (f"{'arm':<28} {'rollout s':>9} {'trunk s':>8} {'update s':>9} {'total s/step':>12} {'x TRL':>6} "
           f"{'prompt':>6} {'compl.':>6} {'reward':>6}")
    print(hdr)
    print("-" * len(hdr))
    for k, r in res.items():
        ratio = f"{res[ref]['total'] / r['total']:.2f}" if ref else "-"
        print(f"{k:<28} {r['rollout']:>9.2f} {r['trunk']:>8.2f} {r['update']:>9.2f} {r['total']:>12.2f} {ratio:>6} "
              f"{r['prompt_len']:>6.1f} {r['completion_len']:>6.1f} {r['reward']:>6.3f}")
    if ref:
        print(f"\nreference: {ref}; prompt / compl. = mean tokens per row, reward = mean over the timed steps")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "opts": opts, "model": label,
                                               "reference": ref, "arms": res, "steps": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
