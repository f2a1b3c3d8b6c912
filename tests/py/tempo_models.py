"""The model zoo of DESIGN.md §4 in PyTorch: the reference that Tempo's
models must match in structure, state_dict names and semantics."""
import torch
from torch import nn


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def _cifar_resnet(ctor):
    m = ctor(num_classes=10)
    m.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    m.maxpool = nn.Identity()
    return m


def resnet18():
    import torchvision
    return _cifar_resnet(torchvision.models.resnet18)


def resnet50():
    import torchvision
    return _cifar_resnet(torchvision.models.resnet50)


def vgg16():
    import torchvision
    m = torchvision.models.vgg16_bn(num_classes=10)
    m.avgpool = nn.Identity()
    m.classifier = nn.Linear(512, 10)
    nn.init.normal_(m.classifier.weight, 0, 0.01)
    nn.init.zeros_(m.classifier.bias)
    return m


class ViT(nn.Module):
    """`vit`: patch embedding (a strided convolution), a class token and
    learned position embeddings, PyTorch's pre-norm nn.TransformerEncoder
    with exact GELU, a final LayerNorm and a Linear head on the class token.
    The encoder deep-copies its layer, so every layer starts from the same
    weights, as in PyTorch."""

    def __init__(self, in_shape=(1, 28, 28), patch=4, dim=192, depth=6, heads=3, mlp=384, classes=10):
        super().__init__()
        c, h, w = in_shape
        tokens = 1 + (h // patch) * (w // patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.encoder(x)
        return self.head(self.norm(x[:, 0]))


def vit():
    return ViT()


MODELS = {"cnn": cnn, "mlp": mlp, "resnet18": resnet18, "resnet50": resnet50, "vgg16": vgg16, "vit": vit}
INPUT_SHAPES = {"cnn": (1, 28, 28), "mlp": (1, 28, 28), "resnet18": (3, 32, 32),
                "resnet50": (3, 32, 32), "vgg16": (3, 32, 32), "vit": (1, 28, 28)}


def build(name):
    return MODELS[name]()
