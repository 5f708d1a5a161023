"""The seed recipe in PyTorch, to time and score beside `python -m vae_jax.main`.

    pip install torch   # a CPU build is enough; torch is not a dependency of vae_jax
    python experiments/torch_reference.py [--epochs=20] [--data_dir=FOLDER]

The recipe of the blog post vae_jax reimplements: an MLP encoder 784-512-256 to the mean
and log-variance of a 64-d Gaussian, z = mean + eps * exp(logvar / 2), an MLP decoder
64-256-512-784 with a sigmoid, loss = BCE(sum) + beta * KL(q(z|x) || N(0, I)), Adam 1e-3,
batch 256, grayscale pixels in [0, 1]. It reads MNIST with `vae_jax.data.load_dataset`
(the same copy, and the same order, as the JAX run) and prints, per epoch, the train
loss, the test loss (nats per image, one z per image) and the epoch time; at the end, the
median epoch time of epochs 2 and later.
"""

import argparse
import statistics
import time

import numpy as np

from vae_jax import data


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--data_dir", default=None, help="as vae_jax.main's --data_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import torch
    except ModuleNotFoundError:
        raise SystemExit("error: this script needs PyTorch: pip install torch") from None

    torch.manual_seed(args.seed)
    mnist = data.load_dataset("mnist", args.data_dir)
    train = torch.from_numpy(mnist.train_images.astype(np.float32) / 255.0)
    test = torch.from_numpy(mnist.test_images.astype(np.float32) / 255.0)
    model = build(torch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epoch_times = []
    for epoch in range(1, args.epochs + 1):
        start, total = time.perf_counter(), 0.0
        model.train()
        for batch in torch.randperm(len(train)).split(256):
            x = train[batch]
            probabilities, mean, logvar = model(x)
            loss = loss_sum(torch, probabilities, x, mean, logvar, args.beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        epoch_times.append(time.perf_counter() - start)
        model.eval()
        with torch.no_grad():
            probabilities, mean, logvar = model(test)
            test_loss = float(loss_sum(torch, probabilities, test, mean, logvar, args.beta))
        print(
            f"epoch {epoch:3d}/{args.epochs}  train {total / len(train):8.3f}  "
            f"test {test_loss / len(test):8.3f}  {epoch_times[-1]:.2f} s",
            flush=True,
        )
    if len(epoch_times) > 1:
        print(f"median epoch (2 and later): {statistics.median(epoch_times[1:]):.2f} s")


if __name__ == "__main__":
    main()
