#!/usr/bin/python3
"""PyTorch 1.13 reference values for Tempo's parity tests.

    /usr/bin/python3 tests/ref/make_references.py OUT_DIR [--force]
        Writes into OUT_DIR (fixed torch seeds; skipped when OUT_DIR/STAMP shows
        that this script, tests/py/*.py and the torch version are unchanged,
        unless --force):
          layers.safetensors      '<layer>/<case>/<field>': per-layer cases
                                  (conv, linear, maxpool, avgpool, adaptive,
                                  bn, relu, flatten, xent, block = torchvision
                                  BasicBlock/Bottleneck, layernorm, gelu,
                                  attention, encoder = the pre-norm
                                  nn.TransformerEncoderLayer, vit = a small
                                  tempo_models.ViT) with inputs,
                                  parameters, dy and the expected y, dx and
                                  parameter gradients; 'cfg' (I64) holds a
                                  case's configuration. 'optim/<case>/...':
                                  optimizer steps on given gradients, 'hyper'
                                  = (lr, momentum, weight_decay) as the bit
                                  patterns of float64s.
          state_<model>.txt       state_dict of each model, one line per tensor:
                                  "name dtype shape mean std min max" (shape
                                  comma-separated, "-" for a scalar; statistics
                                  of torch's own initialisation)
          run_<run>_init.safetensors, run_<run>_data.safetensors (tensors: data
          file; batches in file order), run_<run>_final.safetensors,
          run_<run>.args (the tempo train flags of the run),
          run_<run>_losses.txt (torch's loss at each step),
          run_<run>_spread.txt    per-tensor difference between this
                                  float32 run and another correct execution of
                                  it (see train_run)
        About 100 MB, 90 of them resnet18's init and final state (45 MB each).
        Runs: cnn_sgd (20 steps, batch 32, SGD lr 0.01 momentum 0.9 wd 5e-4),
        resnet18_sgd (5 steps, batch 16, SGD lr 0.01 momentum 0.9 wd 5e-4),
        mlp_adam and mlp_adamw (10 steps, batch 32), vit_sgd (20 steps, batch 16,
        SGD lr 0.01 momentum 0.9 wd 5e-4) and vit_adamw (AdamW lr 1e-3 wd 0.05),
        both on the first 320 Fashion-MNIST training images.

    /usr/bin/python3 tests/ref/make_references.py logits MODEL WEIGHTS INPUT OUTPUT
        Loads WEIGHTS (safetensors) into the PyTorch MODEL with
        load_state_dict(strict=True), runs it in eval mode on tensor 'x' of
        INPUT and writes tensor 'logits' to OUTPUT (used by models_test).

Layer references are computed in float64 from float32 inputs and parameters
(then rounded to float32), so they carry no float32 rounding of their own;
training runs are computed in float32, as Tempo trains.
"""

import hashlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "py"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import safetensors_io  # noqa: E402
import onnx_models  # noqa: E402
import tempo_models  # noqa: E402

torch.set_num_threads(1)  # reproducible float32 sums, whatever the machine


# ---- layers ---------------------------------------------------------------------------------


class Cases:
    """Collects the tensors of layers.safetensors: '<layer>/<case>/<field>'."""

    def __init__(self):
        self.tensors = {}

    def put(self, layer, case, field, value):
        key = f"{layer}/{case}/{field}"
        assert key not in self.tensors, key
        if isinstance(value, (list, tuple)):
            value = np.asarray(value, dtype=np.int64)
        elif hasattr(value, "detach"):
            value = value.detach()
            value = value.to(torch.int64) if not value.is_floating_point() else value.to(torch.float32)
        self.tensors[key] = value


def f32(*shape, scale=1.0):
    """float32 random values, returned as float64 (exactly representable)."""
    return (torch.randn(*shape, dtype=torch.float32) * scale).double()


def grad_of(t):
    return t.grad if t.grad is not None else torch.zeros_like(t)


def conv_cases(out):
    # cin, cout, k, stride, padding, bias, N, H, W
    cases = [
        (3, 5, 3, 1, 1, 1, 2, 7, 9),
        (3, 5, 3, 2, 1, 0, 2, 7, 9),
        (3, 5, 5, 1, 2, 1, 2, 7, 9),
        (3, 5, 5, 2, 0, 0, 2, 9, 7),
        (4, 6, 1, 1, 0, 1, 3, 6, 5),
        (4, 6, 1, 2, 0, 0, 2, 6, 5),
        (3, 5, 3, 2, 2, 1, 2, 8, 11),
        (2, 3, 3, 1, 0, 1, 2, 3, 3),
        (1, 4, 3, 1, 1, 1, 3, 5, 5),
        (16, 32, 3, 1, 1, 1, 2, 10, 10),
        (5, 7, 5, 1, 1, 0, 1, 6, 9),
    ]
    for cin, cout, k, s, p, b, n, h, w in cases:
        name = f"c{cin}o{cout}_k{k}s{s}p{p}_b{b}_n{n}_{h}x{w}"
        x = f32(n, cin, h, w).requires_grad_()
        bound = 1.0 / (cin * k * k) ** 0.5
        weight = (torch.rand(cout, cin, k, k) * 2 - 1).mul(bound).double().requires_grad_()
        bias = (torch.rand(cout) * 2 - 1).mul(bound).double().requires_grad_() if b else None
        y = F.conv2d(x, weight, bias, stride=s, padding=p)
        dy = f32(*y.shape)
        y.backward(dy)
        out.put("conv", name, "cfg", [cin, cout, k, s, p, b])
        for field, v in (("x", x), ("weight", weight), ("dy", dy), ("y", y), ("dx", x.grad),
                         ("dweight", weight.grad)):
            out.put("conv", name, field, v)
        if b:
            out.put("conv", name, "bias", bias)
            out.put("conv", name, "dbias", bias.grad)


def linear_cases(out):
    # in, out, bias, N
    for fin, fout, b, n in [(7, 5, 1, 3), (13, 1, 0, 4), (1, 9, 1, 2), (300, 17, 1, 5),
                            (33, 33, 0, 1), (784, 10, 1, 6)]:
        name = f"i{fin}o{fout}_b{b}_n{n}"
        x = f32(n, fin).requires_grad_()
        bound = 1.0 / fin ** 0.5
        weight = (torch.rand(fout, fin) * 2 - 1).mul(bound).double().requires_grad_()
        bias = (torch.rand(fout) * 2 - 1).mul(bound).double().requires_grad_() if b else None
        y = F.linear(x, weight, bias)
        dy = f32(*y.shape)
        y.backward(dy)
        out.put("linear", name, "cfg", [fin, fout, b])
        for field, v in (("x", x), ("weight", weight), ("dy", dy), ("y", y), ("dx", x.grad),
                         ("dweight", weight.grad)):
            out.put("linear", name, field, v)
        if b:
            out.put("linear", name, "bias", bias)
            out.put("linear", name, "dbias", bias.grad)


def pool_cases(out):
    # kernel, stride, padding, N, C, H, W
    pools = [
        (2, 2, 0, 2, 3, 7, 9),
        (3, 2, 1, 2, 3, 8, 7),
        (3, 1, 1, 1, 2, 5, 6),
        (2, 1, 0, 2, 2, 4, 5),
        (3, 3, 0, 1, 3, 9, 9),
        (3, 2, 0, 2, 2, 7, 9),
        (4, 3, 2, 1, 2, 10, 8),
        (2, 2, 1, 2, 3, 6, 7),
    ]
    for layer, fn in (("maxpool", F.max_pool2d), ("avgpool", F.avg_pool2d)):
        for k, s, p, n, c, h, w in pools:
            name = f"k{k}s{s}p{p}_n{n}c{c}_{h}x{w}"
            x = f32(n, c, h, w).requires_grad_()
            if layer == "maxpool":
                y = fn(x, k, s, p)
            else:
                y = fn(x, k, s, p, ceil_mode=False, count_include_pad=True)
            dy = f32(*y.shape)
            y.backward(dy)
            out.put(layer, name, "cfg", [k, s, p])
            for field, v in (("x", x), ("dy", dy), ("y", y), ("dx", x.grad)):
                out.put(layer, name, field, v)
    # output size, input N, C, H, W
    for (oh, ow), (n, c, h, w) in [((1, 1), (2, 3, 7, 9)), ((3, 2), (2, 3, 5, 7)),
                                   ((2, 3), (1, 2, 7, 5)), ((4, 4), (1, 2, 4, 4)),
                                   ((5, 3), (1, 2, 3, 4)), ((1, 1), (3, 8, 4, 4))]:
        name = f"o{oh}x{ow}_n{n}c{c}_{h}x{w}"
        x = f32(n, c, h, w).requires_grad_()
        y = F.adaptive_avg_pool2d(x, (oh, ow))
        dy = f32(*y.shape)
        y.backward(dy)
        out.put("adaptive", name, "cfg", [oh, ow])
        for field, v in (("x", x), ("dy", dy), ("y", y), ("dx", x.grad)):
            out.put("adaptive", name, field, v)


def batchnorm_cases(out):
    # C, N, H, W
    for c, n, h, w in [(5, 3, 7, 9), (3, 8, 1, 1), (4, 2, 5, 3), (16, 4, 6, 6)]:
        name = f"train_c{c}_n{n}_{h}x{w}"
        bn = nn.BatchNorm2d(c).double().train()
        with torch.no_grad():
            bn.weight.copy_(f32(c))
            bn.bias.copy_(f32(c))
            bn.running_mean.copy_(f32(c, scale=0.1))
            bn.running_var.copy_((torch.rand(c) + 0.5).double())
        out.put("bn", name, "cfg", [c, 1])
        out.put("bn", name, "weight", bn.weight)
        out.put("bn", name, "bias", bn.bias)
        out.put("bn", name, "running_mean0", bn.running_mean)
        out.put("bn", name, "running_var0", bn.running_var)
        # Two training forwards (the running statistics move twice); backward
        # of the second.
        x1 = f32(n, c, h, w, scale=2.0) + 0.5
        y1 = bn(x1)
        x2 = (f32(n, c, h, w, scale=1.5) - 0.25).requires_grad_()
        y2 = bn(x2)
        dy = f32(*y2.shape)
        y2.backward(dy)
        for field, v in (("x1", x1), ("y1", y1), ("x", x2), ("y", y2), ("dy", dy), ("dx", x2.grad),
                         ("dweight", bn.weight.grad), ("dbias", bn.bias.grad),
                         ("running_mean", bn.running_mean), ("running_var", bn.running_var),
                         ("num_batches_tracked", bn.num_batches_tracked.reshape(1))):
            out.put("bn", name, field, v)
    for c, n, h, w in [(5, 3, 7, 9), (6, 1, 1, 1)]:
        name = f"eval_c{c}_n{n}_{h}x{w}"
        bn = nn.BatchNorm2d(c).double().eval()
        with torch.no_grad():
            bn.weight.copy_(f32(c))
            bn.bias.copy_(f32(c))
            bn.running_mean.copy_(f32(c, scale=0.5))
            bn.running_var.copy_((torch.rand(c) * 2 + 0.1).double())
        out.put("bn", name, "cfg", [c, 0])
        out.put("bn", name, "weight", bn.weight)
        out.put("bn", name, "bias", bn.bias)
        out.put("bn", name, "running_mean0", bn.running_mean)
        out.put("bn", name, "running_var0", bn.running_var)
        x = f32(n, c, h, w).requires_grad_()
        y = bn(x)
        dy = f32(*y.shape)
        y.backward(dy)
        for field, v in (("x", x), ("y", y), ("dy", dy), ("dx", x.grad), ("dweight", bn.weight.grad),
                         ("dbias", bn.bias.grad), ("running_mean", bn.running_mean),
                         ("running_var", bn.running_var),
                         ("num_batches_tracked", bn.num_batches_tracked.reshape(1))):
            out.put("bn", name, field, v)


def simple_cases(out):
    for shape in [(3, 4, 5, 6), (7, 13), (2, 1, 1, 1)]:
        name = "x".join(map(str, shape))
        x = f32(*shape).requires_grad_()
        y = F.relu(x)
        dy = f32(*shape)
        y.backward(dy)
        for field, v in (("x", x), ("dy", dy), ("y", y), ("dx", x.grad)):
            out.put("relu", name, field, v)
    for shape in [(3, 4, 5, 6), (2, 1, 28, 28), (5, 7)]:
        name = "x".join(map(str, shape))
        x = f32(*shape).requires_grad_()
        y = nn.Flatten()(x)
        dy = f32(*y.shape)
        y.backward(dy)
        for field, v in (("x", x), ("dy", dy), ("y", y), ("dx", x.grad)):
            out.put("flatten", name, field, v)
    # N, C, logit scale
    for n, c, scale in [(8, 10, 1.0), (5, 3, 2.0), (1, 10, 1.0), (16, 10, 30.0), (32, 10, 0.01)]:
        name = f"n{n}c{c}_s{scale:g}"
        logits = f32(n, c, scale=scale).requires_grad_()
        labels = torch.randint(0, c, (n,))
        loss = F.cross_entropy(logits, labels)  # reduction='mean'
        loss.backward()
        out.put("xent", name, "logits", logits)
        out.put("xent", name, "labels", labels)
        out.put("xent", name, "loss", loss.reshape(1))
        out.put("xent", name, "dlogits", logits.grad)


def block_cases(out):
    """torchvision's BasicBlock / Bottleneck in training mode (residual add,
    downsample, BatchNorm statistics): composition of the layers above."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    # type (0 basic, 1 bottleneck), inplanes, planes, stride, N, H, W
    for typ, inplanes, planes, stride, n, h, w in [(0, 4, 4, 1, 2, 6, 5), (0, 3, 6, 2, 2, 7, 9),
                                                   (1, 8, 2, 1, 2, 5, 6), (1, 4, 3, 2, 2, 7, 7)]:
        ctor = BasicBlock if typ == 0 else Bottleneck
        outplanes = planes * ctor.expansion
        downsample = None
        if stride != 1 or inplanes != outplanes:
            downsample = nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(outplanes))
        block = ctor(inplanes, planes, stride, downsample).double().train()
        with torch.no_grad():
            for key, t in block.state_dict().items():
                if key.endswith("num_batches_tracked"):
                    t.fill_(3)
                elif key.endswith("running_var"):
                    t.copy_((torch.rand(t.shape) + 0.5).double())
                elif key.endswith("bn1.weight") or key.endswith("bn2.weight") or \
                        key.endswith("bn3.weight") or key.endswith("downsample.1.weight"):
                    t.copy_(1.0 + 0.2 * f32(*t.shape))
                elif t.dim() == 4:
                    t.copy_(f32(*t.shape, scale=(2.0 / t[0].numel()) ** 0.5))
                else:
                    t.copy_(f32(*t.shape, scale=0.1))
        name = f"{'basic' if typ == 0 else 'bottleneck'}_i{inplanes}p{planes}s{stride}_n{n}_{h}x{w}"
        out.put("block", name, "cfg", [typ, inplanes, planes, stride])
        for key, t in block.state_dict().items():
            out.put("block", name, "p/" + key, t.clone().reshape(t.shape or (1,)))
        x = f32(n, inplanes, h, w).requires_grad_()
        y = block(x)
        dy = f32(*y.shape)
        y.backward(dy)
        for field, v in (("x", x), ("dy", dy), ("y", y), ("dx", x.grad)):
            out.put("block", name, field, v)
        for key, prm in block.named_parameters():
            out.put("block", name, "g/" + key, prm.grad)
        for key, t in block.named_buffers():
            out.put("block", name, "s/" + key, t.reshape(t.shape or (1,)))


def module_case(out, layer, name, module, x, cfg, input_grad=True):
    """A module in float64 and training mode, on float32-representable
    parameters: its parameters ('p/<key>'), x, dy, y, dx and the parameter
    gradients ('g/<key>'). Norm weights near 1, other parameters at the
    scale of their default initialisation, biases non-zero."""
    module = module.double().train()
    with torch.no_grad():
        for key, t in module.named_parameters():
            if "norm" in key and key.endswith("weight"):
                t.copy_(1.0 + 0.2 * f32(*t.shape))
            elif t.dim() >= 2 and not key.endswith(("cls_token", "pos_embed")):
                t.copy_(f32(*t.shape, scale=(1.0 / t[0].numel()) ** 0.5))
            else:
                t.copy_(f32(*t.shape, scale=0.1))
    out.put(layer, name, "cfg", cfg)
    for key, t in module.named_parameters():
        out.put(layer, name, "p/" + key, t.clone())
    if input_grad:
        x.requires_grad_()
    y = module(x)
    dy = f32(*y.shape)
    y.backward(dy)
    for field, v in (("x", x), ("dy", dy), ("y", y)):
        out.put(layer, name, field, v)
    if input_grad:
        out.put(layer, name, "dx", x.grad)
    for key, t in module.named_parameters():
        out.put(layer, name, "g/" + key, grad_of(t))


class SelfAttention(nn.Module):
    """nn.MultiheadAttention as nn.TransformerEncoderLayer calls it."""

    def __init__(self, dim, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def transformer_cases(out):
    """LayerNorm, exact GELU, self-attention, the pre-norm encoder layer and
    a small `vit` (the classes of tests/py/tempo_models.py), at odd sizes."""
    for shape in [(3, 7), (2, 5, 12), (1, 4, 33), (4, 2)]:
        d = shape[-1]
        name = "x".join(map(str, shape))
        module_case(out, "layernorm", name, nn.LayerNorm(d), f32(*shape), [d])
    for shape, scale in [((3, 4, 5), 3.0), ((7, 13), 1.0), ((2, 1), 8.0)]:
        name = "x".join(map(str, shape))
        x = f32(*shape, scale=scale).requires_grad_()
        y = F.gelu(x)
        dy = f32(*shape)
        y.backward(dy)
        for field, v in (("x", x), ("dy", dy), ("y", y), ("dx", x.grad)):
            out.put("gelu", name, field, v)
    # batch, tokens, dim, heads
    for b, t, d, h in [(2, 5, 12, 3), (3, 4, 10, 2), (1, 7, 6, 1), (2, 3, 9, 3)]:
        name = f"b{b}t{t}d{d}h{h}"
        module_case(out, "attention", name, SelfAttention(d, h), f32(b, t, d), [d, h])
    # batch, tokens, dim, heads, feed-forward width
    for b, t, d, h, ff in [(2, 5, 12, 3, 20), (1, 6, 10, 2, 7)]:
        name = f"b{b}t{t}d{d}h{h}f{ff}"
        layer = nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        module_case(out, "encoder", name, layer, f32(b, t, d), [d, h, ff])
    # C, H, W, patch, dim, depth, heads, mlp, classes; batch
    for c, hh, ww, patch, d, depth, heads, mlp, classes, b in [(2, 6, 8, 2, 12, 2, 3, 20, 5, 3),
                                                               (1, 5, 5, 5, 6, 1, 2, 9, 3, 2)]:
        name = f"c{c}_{hh}x{ww}_p{patch}d{d}l{depth}h{heads}m{mlp}k{classes}_b{b}"
        vit = tempo_models.ViT((c, hh, ww), patch, d, depth, heads, mlp, classes)
        module_case(out, "vit", name, vit, f32(b, c, hh, ww),
                    [c, hh, ww, patch, d, depth, heads, mlp, classes], input_grad=False)


def make_layers(path):
    torch.manual_seed(1234)
    out = Cases()
    conv_cases(out)
    linear_cases(out)
    pool_cases(out)
    batchnorm_cases(out)
    simple_cases(out)
    block_cases(out)
    optimizer_cases(out)
    transformer_cases(out)
    safetensors_io.save(path, out.tensors)


# ---- state_dict lists -----------------------------------------------------------------------


def make_state_lists(directory):
    for i, name in enumerate(["mlp", "cnn", "resnet18", "resnet50", "vgg16", "vit"]):
        torch.manual_seed(100 + i)
        model = tempo_models.build(name)
        lines = []
        for key, t in model.state_dict().items():
            dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
            shape = ",".join(str(d) for d in t.shape) or "-"
            v = t.double()
            std = v.std().item() if v.numel() > 1 else 0.0
            lines.append(f"{key} {dtype} {shape} {v.mean().item():.9g} {std:.9g} "
                         f"{v.min().item():.9g} {v.max().item():.9g}")
        with open(os.path.join(directory, f"state_{name}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


# ---- training runs --------------------------------------------------------------------------


def synthetic(n, shape, generator, unit_range):
    """Class-dependent means plus noise (learnable, like `synthetic`)."""
    labels = torch.randint(0, 10, (n,), generator=generator)
    means = torch.rand((10,) + shape, generator=generator)
    noise = torch.rand((n,) + shape, generator=generator) if unit_range else \
        torch.randn((n,) + shape, generator=generator)
    if unit_range:  # pixel-like values in [0, 1]
        images = 0.6 * means[labels] + 0.4 * noise
    else:           # normalised-like values
        images = 2.0 * (means[labels] - 0.5) + noise
    return images.float().contiguous(), labels.long()


def fashion_mnist(n):
    """The first n training samples of Debian's Fashion-MNIST, x / 255 as
    Tempo and torchvision's ToTensor read them."""
    import gzip
    root = "/usr/share/datasets/fashion-mnist"
    with gzip.open(os.path.join(root, "train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[:n * 784]
    with gzip.open(os.path.join(root, "train-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    x = torch.from_numpy(images.astype(np.float32).reshape(n, 1, 28, 28)) / 255.0
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def run_steps(model, optimizer, lr, momentum, weight_decay, images, labels, batch, steps):
    params = model.parameters()
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for s in range(steps):
        x = images[s * batch:(s + 1) * batch]
        y = labels[s * batch:(s + 1) * batch]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def train_run(directory, run, model_name, optimizer, lr, momentum, weight_decay, batch, steps,
              seed, variant, data="synthetic", export_onnx=False):
    """One training run in float32 (the reference). With a `variant`, also one
    other correct execution of the same run ("float64", or "no-mkldnn": float32
    with PyTorch's native instead of oneDNN convolutions); their per-tensor
    difference, relative to max|w|, goes to run_<run>_spread.txt: how far two
    correct implementations drift apart through rounding alone (a ReLU kink or
    max-pool choice decided differently, Adam's division by sqrt(v) + eps for
    gradients near eps, then growth over the steps). With export_onnx (always
    for a model of onnx_models), also run_<run>.onnx: the model as
    torch.onnx.export writes it, before training; the args of a model of
    onnx_models name that file as --model {REF}/run_<run>.onnx ({REF}: the
    references' directory)."""
    export_onnx = export_onnx or model_name in onnx_models.MODELS
    torch.manual_seed(seed)
    onnx_model = model_name in onnx_models.MODELS
    model = onnx_models.build(model_name) if onnx_model else tempo_models.build(model_name)
    shape = (onnx_models.INPUT_SHAPES if onnx_model else tempo_models.INPUT_SHAPES)[model_name]
    g = torch.Generator().manual_seed(seed + 1)
    if data == "fashion-mnist":
        images, labels = fashion_mnist(batch * steps)
    else:
        images, labels = synthetic(batch * steps, shape, g, unit_range=shape[0] == 1)
    prefix = os.path.join(directory, f"run_{run}")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    safetensors_io.save(prefix + "_init.safetensors", init)
    safetensors_io.save(prefix + "_data.safetensors", {"images": images, "labels": labels})
    if export_onnx:  # the model as a graph, its initializers this run's init
        onnx_models.export(model, shape, prefix + ".onnx")
    losses = run_steps(model, optimizer, lr, momentum, weight_decay, images, labels, batch, steps)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    safetensors_io.save(prefix + "_final.safetensors", final)

    _write_args(prefix, "{REF}/" + os.path.basename(prefix) + ".onnx" if onnx_model else model_name, optimizer, lr,
                momentum, weight_decay, batch, steps, losses)
    if variant is None:
        return
    other = onnx_models.build(model_name) if onnx_model else tempo_models.build(model_name)
    other.load_state_dict(init)
    if variant == "float64":
        other = other.double()
        run_steps(other, optimizer, lr, momentum, weight_decay, images.double(), labels, batch, steps)
    else:
        torch.backends.mkldnn.enabled = False
        try:
            run_steps(other, optimizer, lr, momentum, weight_decay, images, labels, batch, steps)
        finally:
            torch.backends.mkldnn.enabled = True
    lines = []
    for k, v in other.state_dict().items():
        ref = final[k].double()
        scale = ref.abs().max().item()
        diff = (v.double() - ref).abs().max().item()
        lines.append(f"{k} {diff / scale if scale > 0 else diff:.6g}")
    with open(prefix + "_spread.txt", "w") as f:
        f.write(f"# {variant} vs float32 reference\n" + "\n".join(lines) + "\n")


def _write_args(prefix, model_name, optimizer, lr, momentum, weight_decay, batch, steps, losses):
    args = [f"--model {model_name}", f"--optimizer {optimizer}", f"--lr {lr!r}",
            f"--weight-decay {weight_decay!r}", f"--batch-size {batch}", f"--steps {steps}"]
    if optimizer == "sgd":
        args.append(f"--momentum {momentum!r}")
    with open(prefix + ".args", "w") as f:
        f.write(" ".join(args) + "\n")
    with open(prefix + "_losses.txt", "w") as f:
        f.write("\n".join(f"{v:.9g}" for v in losses) + "\n")


def make_runs(directory):
    train_run(directory, "cnn_sgd", "cnn", "sgd", 0.01, 0.9, 5e-4, 32, 20, seed=7, variant="float64",
              export_onnx=True)
    train_run(directory, "resnet18_sgd", "resnet18", "sgd", 0.01, 0.9, 5e-4, 16, 5, seed=8,
              variant="no-mkldnn", export_onnx=True)
    train_run(directory, "odd_resnet_sgd", "odd_resnet", "sgd", 0.01, 0.9, 5e-4, 16, 20, seed=13,
              variant="float64", data="fashion-mnist")
    train_run(directory, "mlp_adam", "mlp", "adam", 1e-3, 0.0, 1e-4, 32, 10, seed=9, variant="float64")
    train_run(directory, "mlp_adamw", "mlp", "adamw", 2e-3, 0.0, 0.05, 32, 10, seed=10,
              variant="float64")
    train_run(directory, "vit_sgd", "vit", "sgd", 0.01, 0.9, 5e-4, 16, 20, seed=11, variant="float64",
              data="fashion-mnist", export_onnx=True)
    train_run(directory, "vit_adamw", "vit", "adamw", 1e-3, 0.0, 0.05, 16, 20, seed=12, variant="float64",
              data="fashion-mnist")


# ---- optimizer rules ------------------------------------------------------------------------


def f64_bits(*values):
    """Doubles as their IEEE bit patterns in an I64 tensor (exact hyperparameters)."""
    return np.array(values, dtype=np.float64).view(np.int64)


def optimizer_cases(out):
    """A few steps of each optimizer on two parameters with given gradients:
    checks the update rules in isolation (no network, no ill-conditioning)."""
    steps = 6
    # kind, lr, momentum, weight_decay
    for kind, lr, momentum, wd in [("sgd", 0.1, 0.9, 1e-3), ("sgd", 0.05, 0.0, 0.0),
                                   ("sgd", 0.2, 0.5, 0.0), ("adam", 1e-2, 0.0, 0.0),
                                   ("adam", 3e-3, 0.0, 1e-2), ("adamw", 1e-2, 0.0, 0.1),
                                   ("adamw", 1e-3, 0.0, 0.0)]:
        name = f"{kind}_lr{lr:g}_m{momentum:g}_wd{wd:g}"
        a = torch.randn(13, 7)
        b = torch.randn(5)
        ga = torch.randn(steps, 13, 7)
        gb = torch.randn(steps, 5) * 0.01
        out.put("optim", name, "hyper", f64_bits(lr, momentum, wd))
        out.put("optim", name, "a0", a)
        out.put("optim", name, "b0", b)
        out.put("optim", name, "ga", ga)
        out.put("optim", name, "gb", gb)
        pa = nn.Parameter(a.clone())
        pb = nn.Parameter(b.clone())
        if kind == "sgd":
            opt = torch.optim.SGD([pa, pb], lr=lr, momentum=momentum, weight_decay=wd)
        elif kind == "adam":
            opt = torch.optim.Adam([pa, pb], lr=lr, weight_decay=wd)
        else:
            opt = torch.optim.AdamW([pa, pb], lr=lr, weight_decay=wd)
        ha, hb = [], []
        for s in range(steps):
            pa.grad = ga[s].clone()
            pb.grad = gb[s].clone()
            opt.step()
            ha.append(pa.detach().clone())
            hb.append(pb.detach().clone())
        out.put("optim", name, "a", torch.stack(ha))
        out.put("optim", name, "b", torch.stack(hb))


# ---- driver ---------------------------------------------------------------------------------


def fingerprint():
    h = hashlib.sha256(torch.__version__.encode())
    for path in [os.path.abspath(__file__), os.path.join(HERE, "..", "py", "tempo_models.py"),
                 os.path.join(HERE, "..", "py", "onnx_models.py"),
                 os.path.join(HERE, "..", "py", "safetensors_io.py")]:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def logits_command(model_name, weights, inp, outp):
    model = tempo_models.build(model_name)
    model.load_state_dict(safetensors_io.load_torch(weights), strict=True)
    model.eval()
    x = safetensors_io.load_torch(inp)["x"]
    with torch.no_grad():
        logits = model(x)
    safetensors_io.save(outp, {"logits": logits})


def main(argv):
    if len(argv) >= 1 and argv[0] == "logits":
        if len(argv) != 5:
            sys.exit("usage: make_references.py logits MODEL WEIGHTS INPUT OUTPUT")
        logits_command(*argv[1:])
        return
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: make_references.py OUT_DIR [--force]")
    directory = argv[0]
    force = "--force" in argv[1:]
    os.makedirs(directory, exist_ok=True)
    stamp = os.path.join(directory, "STAMP")
    fp = fingerprint()
    if not force and os.path.exists(stamp):
        with open(stamp) as f:
            lines = f.read().split()
        if lines and lines[0] == fp and all(os.path.exists(os.path.join(directory, n)) for n in lines[1:]):
            print(f"references in {directory} are up to date")
            return
    for name in os.listdir(directory):  # no stale files from an older version
        if name == "STAMP" or name.startswith(("run_", "state_", "layers.")):
            os.unlink(os.path.join(directory, name))
    t0 = time.time()
    make_layers(os.path.join(directory, "layers.safetensors"))
    t1 = time.time()
    make_state_lists(directory)
    t2 = time.time()
    make_runs(directory)
    t3 = time.time()
    written = sorted(n for n in os.listdir(directory) if n != "STAMP")
    with open(stamp, "w") as f:
        f.write(fp + "\n" + "\n".join(written) + "\n")
    size = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))
    print(f"references written to {directory}: layers {t1 - t0:.1f} s, state lists {t2 - t1:.1f} s, "
          f"training runs {t3 - t2:.1f} s; {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
