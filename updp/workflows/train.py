"""`updp train`: a baseline trained here on a local dataset, a fine-tuned checkpoint of yours, or
(with `epochs = 0`) your checkpoint taken as it is and written in updp's format.

No hub weights can be downloaded on this project's machines: a model starts from random weights
(seeded), or from the user's checkpoint. The class count and the input size come from the data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn

from updp.accuracy import module_accuracy
from updp.core.errors import InputError
from updp.core.io import check_outputs
from updp.data import DataBundle, class_mismatch, get_datasets, refuse_outputs_in_data
from updp.models.checkpoint import load_state, read_checkpoint, write_checkpoint
from updp.models.zoo import create_for_data, same_model
from updp.training.device import fast_cpu_math
from updp.training.trainer import Trainer, TrainerConfig, TrainResult, format_history
from updp.workflows.config import TrainConfig, pick
from updp.workflows.resolve import refuse_other_classes

logger = logging.getLogger(__name__)


@dataclass
class BaselineResult:
    """What `updp train` produced.

    Attributes:
        checkpoint: the checkpoint written.
        val_acc, val_loss: final validation metrics (torch).
        history: one record per epoch.
        seconds: training wall time.
        model_spec: the spec record in the checkpoint.
        data: the dataset's description.
        source: where the weights came from.
    """

    checkpoint: str
    val_acc: float
    val_loss: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    model_spec: dict = field(default_factory=dict)
    data: str = ""
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def format_summary(self) -> str:
        lines = [f"wrote {self.checkpoint}",
                 f"  {self.model_spec['model']} {tuple(self.model_spec['input_size'])}, {self.data} ({self.source})",
                 *format_history(self.history), f"  val acc {self.val_acc:.4f} in {self.seconds:.1f} s"]
        return "\n".join(lines)


def _load_initial_weights(module: nn.Module, cfg: TrainConfig, spec: dict, chw: tuple[int, ...],
                          data: DataBundle) -> None:
    """Your checkpoint into the freshly built model: any layout; a updp checkpoint must be of the
    same model, unpruned, at the same input size. One trained on other classes (as many) is refused
    when it is taken as it is (`--epochs 0`: its accuracy would be of the wrong labels), and only
    warned about when it is fine-tuned, which may be what a user wants (a transfer to new classes)."""
    ck = read_checkpoint(cfg.checkpoint)
    if ck.plan is not None:
        raise InputError(f"checkpoint {cfg.checkpoint} is already pruned: give the unpruned baseline")
    if ck.model_spec is not None:
        theirs = ck.model_spec  # checked and canonical (read_checkpoint)
        if not same_model(theirs["model"], spec["model"]):
            raise InputError(f"checkpoint {cfg.checkpoint} holds a {theirs['model']}, not {spec['model']}")
        if list(theirs["input_size"]) != list(chw):
            raise InputError(f"checkpoint {cfg.checkpoint} was trained at {theirs['input_size'][1:]}, this run "
                             f"trains at {list(chw[1:])} (--input-size)")
        trained_on = theirs.get("class_names") or ()
        if cfg.epochs == 0:
            refuse_other_classes(f"checkpoint {cfg.checkpoint}", trained_on, data)
        elif why := class_mismatch(trained_on, data):
            logger.warning("checkpoint %s: %s; it is fine-tuned on the data's classes", cfg.checkpoint, why)
    load_state(module, ck.state_dict, cfg.checkpoint)


def trainer_config(cfg: TrainConfig, **override) -> TrainerConfig:
    """The training loop's settings from the workflow's (every field they share)."""
    return TrainerConfig(**pick(cfg, TrainerConfig, **override))


@fast_cpu_math()
def _take_as_is(module: nn.Module, data: DataBundle, cfg: TrainConfig, spec: dict) -> TrainResult:
    ev = module_accuracy(module.eval(), data.val, batch_size=256)
    write_checkpoint(cfg.out, module.state_dict(), model_spec=spec, data=data.description,
                     metrics={"val_acc": ev["acc"], "val_loss": ev["loss"]})
    return TrainResult(val_acc=ev["acc"], val_loss=ev["loss"], history=[], checkpoint=cfg.out, seconds=0.0)


def train(cfg: TrainConfig, *, echo: Callable[[str], None] | None = None) -> BaselineResult:
    """Train (or fine-tune, or take as is) a baseline; the checkpoint at `cfg.out` records its model.

    Raises:
        InputError: unknown model or dataset, a checkpoint that does not fit, bad settings, an output
            that cannot be written (checked before any training).
    """
    check_outputs([cfg.out], [cfg.checkpoint])
    refuse_outputs_in_data([cfg.out], cfg.data)
    data = get_datasets(cfg.data, cfg.input_size, split_seed=cfg.split_seed)
    chw = (data.in_chans, *cfg.input_size)
    module, spec = create_for_data(cfg.model, num_classes=data.num_classes, input_chw=chw,
                                   model_kwargs=cfg.model_kwargs, seed=cfg.seed)
    if data.classes:
        spec = {**spec, "class_names": list(data.classes)}
    source = "trained from random weights"
    if cfg.checkpoint:
        _load_initial_weights(module, cfg, spec, chw, data)
        source = f"checkpoint {cfg.checkpoint}" + (f", fine-tuned {cfg.epochs} epochs" if cfg.epochs else ", as given")
    if cfg.epochs == 0:
        res = _take_as_is(module, data, cfg, spec)
    else:
        trainer = Trainer(module, data, trainer_config(cfg), echo=echo,
                          checkpoint_extra=lambda: {"model_spec": spec, "data": data.description})
        res = trainer.fit()
    return BaselineResult(checkpoint=cfg.out, val_acc=res.val_acc, val_loss=res.val_loss, history=res.history,
                          seconds=res.seconds, model_spec=spec, data=data.description, source=source)


__all__ = ["BaselineResult", "train", "trainer_config"]
