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


MODELS = {"cnn": cnn, "mlp": mlp, "resnet18": resnet18, "resnet50": resnet50, "vgg16": vgg16}
INPUT_SHAPES = {"cnn": (1, 28, 28), "mlp": (1, 28, 28), "resnet18": (3, 32, 32),
                "resnet50": (3, 32, 32), "vgg16": (3, 32, 32)}


def build(name):
    return MODELS[name]()
