"""Convolutional VAE with a discrete 8-bit decoder, so its bound is in bits/dim like the PixelCNN's.

    q(z|x) = N(mu(x), diag sigma(x)^2)      encoder, reparameterised: z = mu + sigma * eps
    p(z)   = N(0, I)                        KL in closed form
    p(x|z) = per sub-pixel distribution over the 256 levels: a discretised logistic (PixelCNN++
             style, two numbers per sub-pixel) or a 256-way categorical

Scoring uses K samples: the negative ELBO averaged over them, and the importance-weighted bound
-log (1/K sum_k p(x|z_k) p(z_k) / q(z_k|x)) (Burda et al., 2016), which tightens as K grows.
The noise eps is an argument, never drawn inside `forward`, so an exported graph is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 256
LIKELIHOODS = ("logistic", "categorical")
_LOG2 = math.log(2.0)


@dataclass
class VAEConfig:
    channels: int = 1
    height: int = 28
    width: int = 28
    latent: int = 16
    hidden: int = 32  # width of the first conv; doubles at each down-sampling
    likelihood: str = "logistic"  # or "categorical"
    num_classes: int = 0  # > 0: conditional VAE (label into encoder and decoder)

    def __post_init__(self):
        assert self.likelihood in LIKELIHOODS, f"likelihood must be one of {LIKELIHOODS}"
        assert self.channels in (1, 3)


def discretized_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(x) for uint8 levels x under a logistic discretised to 256 bins on [-1, 1].

    Bin k covers [c_k - 1/255, c_k + 1/255] with c_k = 2k/255 - 1; the end bins take the tails.
    """
    centre = x.float() / 127.5 - 1.0
    inv_scale = torch.exp(-log_scale)
    plus = inv_scale * (centre - mean + 1.0 / 255.0)
    minus = inv_scale * (centre - mean - 1.0 / 255.0)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus), for the bin at 0
    log_one_minus_cdf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)), for the bin at 255
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_scale * (centre - mean)
    # Where the bin mass underflows, use the density at the centre times the bin width.
    log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid) + math.log(2.0 / 255.0)
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    return torch.where(x == 0, log_cdf_plus, torch.where(x == 255, log_one_minus_cdf_minus, inner))


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        c, h = cfg.channels, cfg.hidden
        label_ch = cfg.num_classes
        self.encoder = nn.Sequential(
            nn.Conv2d(c + label_ch, h, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(h, 2 * h, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * h, 4 * h, 4, stride=2, padding=1),
            nn.SiLU(),
        )
        with torch.no_grad():
            probe = self.encoder(torch.zeros(1, c + label_ch, cfg.height, cfg.width))
        self.code_shape = tuple(probe.shape[1:])  # (4h, H/4, W/4)
        flat = probe.numel()
        self.to_posterior = nn.Linear(flat, 2 * cfg.latent)
        self.from_latent = nn.Linear(cfg.latent + label_ch, flat)
        out_per_pixel = 2 if cfg.likelihood == "logistic" else LEVELS
        self.decoder = nn.Sequential(
            nn.SiLU(),
            nn.ConvTranspose2d(4 * h, 2 * h, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(2 * h, h, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(h, c * out_per_pixel, 3, padding=1),
        )

    # --- the pieces --------------------------------------------------------------------------
    def _one_hot(self, label: torch.Tensor | None) -> torch.Tensor | None:
        assert (label is not None) == bool(self.cfg.num_classes), "label iff conditional"
        if label is None:
            return None
        # The one-hot as a plain comparison with 0..K-1 (an Equal node in the exported graph).
        classes = torch.arange(self.cfg.num_classes, device=label.device)
        return (label.long()[:, None] == classes).float()  # (B, num_classes)

    def encode(self, x: torch.Tensor, label: torch.Tensor | None = None):
        """uint8 (B, C, H, W) -> posterior mean and log-variance, each (B, latent)."""
        return self.posterior(self.encoder_features(x, label))

    def encoder_features(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, C, H, W) -> the encoder's last feature maps, (B, 4h, H/4, W/4)."""
        inp = x.float() / 127.5 - 1.0
        onehot = self._one_hot(label)
        if onehot is not None:
            inp = torch.cat([inp, onehot[:, :, None, None].expand(-1, -1, *inp.shape[2:])], dim=1)
        return self.encoder(inp)

    def posterior(self, features: torch.Tensor):
        """Encoder features (B, 4h, H/4, W/4) -> posterior mean and log-variance (B, latent)."""
        mu, logvar = self.to_posterior(features.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """(N, latent) -> decoder parameters (N, C, P, H, W), P = 2 (mean, log-scale) or 256."""
        onehot = self._one_hot(label)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        code = self.from_latent(z).view(-1, *self.code_shape)
        out = self.decoder(code)
        if out.shape[-2:] != (self.cfg.height, self.cfg.width):
            out = F.interpolate(out, size=(self.cfg.height, self.cfg.width), mode="bilinear")
        return out.view(out.shape[0], self.cfg.channels, -1, self.cfg.height, self.cfg.width)

    def log_likelihood_map(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per sub-pixel in nats, (N, C, H, W); x uint8 (N, C, H, W)."""
        if self.cfg.likelihood == "logistic":
            mean = torch.tanh(params[:, :, 0])
            log_scale = params[:, :, 1].clamp(min=-7.0)
            return discretized_logistic_log_prob(x, mean, log_scale)
        log_probs = F.log_softmax(params.float(), dim=2)  # (N, C, 256, H, W)
        return log_probs.gather(2, x.long().unsqueeze(2)).squeeze(2)

    def decoder_mean(self, params: torch.Tensor) -> torch.Tensor:
        """Expected pixel value in [0, 1] under p(x|z), (N, C, H, W)."""
        if self.cfg.likelihood == "logistic":
            return (torch.tanh(params[:, :, 0]) + 1.0) / 2.0
        levels = torch.arange(LEVELS, device=params.device, dtype=torch.float32) / (LEVELS - 1)
        return (F.softmax(params.float(), dim=2) * levels[None, None, :, None, None]).sum(2)

    # --- bounds ------------------------------------------------------------------------------
    def scores(self, x: torch.Tensor, eps: torch.Tensor, label: torch.Tensor | None = None):
        """Bounds for uint8 images x (B, C, H, W) with noise eps (B, K, latent).

        Returns (neg_elbo_bits_per_dim (B,), iwae_bits_per_dim (B,), recon_bits_map (B, C, H, W),
        recon_mse (B,)): the recon map averages -log2 p(x|z_k) over the K samples; recon_mse is
        the squared error of the decoder mean at z = mu, with intensities in [0, 1].
        """
        return self.score_terms(x, eps, label)[:4]

    def score_terms(
        self,
        x: torch.Tensor,
        eps: torch.Tensor,
        label: torch.Tensor | None = None,
        *,
        features: torch.Tensor | None = None,
    ):
        """`scores`, then kl_bits_per_dim (B,) (the KL term of the bound), the posterior mean
        (B, latent) and its log-variance (B, latent). `features`: the encoder's features of x,
        when the caller has them already (encoder_features)."""
        b, k = eps.shape[0], eps.shape[1]
        dims = x[0].numel()
        if features is None:
            features = self.encoder_features(x, label)
        mu, logvar = self.posterior(features)
        std = torch.exp(0.5 * logvar)
        z = mu[:, None] + std[:, None] * eps  # (B, K, latent)
        # expand + reshape rather than repeat_interleave(k): keeps K symbolic in the exported graph
        rep_label = None if label is None else label[:, None].expand(b, k).reshape(b * k)
        params = self.decode(z.reshape(b * k, -1), rep_label)
        x_rep = x[:, None].expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
        log_px = self.log_likelihood_map(x_rep, params).view(b, k, *x.shape[1:])  # (B, K, C, H, W)
        log_px_sum = log_px.flatten(2).sum(2)  # (B, K)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)  # (B,)
        neg_elbo = -log_px_sum.mean(1) + kl
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(2)  # (B, K)
        log_qz = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(2) - 0.5 * logvar.sum(
            1, keepdim=True
        )
        log_w = log_px_sum + log_pz - log_qz
        # log K as a tensor (math.log(k) would freeze K into the exported graph)
        iwae = -(torch.logsumexp(log_w, dim=1) - torch.log(torch.ones_like(log_w).sum(1)))
        recon_map = -log_px.mean(1) / _LOG2
        mean_image = self.decoder_mean(self.decode(mu, label))
        recon_mse = (mean_image - x.float() / 255.0).pow(2).flatten(1).mean(1)
        per_dim = dims * _LOG2
        return neg_elbo / per_dim, iwae / per_dim, recon_map, recon_mse, kl / per_dim, mu, logvar

    def loss(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Training objective: negative ELBO in bits/dim per image, one sample, (B,)."""
        mu, logvar = self.encode(x, label)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        log_px = self.log_likelihood_map(x, self.decode(z, label)).flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return (kl - log_px) / (x[0].numel() * _LOG2)

    @torch.no_grad()
    def sample(
        self, n: int, *, label: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images from the prior: z ~ N(0, I), x = the decoder's most likely level, (n, C, H, W)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.cfg.latent, generator=generator, device=device)
        return self.decode_images(z, label)

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        mean = self.decoder_mean(self.decode(z, label))
        return (mean * 255.0).round().clamp(0, 255).to(torch.uint8)
