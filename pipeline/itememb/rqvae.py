"""RQ-VAE semantic ids (quantize.method: rqvae): a residual quantiser learnt together with an autoencoder.

An MLP encoder maps each item embedding x (D) to a latent z (latent_dim); `levels` codebooks of `codebook_size`
vectors quantise z residually, as residual k-means does (level l takes the codeword nearest to what levels
1..l-1 left); an MLP decoder reconstructs x from the sum of the chosen codewords. The loss is TIGER's (Rajput et
al. 2023, after Zeghidour et al.'s residual VQ):

    ||x - decoder(z_q)||^2 + sum_l ( ||sg(r_l) - e_l||^2 + beta * ||r_l - sg(e_l)||^2 ),

r_l the residual entering level l, e_l its codeword, sg the stop-gradient, z_q = z + sg(sum_l e_l - z) (the
straight-through estimator, so the decoder's gradient reaches the encoder). The codebooks start at residual
k-means of the untrained encoder's latents, so no level starts with dead codes. Unlike residual k-means, which
splits the embedding's own space, the encoder learns which directions of x deserve codes.

Returned codes are the plain residual chain over the learnt codebooks (`assign_codes` of the final latents), so
the same latent always gets the same codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.itememb.quantize import assign_codes, residual_kmeans

KMEANS_INIT_ITERATIONS = 10


@dataclass(frozen=True)
class RQVAEFit:
    """codes (N, L) int16; codebooks (L, K, latent_dim) float32 and latent (N, latent_dim) float32, the
    encoder's output, which the codebooks quantise; recon_error: mean squared error of the decoded codes over the
    mean squared norm of x (1 = nothing explained); losses: the mean training loss of each epoch; zero_codes (L,)
    int16: the codes of the zero vector's latent (an item without content, which the fit leaves out)."""

    codes: np.ndarray
    codebooks: np.ndarray
    latent: np.ndarray
    recon_error: float
    losses: list[float]
    zero_codes: np.ndarray


class RQVAE(nn.Module):
    """Encoder, residual codebooks and decoder (module docstring); `forward` returns (x_hat, quantisation loss,
    codes (B, L) int64)."""

    def __init__(self, dim: int, hidden: int, latent_dim: int, codebooks: Tensor, beta: float):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.codebooks = nn.Parameter(codebooks.clone())  # (L, K, latent_dim)
        self.beta = beta

    def quantise(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, latent) -> (sum of codewords (B, latent), quantisation loss (), codes (B, L))."""
        residual, total, loss, codes = z, torch.zeros_like(z), z.new_zeros(()), []
        for book in self.codebooks:  # (K, latent)
            idx = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)  # (B,)
            e = book[idx]
            loss = loss + ((residual.detach() - e) ** 2).sum(1).mean() + self.beta * (
                (residual - e.detach()) ** 2).sum(1).mean()
            total, residual = total + e, residual - e
            codes.append(idx)
        return total, loss, torch.stack(codes, dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = self.encoder(x)
        total, loss, codes = self.quantise(z)
        z_q = z + (total - z).detach()  # straight-through: the value of the codes, the gradient of z
        return self.decoder(z_q), loss, codes


def train_rqvae(x: np.ndarray, levels: int, codebook_size: int, *, hidden: int, latent_dim: int, epochs: int,
                learning_rate: float, beta: float, batch_size: int, seed: int) -> RQVAEFit:
    """x (N, D) float item embeddings -> RQVAEFit (module docstring), on the CPU: Adam over shuffled batches of
    `batch_size` items for `epochs` passes, everything drawn from `seed` (deterministic for a seed and a thread
    count)."""
    gen = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.random.fork_rng():  # nn.Linear's init draws from the global generator: seed it, then restore it
        torch.manual_seed(seed)
        model = RQVAE(xt.shape[1], hidden, latent_dim, torch.zeros(levels, codebook_size, latent_dim), beta)
    with torch.no_grad():
        _, books = residual_kmeans(model.encoder(xt).numpy(), levels, codebook_size, KMEANS_INIT_ITERATIONS, seed)
        model.codebooks.copy_(torch.from_numpy(books))
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    energy = float((xt ** 2).sum(1).mean()) or 1.0
    losses = []
    for _ in tqdm(range(epochs), desc="rqvae", unit="epoch"):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for lo in range(0, len(xt), batch_size):
            batch = xt[order[lo:lo + batch_size]]
            x_hat, q_loss, _ = model(batch)
            loss = ((x_hat - batch) ** 2).sum(1).mean() + q_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(xt))
    model.eval()
    with torch.no_grad():
        latent = model.encoder(xt)
        x_hat, _, _ = model(xt)
        zero_latent = model.encoder(xt.new_zeros(1, xt.shape[1])).numpy()  # (1, latent_dim)
    codebooks = model.codebooks.detach().numpy().astype(np.float32)
    latent_np = latent.numpy().astype(np.float32)
    return RQVAEFit(codes=assign_codes(latent_np, codebooks), codebooks=codebooks, latent=latent_np,
                    recon_error=float(((x_hat - xt) ** 2).sum(1).mean()) / energy, losses=losses,
                    zero_codes=assign_codes(zero_latent, codebooks)[0])
