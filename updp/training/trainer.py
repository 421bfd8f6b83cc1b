"""The shared training loop: baseline training, supernet training, progressive subnet training.

    cfg = TrainerConfig(epochs=10, batch_size=128, lr=2e-3, weight_decay=0.05, warmup_epochs=1.0,
                        label_smoothing=0.1, out="base.pt")
    trainer = Trainer(model, get_datasets("mnist5k", 32), cfg,
                      before_step=lambda m, step, ep: set_lam(m, schedule(step)))
    result = trainer.fit()

What it does, and why:

* AdamW with the schedule and decay groups of `updp.training.lr_schedule`: linear warm-up over
  `warmup_epochs`, then cosine to 0, per step; no decay on norm affines, biases, layer scales.
* Loss: label-smoothed cross-entropy, plus distillation from `teacher` when `kd_alpha > 0`
  (`updp.training.distill`). The teacher runs in eval mode under `no_grad`.
* `before_step(model, global_step, epoch_progress)` runs before every optimizer step, with the
  *unwrapped* model, and under a torch RNG forked and seeded from (seed, global_step): anything it
  draws from the global torch RNG (e.g. a sampled subnet) is then the same on every DDP rank and
  again after a resume. It must not depend on the rank (use the arguments, not the data).
* Checkpoints (`cfg.out`) are written atomically at the end of every epoch and load with
  `torch.load(weights_only=True)`; see `Trainer.save` and `updp.models.checkpoint`. λ of pruned blocks lives in
  the model state dict (their extra state).
* Resume (`cfg.resume=True`): continues after the last finished epoch. The data order comes from
  (seed, epoch) (a `DistributedSampler` seeded with `cfg.seed`, also with one process), the
  augmentation from (seed, epoch, sample index) (`updp.data`), and the global torch RNG (dropout,
  drop path) is reseeded from (seed, epoch, rank) at each epoch start; together with the restored
  optimizer and scheduler state, a resumed run ends with the same weights as an uninterrupted one.
* DDP: under `torchrun` (WORLD_SIZE > 1) the process group is initialized (gloo on CPU, nccl on
  CUDA), each rank reads its shard, the model is wrapped in `DistributedDataParallel`, metrics are
  all-reduced, and only rank 0 writes checkpoints, logs and progress bars.

The recipe fields of `TrainerConfig` (epochs, batch size, learning rate, weight decay, warm-up,
label smoothing) have no defaults here: each workflow that trains (`updp train`, `updp prune`, the
supernet of `updp search`) owns its recipe and its defaults (`updp.workflows.config`).
"""


from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from updp.accuracy import module_accuracy
from updp.blocks.convert import pruned_blocks
from updp.blocks.modules import LambdaModule
from updp.core.constants import AMP_MODES, DEFAULT_TORCH_DEVICE
from updp.core.distributed import all_reduce_sums, init_process_group, launch_info
from updp.core.errors import InputError
from updp.core.io import write_text_atomic
from updp.core.seeding import mix_seed, rng_state, seed_everything, set_rng_state
from updp.models.checkpoint import load_state, read_checkpoint, write_checkpoint
from updp.models.fast_compute import fast_compute
from updp.training.device import cpu_capability, fast_cpu_math, native_bfloat16, resolve_device
from updp.training.distill import DistillationLoss
from updp.training.lr_schedule import WarmupCosine, param_groups

logger = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """Everything that decides a training run (saved in every checkpoint as `config`).

    Attributes:
        epochs: number of epochs.
        batch_size: per process (global batch = batch_size × world size).
        lr: AdamW peak learning rate.
        weight_decay: AdamW decoupled weight decay (weights with ndim ≥ 2 only).
        warmup_epochs: linear warm-up length, then cosine to 0; per step.
        label_smoothing: of the cross-entropy term.
        kd_alpha: weight of the distillation loss (0 = off; needs a teacher).
        kd_temperature: softmax temperature of the distillation loss.
        seed: seeds the data order, augmentation, init-time RNG and `before_step`'s RNG.
        device: 'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'.
        out: checkpoint path, written atomically every epoch (None: no checkpoint).
        resume: continue from `out` if it exists (a fresh start if it does not).
        log_jsonl: append one JSON line per epoch here (rank 0); a resume makes it agree with the
            checkpoint (`Trainer._restore_log`), so that a kill loses no epoch from it.
        progress: tqdm bars (rank 0).
        max_steps_per_epoch: cap on steps per epoch (tiny test runs).
        amp: 'off' or 'bf16': bfloat16 autocast for the training forward passes (student and
            teacher); the loss is computed in float32. Weights, optimizer state and gradients stay float32, and
            validation runs in float32, so reported accuracy is that of the float32 model that
            gets exported. bf16 needs no loss scaling. Worth it on CPUs with AVX512-BF16/AMX
            (measured 1.45x per DeiT-tiny step) and on recent GPUs; elsewhere it is emulated and
            many times slower (24x on an AVX2 CPU), which the trainer warns about.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    kd_alpha: float = 0.0
    kd_temperature: float = 1.0
    seed: int = 0
    device: str = DEFAULT_TORCH_DEVICE
    out: str | None = None
    resume: bool = False
    log_jsonl: str | None = None
    progress: bool = True
    max_steps_per_epoch: int | None = None
    amp: str = "off"

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise InputError(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.epochs < 1:
            raise InputError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise InputError(f"kd alpha must be in [0, 1], got {self.kd_alpha}")
        if self.kd_temperature <= 0:
            raise InputError(f"kd temperature must be > 0, got {self.kd_temperature}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise InputError(f"max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}")


@dataclass
class TrainResult:
    """Final validation metrics (after the last epoch), per-epoch history, checkpoint path, wall time."""

    val_acc: float
    val_loss: float
    history: list[dict] = field(default_factory=list)
    checkpoint: str | None = None
    seconds: float = 0.0


def format_history(history: list[dict]) -> list[str]:
    """One line per epoch: losses, accuracies, λ, time."""
    lines = []
    for h in history:
        lam = f"  lambda {h['lam']:.2f}" if h.get("lam") is not None else ""
        lines.append(f"  epoch {h['epoch']:>3}  train loss {h['train_loss']:.4f} acc {h['train_acc']:.4f}  "
                     f"val loss {h['val_loss']:.4f} acc {h['val_acc']:.4f}{lam}  {h['seconds']:.1f} s")
    return lines


class TrainingDivergedError(InputError):
    """The loss became NaN or Inf: settings (a learning rate too high) or data to change (exit 2)."""


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _stderr_is_tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def _mean_lam(model: nn.Module) -> float | None:
    """The mean blend weight of the pruned blocks' λ-modules: λ, or Layer-Folding's α's while they learn."""
    blocks = pruned_blocks(model)
    if not blocks:
        return None
    weights = [float(torch.as_tensor(m.blend_weight()).detach()) for _, b in blocks for m in b.modules()
               if isinstance(m, LambdaModule)]
    if not weights:
        return float(sum(b.lam for _, b in blocks) / len(blocks))
    return sum(weights) / len(weights)


def state_hash(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): compares weights across processes."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()



class Trainer:
    """Train `model` on `data.train`, validate on `data.val` every epoch, checkpoint, resume.

    Args:
        model: the model (moved to the device in place). Pruned blocks keep their λ in the
            state dict, so the checkpoint always records the λ reached.
        data: the dataset bundle (`updp.data.get_datasets`).
        cfg: the run configuration.
        teacher: frozen model for distillation (needed when `cfg.kd_alpha > 0`); set to eval mode,
            `requires_grad=False`, and moved to the device.
        before_step: called as `before_step(model, global_step, epoch_progress)` before each step
            (see the module docstring for the RNG contract).
        checkpoint_extra: returns extra items for every checkpoint (e.g. `{"plan": ...,
            "model_spec": ...}`); values must be weights_only-loadable (tensors, str, numbers,
            lists, dicts, None). They override the defaults of the same name.
        find_unused_parameters: passed to `DistributedDataParallel` (supernets that skip modules).
        echo: receives one line per epoch when progress is on and stderr is not a terminal (where
            tqdm bars do not show); without it the line goes to the log.
        extra_loss: a term added to each step's loss, `extra_loss(model)` (None: nothing), e.g.
            Layer-Folding's penalty on its α's.
        lr_for: a parameter's own peak learning rate by its name (None: `cfg.lr`); such parameters
            form their own AdamW groups without weight decay.
    """

    def __init__(self, model: nn.Module, data, cfg: TrainerConfig, *, teacher: nn.Module | None = None,
                 before_step: Callable[[nn.Module, int, float], None] | None = None,
                 checkpoint_extra: Callable[[], dict] | None = None,
                 find_unused_parameters: bool = False, echo: Callable[[str], None] | None = None,
                 extra_loss: Callable[[nn.Module], torch.Tensor | None] | None = None,
                 lr_for: Callable[[str], float | None] | None = None) -> None:
        if cfg.kd_alpha > 0 and teacher is None:
            raise InputError("kd_alpha > 0 needs a teacher model")
        self.cfg = cfg
        self.data = data
        self.device = resolve_device(cfg.device)
        if cfg.amp == "bf16" and not native_bfloat16(self.device):
            where = f"this CPU ({cpu_capability()})" if self.device.type == "cpu" else str(self.device)
            logger.warning("amp bf16: %s has no native bfloat16, so autocast emulates it and training runs "
                           "many times slower than in float32 (35 s vs 1.45 s per DeiT-tiny step on an AVX2 "
                           "CPU); use amp 'off' here", where)
        self.distributed = init_process_group(self.device)
        self.rank, self.world, _ = launch_info()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.model = model.to(self.device)
        self.teacher = None
        if teacher is not None and cfg.kd_alpha > 0:
            self.teacher = teacher.to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.before_step = before_step
        self.checkpoint_extra = checkpoint_extra
        self.find_unused_parameters = find_unused_parameters
        self.echo = echo
        self.extra_loss = extra_loss
        self.criterion = DistillationLoss(cfg.kd_alpha if self.teacher is not None else 0.0, cfg.kd_temperature,
                                          cfg.label_smoothing)

        self.sampler = DistributedSampler(data.train, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=False)
        self.loader = DataLoader(data.train, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=0,
                                 drop_last=len(self.sampler) > cfg.batch_size,  # BN needs batches > 1
                                 pin_memory=self.device.type == "cuda")
        n = len(self.loader)
        if n == 0:
            raise InputError(f"the training split is empty (or smaller than one batch of {cfg.batch_size})")
        self.steps_per_epoch = min(n, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else n
        self.total_steps = self.steps_per_epoch * cfg.epochs
        warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        # The fused AdamW kernel: one pass over all parameters per step instead of a few dozen
        # small ops per tensor (4-7 % of a ConvNeXt-atto step at 32×32 on 2 cores); the same update.
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay, lr_for), lr=cfg.lr,
                                           fused=self.device.type in ("cpu", "cuda"))
        lr_lambda = WarmupCosine(self.total_steps, min(warmup, self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self.epoch = 0   # epochs finished
        self.step = 0    # optimizer steps done
        self.history: list[dict] = []
        self.ddp: nn.Module | None = None

    @staticmethod
    def count_steps(data, cfg: TrainerConfig) -> int:
        """Total optimizer steps a `Trainer(…, data, cfg)` will run (for λ schedules built beforehand)."""
        _, world, _ = launch_info()
        per_rank = math.ceil(len(data.train) / world)
        n = per_rank // cfg.batch_size if per_rank > cfg.batch_size else math.ceil(per_rank / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            n = min(n, cfg.max_steps_per_epoch)
        return n * cfg.epochs

    # -------------------------------------------------------------- checkpoint

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def save(self, metrics: dict) -> None:
        """Write the checkpoint (rank 0; `cfg.out`), atomically, with `updp.models.write_checkpoint`.

        Besides the weights: optimizer, scheduler, epoch (finished epochs), step, rng, config,
        metrics, history, world_size, then `checkpoint_extra()` (model_spec, plan, ...), whose
        entries override those of the same name.
        """
        if not self.cfg.out or not self.is_main:
            return
        extra = {"model_spec": None, "plan": None, **(self.checkpoint_extra() if self.checkpoint_extra else {})}
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "epoch": self.epoch, "step": self.step, "rng": rng_state(), "config": asdict(self.cfg),
                 "metrics": metrics, "history": self.history, "world_size": self.world}
        # Contiguous copies: the model may be channels-last while it trains (`fast_compute`).
        weights = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in self.model.state_dict().items()}
        write_checkpoint(self.cfg.out, weights, **{**state, **extra})
        logger.info("checkpoint %s (epoch %d, step %d)", self.cfg.out, self.epoch, self.step)

    def _try_resume(self) -> None:
        path = self.cfg.out
        if not path:
            raise InputError("resume needs an output checkpoint path (--out)")
        if not os.path.exists(path):
            logger.warning("resume: %s does not exist yet; starting from scratch", path)
            return
        ck = read_checkpoint(path).payload
        if "optimizer" not in ck or "epoch" not in ck:
            raise InputError(f"resume: {path} is not a training checkpoint of updp (no optimizer/epoch state)")
        old = ck.get("config") or {}
        for key in ("batch_size", "seed", "lr", "weight_decay", "warmup_epochs", "max_steps_per_epoch"):
            if key in old and old[key] != getattr(self.cfg, key):
                logger.warning("resume: %s was %r in %s, now %r: the run will not match an uninterrupted one",
                               key, old[key], path, getattr(self.cfg, key))
        if old.get("epochs") not in (None, self.cfg.epochs):
            logger.warning("resume: epochs changed %s -> %s: the LR schedule is re-stretched", old.get("epochs"),
                           self.cfg.epochs)
        if ck.get("world_size", 1) != self.world:
            logger.warning("resume: world size changed %s -> %s", ck.get("world_size", 1), self.world)
        load_state(self.model, ck["model"], path)
        self.optimizer.load_state_dict(ck["optimizer"])
        sched = dict(ck["scheduler"])
        sched.pop("lr_lambdas", None)  # ours are rebuilt from this run's step counts
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **sched})
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        self.history = list(ck.get("history") or [])
        if "rng" in ck and self.world == ck.get("world_size", 1):
            set_rng_state(ck["rng"])
        logger.info("resumed from %s after epoch %d (step %d)", path, self.epoch, self.step)
        if self.cfg.log_jsonl and self.is_main:
            self._restore_log()

    def _restore_log(self) -> None:
        """Make the per-epoch log agree with the checkpoint resumed from: its history, once each.

        The log line of an epoch is appended after its checkpoint, so a kill between the two leaves
        the log an epoch short (and one in the middle of the append, a partial last line); the
        checkpoint is what the run continues from. This run's lines start at the last line equal to
        the history's first epoch; they are replaced by the history, and the lines before them (earlier
        runs appending to the same file) are kept. The log is rewritten atomically.
        """
        if not self.history:
            return
        path = Path(self.cfg.log_jsonl)
        text = path.read_text() if path.is_file() else ""
        lines = text[:text.rfind("\n") + 1].splitlines()  # a last line without its newline was cut short
        ours = [json.dumps(h) for h in self.history]
        first = json.loads(ours[0])
        start = next((k for k in range(len(lines) - 1, -1, -1) if _json_or_none(lines[k]) == first), len(lines))
        kept = "".join(line + "\n" for line in lines[:start] + ours)
        if kept != text:
            write_text_atomic(path, kept)
            logger.info("resume: %s rewritten from the checkpoint's history (%d epochs)", path, len(ours))

    # -------------------------------------------------------------- loop

    def _autocast(self):
        """bfloat16 autocast for the training forward when `cfg.amp == 'bf16'` (a no-op otherwise)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16")

    def _forward_teacher(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            out = self.teacher(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _run_before_step(self) -> None:
        if self.before_step is None:
            return
        progress = self.epoch + (self.step - self.epoch * self.steps_per_epoch) / self.steps_per_epoch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.cfg.seed, 7, self.step))
            self.before_step(self.model, self.step, progress)

    def _train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        if hasattr(self.data.train, "set_epoch"):
            self.data.train.set_epoch(epoch)
        seed_everything(cfg.seed, epoch, self.rank)
        net = self.ddp if self.ddp is not None else self.model
        net.train()
        loss_sum = correct = 0.0
        n = 0
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and self.is_main and _stderr_is_tty()), dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            for i, (x, y) in enumerate(self.loader):
                if i >= self.steps_per_epoch:
                    break
                self._run_before_step()
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with self._autocast():
                    t_logits = self._forward_teacher(x)
                    logits = net(x)
                if isinstance(logits, (tuple, list)):
                    logits = logits[0]
                # The loss (log-softmax, KL) always in float32.
                logits = logits.float()
                loss = self.criterion(logits, y, None if t_logits is None else t_logits.float())
                extra = self.extra_loss(self.model) if self.extra_loss is not None else None
                if extra is not None:
                    loss = loss + extra
                self._stop_if_diverged(loss, epoch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                b = int(y.numel())
                loss_sum += float(loss.detach()) * b
                correct += float((logits.detach().argmax(1) == y).sum())
                n += b
                if not bar.disable:  # the postfix walks the model: only for a bar that shows
                    lam = _mean_lam(self.model)
                    post = {"loss": f"{loss_sum / n:.3f}", "acc": f"{correct / n:.3f}"}
                    if lam is not None:
                        post["lam"] = f"{lam:.2f}"
                    bar.set_postfix(post, refresh=False)
                bar.update(1)
        finally:
            bar.close()
        if self.distributed:
            # DDP broadcasts buffers at the start of each forward, so the last step's BN statistics
            # still differ per rank: make every rank hold rank 0's, as the checkpoint does.
            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)
        loss_sum, correct, n_f = all_reduce_sums([loss_sum, correct, float(n)], self.device)
        return {"train_loss": loss_sum / max(n_f, 1), "train_acc": correct / max(n_f, 1),
                "train_seconds": time.perf_counter() - t0}

    def _stop_if_diverged(self, loss: torch.Tensor, epoch: int) -> None:
        """A NaN or Inf loss poisons the weights at the next step: stop before it, on every rank
        together (the flag is summed over the ranks), with the last finished epoch's checkpoint kept."""
        bad = all_reduce_sums([0.0 if bool(torch.isfinite(loss)) else 1.0], self.device)[0]
        if not bad:
            return
        if self.cfg.out and self.epoch > 0:
            kept = f"{self.cfg.out} keeps epoch {self.epoch}, the last finished one"
        else:
            kept = "no epoch finished, so no checkpoint was written"
        raise TrainingDivergedError(f"training diverged: the loss is {float(loss.detach())} at step {self.step} (epoch "
                                    f"{epoch + 1}); {kept}; lower --lr, or check the data and weights")

    def _check_ranks_agree(self) -> None:
        """DDP keeps replicas identical; a difference (e.g. a rank-dependent `before_step`) is a bug."""
        digest = state_hash(self.model)
        digests: list[str | None] = [None] * self.world
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: state hashes per rank {digests} (is before_step "
                               "rank-dependent?)")
        if self.is_main:
            logger.info("weights identical on %d ranks (sha256 %s)", self.world, digest[:16])

    def _report_epoch(self, record: dict) -> None:
        """Append the epoch to the JSONL log and tell the user (rank 0 only)."""
        cfg = self.cfg
        if cfg.log_jsonl:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.log_jsonl)), exist_ok=True)
            with open(cfg.log_jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")
        lam = record["lam"]
        line = (f"epoch {self.epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f} acc "
                f"{record['train_acc']:.4f} | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
                + (f" | lambda {lam:.3f}" if lam is not None else "") + f" | {record['seconds']:.1f} s")
        # Bars only on a terminal (their carriage-return frames garble log files); a redirected
        # run with progress on gets one plain line per epoch instead.
        if cfg.progress and not _stderr_is_tty() and self.echo is not None:
            self.echo(line)
        else:
            logger.info(line)

    @fast_cpu_math()
    def fit(self) -> TrainResult:
        """Train the remaining epochs (all, or those after the resumed checkpoint)."""
        t_start = time.perf_counter()
        cfg = self.cfg
        if cfg.resume:
            self._try_resume()
        with fast_compute(self.model, self.teacher):
            last = self._fit_epochs()
        if last is None:  # nothing to do (already finished) and no history: evaluate once
            ev = module_accuracy(self.model, self.data.val, device=self.device)
            last = {"val_acc": ev["acc"], "val_loss": ev["loss"]}
        if self.distributed:
            self._check_ranks_agree()
        return TrainResult(val_acc=float(last["val_acc"]), val_loss=float(last["val_loss"]),
                           history=list(self.history), checkpoint=cfg.out if cfg.out else None,
                           seconds=time.perf_counter() - t_start)

    def _fit_epochs(self) -> dict | None:
        """The epoch loop of `fit` (the model channels-last where that is faster); the last record."""
        cfg = self.cfg
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids,
                                               find_unused_parameters=self.find_unused_parameters)
        last = self.history[-1] if self.history else None
        for epoch in range(self.epoch, cfg.epochs):
            t0 = time.perf_counter()
            tr = self._train_epoch(epoch)
            self.epoch = epoch + 1
            ev = module_accuracy(self.model, self.data.val, batch_size=max(256, cfg.batch_size), device=self.device)
            lam = _mean_lam(self.model)
            last = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                    "train_loss": tr["train_loss"], "train_acc": tr["train_acc"],
                    "val_loss": ev["loss"], "val_acc": ev["acc"], "val_n": ev["n"], "lam": lam,
                    "seconds": time.perf_counter() - t0, "train_seconds": tr["train_seconds"]}
            self.history.append(last)
            self.save(last)
            if self.is_main:
                self._report_epoch(last)
        return last

