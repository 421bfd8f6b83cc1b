"""Models: the zoo (timm and torchvision by name, random weights) and the one checkpoint schema.

    module, spec = create_model("timm:convnext_atto", num_classes=10, input_size=32)
    ck = read_checkpoint("base.pt")            # any layout: updp, plain state dict, safetensors, ...
    load_state(module, ck.state_dict, ck.path)
"""

from updp.models.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    load_state,
    load_weights,
    read_checkpoint,
    write_checkpoint,
)
from updp.models.zoo import (
    ModelSpec,
    check_input_size,
    create_for_data,
    create_from_record,
    create_model,
    normalize_input_size,
    normalize_record,
    parse_spec,
    same_model,
    spec_record,
)

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "ModelSpec", "check_input_size", "create_for_data",
           "create_from_record", "create_model", "load_state", "load_weights", "normalize_input_size",
           "normalize_record", "parse_spec", "read_checkpoint", "same_model", "spec_record", "write_checkpoint"]
