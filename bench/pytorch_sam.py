#!/usr/bin/env python3
"""PyTorch reference for `sharpness-lab bench --pytorch`: the lab's networks, timed like the lab.

Builds the lab's MLP 784-w-w-10, CNN and ResNet-8 (crates/sharpness-lab/src/models/mod.rs) with
the same shapes, parameter order and initialisation rule (PyTorch's default: U(-1/sqrt(fan_in),
1/sqrt(fan_in)) for weights and biases, BatchNorm gamma = 1, beta = 0), and times SGD, SAM and
M-SAM steps as the common two-pass PyTorch SAM does them: first pass and backward, perturb
w <- w + eps, second pass with the BatchNorm running statistics frozen (momentum 0), restore w,
then the base step (SGD, momentum 0.9, dampening 0, weight decay 5e-4, lr 0.01; rho 0.05).

The batch is the lab bench's synthetic one (pixel k = ((7919 k) mod 255) / 127 - 1, label i mod
10). With `--weights FILE` (JSON written by `sharpness-lab bench --pytorch`) the network starts
from the lab's own initial weights, so the losses it prints can be compared number for number.

Prints one JSON object on stdout. Needs only torch (numpy is not used).
"""

import argparse
import json
import math
import resource
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

PIXELS, SIDE, CLASSES = 784, 28, 10


def uniform_(tensor, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        tensor.uniform_(-bound, bound)


def linear(d_in, d_out):
    layer = nn.Linear(d_in, d_out)
    uniform_(layer.weight, d_in)
    uniform_(layer.bias, d_in)
    return layer


def conv(c_in, c_out, kernel, stride=1):
    layer = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    uniform_(layer.weight, c_in * kernel * kernel)
    return layer


class Mlp(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = linear(PIXELS, width), linear(width, width), linear(width, CLASSES)

    def forward(self, x):
        x = x.reshape(x.shape[0], PIXELS)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = conv(1, 16, 3), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = conv(16, 32, 3), nn.BatchNorm2d(32)
        self.fc = linear(32 * 7 * 7, CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


class Shortcut(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv, self.bn = conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        # Registered in the lab's field order (conv1, bn1, conv2, bn2, shortcut): `--weights`
        # follows it.
        self.conv1, self.bn1 = conv(c_in, c_out, 3, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv(c_out, c_out, 3), nn.BatchNorm2d(c_out)
        self.shortcut = Shortcut(c_in, c_out, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + skip)


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = conv(1, 16, 3), nn.BatchNorm2d(16)
        self.blocks = nn.ModuleList(
            [BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2)]
        )
        self.fc = linear(64, CLASSES)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def network(kind, width):
    return {"mlp": lambda: Mlp(width), "cnn": Cnn, "resnet": ResNet}[kind]()


def lab_order(model):
    """Tensors in the order the lab visits them: its field order, BatchNorm's running statistics
    after gamma and beta."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            yield from (m.weight, m.bias, m.running_mean, m.running_var)
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            yield from (t for t in (m.weight, m.bias) if t is not None)


def load_weights(model, path):
    """The lab's tensors in its visiting order; Burn stores linear weights as [in, out]."""
    with open(path) as f:
        params = json.load(f)["params"]
    ours = list(lab_order(model))
    if len(params) != len(ours):
        sys.exit(f"{path}: {len(params)} tensors, the PyTorch network has {len(ours)}")
    with torch.no_grad():
        for i, (p, entry) in enumerate(zip(ours, params)):
            t = torch.tensor(entry["values"], dtype=torch.float32).reshape(entry["shape"])
            if t.dim() == 2:
                t = t.t()
            if t.shape != p.shape:
                sys.exit(f"{path}: tensor {i} has shape {list(t.shape)}, expected {list(p.shape)}")
            p.copy_(t)


def batch(size):
    k = torch.arange(size * PIXELS, dtype=torch.int64)
    x = (((k * 7919) % 255).to(torch.float32) / 127.0 - 1.0).reshape(size, 1, SIDE, SIDE)
    y = torch.arange(size, dtype=torch.int64) % CLASSES
    return x, y


def set_bn_momentum(model, momentum):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum


def step(model, opt, x, y, method, rho):
    """One optimizer step; returns the first pass's loss."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    if method != "sgd":
        params = [p for p in model.parameters() if p.grad is not None]
        with torch.no_grad():
            norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
            scale = rho / (norm + 1e-12)
            if method == "msam":  # eps = rho g / (|g| sqrt(1 + |g|^2))
                scale = scale / torch.sqrt(1.0 + norm * norm)
            eps = [p.grad * scale for p in params]
            for p, e in zip(params, eps):
                p.add_(e)
        opt.zero_grad(set_to_none=True)
        set_bn_momentum(model, 0.0)  # the second pass leaves the running statistics alone
        F.cross_entropy(model(x), y).backward()
        set_bn_momentum(model, 0.1)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
    opt.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["mlp", "cnn", "resnet"], required=True)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--methods", default="sgd,sam,msam")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rho", type=float, default=0.05)
    ap.add_argument("--weights", help="the lab's initial weights (JSON); enables --check-steps")
    ap.add_argument("--check-steps", type=int, default=0, help="SAM steps whose losses to print")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    x, y = batch(args.batch_size)
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "batch_size": args.batch_size,
        "times": {},
    }
    for method in args.methods.split(","):
        model = network(args.model, args.width)
        if args.weights:
            load_weights(model, args.weights)
        # Counted as the lab counts (BatchNorm's running statistics included).
        out["params"] = sum(t.numel() for t in lab_order(model))
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        times = []
        for k in range(args.warmup + args.steps):
            started = time.perf_counter()
            step(model, opt, x, y, method, args.rho)
            if k >= args.warmup:
                times.append(time.perf_counter() - started)
        out["times"][method] = times
    if args.check_steps:
        model = network(args.model, args.width)
        if args.weights:
            load_weights(model, args.weights)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        out["check_losses"] = [step(model, opt, x, y, "sam", args.rho) for _ in range(args.check_steps)]
    # ru_maxrss is in KiB on Linux.
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
