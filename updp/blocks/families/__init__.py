"""Built-in block families. Importing this package registers their handlers.

| family             | timm                                         | torchvision                  |
|--------------------|----------------------------------------------|------------------------------|
| convnext           | convnext.ConvNeXtBlock (Linear and conv MLP) | convnext.CNBlock             |
| vit                | vision_transformer.Block                     | vision_transformer.EncoderBlock |
| inverted_residual  | InvertedResidual, DepthwiseSeparableConv     | mobilenetv2.InvertedResidual |
| resnet             | resnet.BasicBlock, resnet.Bottleneck         | resnet.BasicBlock, resnet.Bottleneck |
"""

from updp.blocks.families import convnext, inverted_residual, resnet, vit  # noqa: F401  (registers)
