"""Models that are not in Tempo's zoo, for `tempo train --model FILE.onnx`,
and the export that Tempo reads (torch.onnx.export in training mode, no
constant folding, opset 13)."""
import copy

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """A residual block with BatchNorm and exact GELU; a strided 1×1
    projection when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.gelu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.gelu(y + self.short(x))


class OddResNet(nn.Module):
    """Odd widths (7, 13), a strided convolution, residual blocks with
    BatchNorm, average pooling and a Linear head: none of it in the zoo. GELU
    (exported as Div, Erf, Add and Mul) rather than ReLU: a smooth network,
    so that two correct float32 programs stay within round-off of each other
    over 20 steps. With ReLU, a pre-activation within rounding of zero is
    decided differently by PyTorch's float32 and float64 runs in most seeds,
    and they then differ by 2e-2 to 8e-2 of a BatchNorm bias after 20 steps."""

    def __init__(self, in_shape=(1, 28, 28), classes=10):
        super().__init__()
        c, h, w = in_shape
        self.stem = nn.Conv2d(c, 7, 3, padding=1)
        self.bn = nn.BatchNorm2d(7)
        self.b1 = Block(7, 7, 1)
        self.b2 = Block(7, 13, 2)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(13 * (h // 4) * (w // 4), classes)

    def forward(self, x):
        x = F.gelu(self.bn(self.stem(x)))
        x = self.pool(self.b2(self.b1(x)))
        return self.head(torch.flatten(x, 1))


MODELS = {"odd_resnet": OddResNet}
INPUT_SHAPES = {"odd_resnet": (1, 28, 28)}


def build(name):
    return MODELS[name]()


def export(model, shape, path, opset=13):
    """Writes `model` as Tempo reads it, its initializers the model's state.
    Tracing in training mode runs a forward pass, which moves BatchNorm's
    running statistics: a copy is traced, and the model's own values are
    written back into the file (python3-onnx)."""
    import onnx
    from onnx import numpy_helper
    m = copy.deepcopy(model)
    m.train()
    torch.onnx.export(m, torch.zeros((2,) + tuple(shape)), path, training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False, opset_version=opset, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    state = model.state_dict()
    g = onnx.load(path)
    for i, t in enumerate(g.graph.initializer):
        if t.name in state:
            g.graph.initializer[i].CopyFrom(numpy_helper.from_array(state[t.name].detach().numpy(), t.name))
    onnx.save(g, path)


if __name__ == "__main__":  # onnx_models.py NAME OUT.onnx: export NAME (seed 0)
    import sys
    torch.manual_seed(0)
    export(build(sys.argv[1]), INPUT_SHAPES[sys.argv[1]], sys.argv[2])
