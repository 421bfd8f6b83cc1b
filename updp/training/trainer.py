"""The shared training loop: baseline training, supernet training, progressive subnet training.

    trainer = Trainer(model, get_datasets("mnist5k", 32), TrainConfig(epochs=10, out="base.pt"),
                      teacher=None, before_step=lambda m, step, ep: set_lam(m, schedule(step)))
    result = trainer.fit()

What it does, and why:

* AdamW; weight decay only on weights with ndim ≥ 2 (norm affines, biases and layer scales are
  not decayed: decaying a layer scale or a BN weight towards 0 shrinks a residual branch for no
  reason). Learning rate: linear warm-up over `warmup_epochs`, then cosine to 0, updated per step.
* Loss: label-smoothed cross-entropy, plus distillation from `teacher` when `kd_alpha > 0`
  (`updp.pruning.distill`). The teacher runs in eval mode under `no_grad`.
* `before_step(model, global_step, epoch_progress)` runs before every optimizer step, with the
  *unwrapped* model, and under a torch RNG forked and seeded from (seed, global_step): anything it
  draws from the global torch RNG (e.g. a sampled subnet) is then the same on every DDP rank and
  again after a resume. It must not depend on the rank (use the arguments, not the data).
* Checkpoints (`cfg.out`) are written atomically at the end of every epoch and load with
  `torch.load(weights_only=True)`; see `Trainer.checkpoint_payload`. λ of pruned blocks lives in
  the model state dict (their extra state).
* Resume (`cfg.resume=True`): continues after the last finished epoch. The data order comes from
  (seed, epoch) (a `DistributedSampler` seeded with `cfg.seed`, also with one process), the
  augmentation from (seed, epoch, sample index) (`updp.data`), and the global torch RNG (dropout,
  drop path) is reseeded from (seed, epoch, rank) at each epoch start; together with the restored
  optimizer and scheduler state, a resumed run ends with the same weights as an uninterrupted one.
* DDP: under `torchrun` (WORLD_SIZE > 1) the process group is initialized (gloo on CPU, nccl on
  CUDA), each rank reads its shard, the model is wrapped in `DistributedDataParallel`, metrics are
  all-reduced, and only rank 0 writes checkpoints, logs and progress bars.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from updp.errors import InputError
from updp.pruning.distill import DistillationLoss

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


AMP_MODES = ("off", "bf16")


@dataclass
class TrainConfig:
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
        log_jsonl: append one JSON line per epoch here (rank 0).
        progress: tqdm bars (rank 0).
        max_steps_per_epoch: cap on steps per epoch (tiny test runs).
        amp: 'off' or 'bf16': bfloat16 autocast for the training forward passes (student and
            teacher); the loss is computed in float32. Weights, optimizer state and gradients stay float32, and
            validation runs in float32, so reported accuracy is that of the float32 model that
            gets exported. bf16 needs no loss scaling. Worth it on CPUs with AVX512-BF16/AMX
            (measured 1.45x per DeiT-tiny step here) and on recent GPUs; slower elsewhere.
    """

    epochs: int
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    kd_alpha: float = 0.0
    kd_temperature: float = 1.0
    seed: int = 0
    device: str = "auto"
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


# ------------------------------------------------------------------ distributed helpers

def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank); (0, 1, 0) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _init_distributed(device: torch.device) -> bool:
    """Initialize the process group when launched by torchrun with WORLD_SIZE > 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but torch.distributed is not available")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("process group: %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return True


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → the local CUDA device when present (per LOCAL_RANK under torchrun), else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return dev


def fast_cpu_math() -> None:
    """Flush denormal floats to zero (process-wide; a no-op where the CPU cannot).

    Why: freshly initialized timm ConvNeXts (layer scale 1e-6) and freshly inserted BNs produce
    denormal activations, on which x86 float math is ~10-50x slower: a 4-step pruning run on
    2 cores took 47 s with denormals and 2 s without. Flushing changes values below 1.2e-38 only.
    """
    torch.set_flush_denormal(True)


def _all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ------------------------------------------------------------------ RNG state (weights_only-loadable)

def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states as tensors and ints (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), None))


def _seed_everything(*parts: int) -> None:
    from updp.data import _mix

    s = _mix(*parts)
    torch.manual_seed(s)
    np.random.seed(s % (2**32))
    random.seed(s)


# ------------------------------------------------------------------ evaluation

def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, dataset_or_loader: Dataset | DataLoader, *, batch_size: int = 256,
             device: str | torch.device | None = None) -> dict:
    """Top-1 accuracy and mean cross-entropy (no label smoothing) of `model` in eval mode.

    Under an initialized process group with a Dataset (not a loader), each rank evaluates a
    disjoint shard (rank::world) and the sums are all-reduced: every sample counts exactly once.

    Returns:
        {"acc": float in [0, 1], "loss": float, "n": int}
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    if isinstance(dataset_or_loader, DataLoader):
        loader = dataset_or_loader
    else:
        ds = dataset_or_loader
        rank, world, _ = dist_info()
        if dist.is_available() and dist.is_initialized() and world > 1:
            ds = torch.utils.data.Subset(ds, list(range(rank, len(ds), world)))
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = model.training
    model.eval()
    correct = loss_sum = 0.0
    n = 0
    try:
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            logits = model(x)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            correct += float((logits.argmax(dim=1) == y).sum())
            n += int(y.numel())
    finally:
        model.train(was_training)
    if not isinstance(dataset_or_loader, DataLoader):
        correct, loss_sum, n_f = _all_reduce_sums([correct, loss_sum, float(n)], dev)
        n = int(round(n_f))
    return {"acc": correct / n if n else 0.0, "loss": loss_sum / n if n else 0.0, "n": n}


# ------------------------------------------------------------------ schedule

def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up `(s+1)/warmup` for s < warmup, then cosine from 1 to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    rest = max(1, total - warmup)
    p = min(1.0, (step - warmup) / rest)
    return 0.5 * (1.0 + math.cos(math.pi * p))


class _WarmupCosine:
    """Picklable LR lambda (LambdaLR saves a callable object's __dict__ in its state dict)."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = total, warmup

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total, self.warmup)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weights with ndim ≥ 2; not norm affines, biases or layer scales (see module docstring)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _stderr_is_tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def _mean_lam(model: nn.Module) -> float | None:
    from updp.pruning.convert import pruned_blocks

    blocks = pruned_blocks(model)
    if not blocks:
        return None
    return float(sum(b.lam for _, b in blocks) / len(blocks))


def state_hash(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): compares weights across processes."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------ trainer

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
    """

    def __init__(self, model: nn.Module, data, cfg: TrainConfig, *, teacher: nn.Module | None = None,
                 before_step: Callable[[nn.Module, int, float], None] | None = None,
                 checkpoint_extra: Callable[[], dict] | None = None,
                 find_unused_parameters: bool = False) -> None:
        if cfg.kd_alpha > 0 and teacher is None:
            raise InputError("kd_alpha > 0 needs a teacher model")
        self.cfg = cfg
        self.data = data
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            fast_cpu_math()
        self.distributed = _init_distributed(self.device)
        self.rank, self.world, _ = dist_info()
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
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        lr_lambda = _WarmupCosine(self.total_steps, min(warmup, self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self.epoch = 0   # epochs finished
        self.step = 0    # optimizer steps done
        self.history: list[dict] = []
        self.ddp: nn.Module | None = None

    @staticmethod
    def count_steps(data, cfg: TrainConfig) -> int:
        """Total optimizer steps a `Trainer(…, data, cfg)` will run (for λ schedules built beforehand)."""
        _, world, _ = dist_info()
        per_rank = math.ceil(len(data.train) / world)
        n = per_rank // cfg.batch_size if per_rank > cfg.batch_size else math.ceil(per_rank / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            n = min(n, cfg.max_steps_per_epoch)
        return n * cfg.epochs

    # -------------------------------------------------------------- checkpoint

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def checkpoint_payload(self, metrics: dict) -> dict:
        """The checkpoint dict (all values weights_only-loadable).

        Keys: format, model (state dict of the unwrapped model), optimizer, scheduler, epoch (finished
        epochs), step, rng, config, model_spec, plan, metrics, history, world_size, then
        `checkpoint_extra()` (overriding defaults of the same name).
        """
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": rng_state(),
            "config": asdict(self.cfg),
            "model_spec": None,
            "plan": None,
            "metrics": metrics,
            "history": self.history,
            "world_size": self.world,
        }
        if self.checkpoint_extra is not None:
            payload.update(self.checkpoint_extra())
        return payload

    def save(self, metrics: dict) -> None:
        if not self.cfg.out or not self.is_main:
            return
        from updp._io import atomic_path

        payload = self.checkpoint_payload(metrics)
        with atomic_path(self.cfg.out) as tmp:
            torch.save(payload, tmp)
        logger.info("checkpoint %s (epoch %d, step %d)", self.cfg.out, self.epoch, self.step)

    def _try_resume(self) -> None:
        from updp.models import read_checkpoint

        path = self.cfg.out
        if not path:
            raise InputError("resume needs an output checkpoint path (--out)")
        if not os.path.exists(path):
            logger.warning("resume: %s does not exist yet; starting from scratch", path)
            return
        ck = read_checkpoint(path)
        if not isinstance(ck, dict) or "optimizer" not in ck or "epoch" not in ck:
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
        from updp.models import load_state

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
        from updp.data import _mix

        progress = self.epoch + (self.step - self.epoch * self.steps_per_epoch) / self.steps_per_epoch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.cfg.seed, 7, self.step))
            self.before_step(self.model, self.step, progress)

    def _train_epoch(self, epoch: int) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        if hasattr(self.data.train, "set_epoch"):
            self.data.train.set_epoch(epoch)
        _seed_everything(cfg.seed, epoch, self.rank)
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
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.step}: lower --lr")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                b = int(y.numel())
                loss_sum += float(loss.detach()) * b
                correct += float((logits.detach().argmax(1) == y).sum())
                n += b
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
        loss_sum, correct, n_f = _all_reduce_sums([loss_sum, correct, float(n)], self.device)
        return {"train_loss": loss_sum / max(n_f, 1), "train_acc": correct / max(n_f, 1),
                "train_seconds": time.perf_counter() - t0}

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

    def fit(self) -> TrainResult:
        """Train the remaining epochs (all, or those after the resumed checkpoint)."""
        t_start = time.perf_counter()
        cfg = self.cfg
        if cfg.resume:
            self._try_resume()
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids, find_unused_parameters=self.find_unused_parameters)
        last = self.history[-1] if self.history else None
        for epoch in range(self.epoch, cfg.epochs):
            t0 = time.perf_counter()
            tr = self._train_epoch(epoch)
            self.epoch = epoch + 1
            ev = evaluate(self.model, self.data.val, batch_size=max(256, cfg.batch_size), device=self.device)
            lam = _mean_lam(self.model)
            last = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                    "train_loss": tr["train_loss"], "train_acc": tr["train_acc"],
                    "val_loss": ev["loss"], "val_acc": ev["acc"], "val_n": ev["n"], "lam": lam,
                    "seconds": time.perf_counter() - t0, "train_seconds": tr["train_seconds"]}
            self.history.append(last)
            self.save(last)
            if self.is_main:
                if cfg.log_jsonl:
                    os.makedirs(os.path.dirname(os.path.abspath(cfg.log_jsonl)), exist_ok=True)
                    with open(cfg.log_jsonl, "a") as f:
                        f.write(json.dumps(last) + "\n")
                line = (f"epoch {self.epoch}/{cfg.epochs}: train loss {tr['train_loss']:.4f} acc "
                        f"{tr['train_acc']:.4f} | val loss {ev['loss']:.4f} acc {ev['acc']:.4f}"
                        + (f" | lambda {lam:.3f}" if lam is not None else "") + f" | {last['seconds']:.1f} s")
                # Bars only on a terminal (their carriage-return frames garble log files); a redirected
                # run with progress on gets one plain line per epoch instead.
                if cfg.progress and not _stderr_is_tty():
                    print(line, file=sys.stderr, flush=True)
                else:
                    logger.info(line)
        if last is None:  # nothing to do (already finished) and no history: evaluate once
            ev = evaluate(self.model, self.data.val, device=self.device)
            last = {"val_acc": ev["acc"], "val_loss": ev["loss"]}
        if self.distributed:
            self._check_ranks_agree()
        return TrainResult(val_acc=float(last["val_acc"]), val_loss=float(last["val_loss"]),
                           history=list(self.history), checkpoint=cfg.out if cfg.out else None,
                           seconds=time.perf_counter() - t_start)


# ------------------------------------------------------------------ checkpoints <-> models

def model_spec_dict(spec, input_chw) -> dict:
    """The `model_spec` entry of a checkpoint: enough to rebuild the model without arguments.

    Args:
        spec: the `updp.models.ModelSpec` the model was built with.
        input_chw: the (C, H, W) the model is trained at (not necessarily the model's default).
    """
    kwargs = {k: v for k, v in spec.kwargs.items() if k != "num_classes"}  # recorded on its own
    return {"model": spec.spec, "source": spec.source, "name": spec.name, "kwargs": kwargs,
            "num_classes": spec.num_classes, "input_size": [int(v) for v in input_chw]}


def build_for_data(model: str, data, *, input_size: tuple[int, int] | None = None,
                   model_kwargs: dict | None = None, seed: int = 0) -> tuple[nn.Module, dict]:
    """Create `model` for a dataset: `num_classes` from the data, input size from the data.

    The initial weights are drawn from `seed` (without touching the caller's RNG state), so two
    runs with the same seed start from the same weights: timm/torchvision initialize from the
    global torch RNG, which is otherwise seeded differently in every process.

    Returns:
        (module, model_spec dict).
    """
    from updp.models import check_input_size, create_model

    size = tuple(input_size) if input_size is not None else tuple(data.input_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module, spec = create_model(model, num_classes=data.num_classes, input_size=size,
                                    **dict(model_kwargs or {}))
    chw = (data.in_chans, int(size[0]), int(size[1]))
    check_input_size(module, spec, chw)
    return module, model_spec_dict(spec, chw)


def same_model_name(a: str, b: str) -> bool:
    """'convnext_atto' and 'timm:convnext_atto' name the same model."""
    from updp.models import parse_spec

    return parse_spec(a) == parse_spec(b)


@dataclass
class LoadedModel:
    """A model rebuilt from a updp checkpoint.

    Attributes:
        module: the model in eval mode, weights loaded, plan (pruning or dropping) applied.
        spec: the checkpoint's `model_spec` dict (or one made from the arguments for plain state dicts).
        plan: the `PrunePlan` it carried, or None.
        payload: the whole checkpoint object (as read with weights_only=True).
    """

    module: nn.Module
    spec: dict
    plan: Any
    payload: Any


def load_trained(path: str, *, model: str | None = None, input_size: tuple[int, int] | None = None,
                 model_kwargs: dict | None = None, num_classes: int | None = None) -> LoadedModel:
    """Rebuild a model from a checkpoint written by `updp train` / `updp prune` (or a plain state dict).

    A updp checkpoint carries `model_spec`, so no argument is needed; `model` (when given) must
    name the same architecture. A plain state dict needs `model` (and `num_classes`, input size,
    kwargs as at training time).

    Raises:
        InputError: unreadable file, another architecture, missing model name for a plain state dict.
    """
    from updp.models import create_model, load_state, normalize_input_size, read_checkpoint
    from updp.pruning.progressive import apply_plan

    payload = read_checkpoint(path)
    spec = payload.get("model_spec") if isinstance(payload, dict) else None
    if spec:
        if model is not None and not same_model_name(model, spec["model"]):
            raise InputError(f"checkpoint {path} holds a {spec['model']}, not {model}")
        if num_classes is not None and spec.get("num_classes") not in (None, num_classes):
            raise InputError(f"checkpoint {path} has {spec.get('num_classes')} classes, not {num_classes}")
        module, _ = create_model(spec["model"], num_classes=spec.get("num_classes"), **dict(spec.get("kwargs") or {}))
    else:
        if model is None:
            raise InputError(f"{path} carries no model_spec (not written by updp train/prune): give the model name")
        chw = normalize_input_size(input_size) if input_size is not None else None
        module, ms = create_model(model, num_classes=num_classes, input_size=chw, **dict(model_kwargs or {}))
        spec = model_spec_dict(ms, chw or ms.input_size)
    plan = None
    if isinstance(payload, dict) and payload.get("plan"):
        from updp.pruning.plan import PrunePlan

        plan = PrunePlan.from_dict(payload["plan"])
        apply_plan(module, plan)
    load_state(module, payload, path)
    return LoadedModel(module=module.eval(), spec=spec, plan=plan, payload=payload)


# ------------------------------------------------------------------ evaluate a file

def evaluate_onnx(path: str, dataset: Dataset, *, batch_size: int = 256, num_classes: int | None = None,
                  threads: int | None = None) -> dict:
    """Accuracy of an ONNX classifier with ONNX Runtime (CPU, all graph optimizations).

    The file takes the same normalized NCHW tensor the torch model does (the data pipeline of
    `updp.data` is applied before). A static batch axis of size B is served B images at a time,
    the last chunk zero-padded and its extra outputs discarded; a symbolic batch axis gets
    `batch_size` images per run.

    Returns:
        {"acc", "loss", "n", "provider", "batch"}

    Raises:
        InputError: unreadable file, an input size or class count that does not fit the data.
    """
    from updp.ort import load_onnx, make_session

    proto = load_onnx(path)
    sess = make_session(proto, opt_level="all", threads=threads)
    inp = sess.get_inputs()[0]
    shape = list(inp.shape)
    if len(shape) != 4:
        raise InputError(f"{path}: expected one NCHW image input, got input {inp.name} of shape {shape}")
    x0, _ = dataset[0]
    for axis, want in zip(shape[1:], x0.shape):
        if isinstance(axis, int) and axis != want:
            raise InputError(f"{path} takes inputs {shape[1:]}, the data is served at {list(x0.shape)} "
                             "(pass the matching --input-size)")
    out_shape = sess.get_outputs()[0].shape
    if num_classes is not None and isinstance(out_shape[-1], int) and out_shape[-1] != num_classes:
        raise InputError(f"{path} predicts {out_shape[-1]} classes, the data has {num_classes}")
    static = isinstance(shape[0], int)
    chunk = int(shape[0]) if static else batch_size
    loader = DataLoader(dataset, batch_size=chunk, shuffle=False, num_workers=0)
    correct = loss_sum = 0.0
    n = 0
    for x, y in loader:
        b = len(y)
        xn = x.numpy().astype(np.float32)
        if static and b < chunk:
            xn = np.concatenate([xn, np.zeros((chunk - b, *xn.shape[1:]), np.float32)])
        logits = torch.from_numpy(np.asarray(sess.run(None, {inp.name: xn})[0])[:b]).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        n += b
    return {"acc": correct / n if n else 0.0, "loss": loss_sum / n if n else 0.0, "n": n,
            "provider": sess.get_providers()[0], "batch": chunk if static else f"dynamic ({chunk} per run)"}


def evaluate_file(path: str, data_spec: str, *, split: str = "val", batch_size: int = 256,
                  input_size: tuple[int, int] | None = None, split_seed: int = 0, model: str | None = None) -> dict:
    """`updp eval`: accuracy of an ONNX file (ONNX Runtime) or a checkpoint (torch) on a data split.

    The input size comes from the checkpoint's `model_spec`, or the ONNX input shape (or its
    `updp.input_shape` metadata), unless `input_size` is given.

    Returns:
        {"file", "kind", "data", "split", "acc", "loss", "n", ...}; for ONNX also "provider".
    """
    from updp.data import get_datasets

    fast_cpu_math()
    if split not in ("val", "holdout", "train"):
        raise InputError(f"--split must be val, holdout or train, got {split!r}")
    t0 = time.perf_counter()
    if str(path).endswith(".onnx"):
        from updp.ort import load_onnx

        proto = load_onnx(path)
        size = input_size
        if size is None:
            dims = [d.dim_value if d.HasField("dim_value") else None
                    for d in proto.graph.input[0].type.tensor_type.shape.dim]
            if len(dims) == 4 and dims[2] and dims[3]:
                size = (dims[2], dims[3])
            else:
                meta = {p.key: p.value for p in proto.metadata_props}
                if "updp.input_shape" in meta:
                    size = tuple(json.loads(meta["updp.input_shape"])[-2:])
        if size is None:
            raise InputError(f"{path}: cannot tell the input size (symbolic H/W): pass --input-size")
        data = get_datasets(data_spec, size, split_seed=split_seed)
        res = evaluate_onnx(path, getattr(data, split), batch_size=batch_size, num_classes=data.num_classes)
        kind = "onnx"
    else:
        from updp.models import read_checkpoint

        payload = read_checkpoint(path)
        spec = payload.get("model_spec") if isinstance(payload, dict) else None
        del payload
        size = input_size or (tuple(spec["input_size"][1:]) if spec else (32, 32))
        data = get_datasets(data_spec, size, split_seed=split_seed)
        # A plain state dict (no model_spec) takes its class count from the data.
        loaded = load_trained(path, model=model, input_size=size, num_classes=None if spec else data.num_classes)
        n_cls = loaded.spec.get("num_classes")
        if n_cls is not None and n_cls != data.num_classes:
            raise InputError(f"{path} has {n_cls} classes, the data ({data_spec}) has {data.num_classes}")
        res = evaluate(loaded.module, getattr(data, split), batch_size=batch_size)
        res["provider"] = "torch (cpu)"
        kind = "checkpoint"
        if loaded.plan is not None:
            res["pruned_blocks"] = list(loaded.plan.blocks)
    return {"file": str(path), "kind": kind, "data": data_spec, "split": split, "input_size": list(size),
            **res, "seconds": time.perf_counter() - t0}
