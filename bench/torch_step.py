"""Times PyTorch's training step (forward, cross-entropy, backward, SGD with
momentum), or with --inference a prediction (eval mode, forward and softmax
without gradients), for one model, batch size and thread count, on the CPU or on a GPU
(`--device cuda`, float32 throughout: TF32 off). Prints one line:
`median_ms <value>`. Run with /usr/bin/python3 (Debian's torch) here."""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "py"))
import torch  # noqa: E402
import onnx_models  # noqa: E402
import tempo_models  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inference", action="store_true",
                    help="time predict instead: eval mode, no gradients, forward and softmax")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    zoo = a.model not in onnx_models.MODELS
    model = (tempo_models.build(a.model) if zoo else onnx_models.build(a.model)).to(dev)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(a.batch, *(tempo_models.INPUT_SHAPES if zoo else onnx_models.INPUT_SHAPES)[a.model]).to(dev)
    y = torch.randint(0, 10, (a.batch,)).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    if a.inference:
        model.eval()
    for i in range(a.warmup + a.steps):
        sync()
        t = time.perf_counter()
        if a.inference:
            with torch.no_grad():
                torch.softmax(model(x), dim=1)
        else:
            opt.zero_grad(set_to_none=False)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    print(f"median_ms {1e3 * statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
