"""The seed recipe in PyTorch, to time and score beside `python -m vae_jax.main`.

    pip install torch   # torch is not a dependency of vae_jax
    python experiments/torch_reference.py [--epochs=20] [--data_dir=FOLDER]
    python experiments/torch_reference.py --device=cuda --variant=compiled   # on a GPU

The recipe of the blog post vae_jax reimplements: an MLP encoder 784-512-256 to the mean
and log-variance of a 64-d Gaussian, z = mean + eps * exp(logvar / 2), an MLP decoder
64-256-512-784 with a sigmoid, loss = BCE(sum) + beta * KL(q(z|x) || N(0, I)), Adam 1e-3,
batch 256, grayscale pixels in [0, 1]. It reads MNIST with `vae_jax.data.load_dataset`
(the same copy, and the same order, as the JAX run) and prints, per epoch, the train
loss, the test loss (nats per image, one z per image) and the epoch time; at the end, the
median epoch time of epochs 2 and later.

The whole training set is moved to `--device` once and batches are gathered there, so
no batch crosses the host-device link: the comparison favours PyTorch, whose usual
DataLoader would. `--variant` picks how PyTorch runs the step:

  eager      the blog's code: one kernel launch per operation (float32 matmuls; --tf32
             lets cuBLAS use TF32, as JAX's default does on a recent GPU)
  compiled   torch.compile(mode="reduce-overhead"): fused kernels replayed as CUDA graphs,
             with Adam's fused CUDA kernel, PyTorch's fastest way to run this step; the
             first epochs include the compilation (its warm-up is printed)
"""

import argparse
import statistics
import time

import numpy as np

from vae_jax import data

VARIANTS = ("eager", "compiled")


def build(torch, latent: int = 64):
    nn = torch.nn

    class SeedVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                nn.Linear(256, 2 * latent),
            )  # fmt: skip
            self.decoder = nn.Sequential(
                nn.Linear(latent, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(),
                nn.Linear(512, 784), nn.Sigmoid(),
            )  # fmt: skip

        def forward(self, x):
            mean, logvar = self.encoder(x).chunk(2, dim=-1)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            return self.decoder(z), mean, logvar

    return SeedVAE()


def loss_sum(torch, probabilities, x, mean, logvar, beta: float):
    """BCE summed over pixels and images, plus beta times the closed-form KL."""
    bce = torch.nn.functional.binary_cross_entropy(probabilities, x, reduction="sum")
    kl = 0.5 * torch.sum(torch.exp(logvar) + mean**2 - 1.0 - logvar)
    return bce + beta * kl


def make_step(torch, model, optimizer, beta: float, variant: str):
    """One optimiser step on a batch -> its summed loss (a tensor on the device)."""

    def step(x):
        probabilities, mean, logvar = model(x)
        loss = loss_sum(torch, probabilities, x, mean, logvar, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    if variant != "compiled":
        return step
    compiled = torch.compile(step, mode="reduce-overhead")

    def graph_step(x):
        # Each call is a new iteration: CUDA graphs may reuse the last call's buffers.
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(x).clone()

    return graph_step


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--data_dir", default=None, help="as vae_jax.main's --data_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--variant", choices=VARIANTS, default="eager")
    parser.add_argument("--tf32", action="store_true", help="let cuBLAS use TF32 matmuls")
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        import torch
    except ModuleNotFoundError:
        raise SystemExit("error: this script needs PyTorch: pip install torch") from None
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    device = torch.device(args.device)
    mnist = data.load_dataset("mnist", args.data_dir)
    train = torch.from_numpy(mnist.train_images.astype(np.float32) / 255.0).to(device)
    test = torch.from_numpy(mnist.test_images.astype(np.float32) / 255.0).to(device)
    model = build(torch).to(device)
    fused = dict(fused=True) if args.variant == "compiled" and device.type == "cuda" else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **fused)
    step = make_step(torch, model, optimizer, args.beta, args.variant)
    print(f"torch {torch.__version__} on {device}, {args.variant}, tf32={args.tf32}")
    epoch_times = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.train()
        # Full batches only under CUDA graphs (one shape); the eager step also takes the
        # short last one, as the blog's DataLoader does.
        order = torch.randperm(len(train), device=device)
        batches = order.split(256)
        if args.variant == "compiled":
            batches = [b for b in batches if len(b) == 256]
        total = sum(step(train[batch]) for batch in batches)
        total = float(total)  # waits for the device
        epoch_times.append(time.perf_counter() - start)
        model.eval()
        with torch.no_grad():
            probabilities, mean, logvar = model(test)
            test_loss = float(loss_sum(torch, probabilities, test, mean, logvar, args.beta))
        print(
            f"epoch {epoch:3d}/{args.epochs}  train {total / len(train):8.3f}  "
            f"test {test_loss / len(test):8.3f}  {epoch_times[-1]:.3f} s",
            flush=True,
        )
    if len(epoch_times) > 1:
        print(f"median epoch (2 and later): {statistics.median(epoch_times[1:]):.3f} s")
        print(f"first epoch (with any compilation): {epoch_times[0]:.2f} s")


if __name__ == "__main__":
    main()
