"""PyTorch's own training on Fashion-MNIST with Tempo's defaults (`cnn`, SGD
lr 0.01, momentum 0.9, batch 64, x/255, shuffled), for comparing test
accuracy. Usage:
    /usr/bin/python3 bench/torch_fashion.py [EPOCHS] [SEED] [THREADS] [MODEL] [OPTIMIZER] [LR] [SAMPLES]
MODEL: a name of tests/py/tempo_models.py (default cnn); OPTIMIZER: sgd
(momentum 0.9) or adamw (weight decay 0, as Tempo's default); SAMPLES: train
on the first SAMPLES training images only (default all)."""
import gzip
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "py"))
import tempo_models  # noqa: E402

D = "/usr/share/datasets/fashion-mnist"


def idx(name, offset):
    with gzip.open(os.path.join(D, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def main():
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    torch.manual_seed(seed)
    xtr = torch.from_numpy(idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    ytr = torch.from_numpy(idx("train-labels-idx1-ubyte.gz", 8).astype(np.int64))
    xte = torch.from_numpy(idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    yte = torch.from_numpy(idx("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64))
    name = sys.argv[4] if len(sys.argv) > 4 else "cnn"
    optimizer = sys.argv[5] if len(sys.argv) > 5 else "sgd"
    lr = float(sys.argv[6]) if len(sys.argv) > 6 else 0.01
    if len(sys.argv) > 7:
        xtr, ytr = xtr[:int(sys.argv[7])], ytr[:int(sys.argv[7])]
    model = tempo_models.build(name)
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)  # Tempo's default
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            loss_fn(model(xtr[b]), ytr[b]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = sum((model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item()
                      for i in range(0, len(xte), 1000)) / len(xte)
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
