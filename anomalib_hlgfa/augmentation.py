"""Noise-aware augmentation: nuisances of a real production line added to normal training images.

On a line, normal parts carry dust, hairs and fibres, stains and smudges, and are seen under changing
light, with sensor noise and slight blur. None of these is a defect. HLGFA adds them to its normal
training images, so that its refinement learns to carry them across resolutions instead of flagging
them. Six families, each applied to an image with its own probability and strength:

==============  ===============================================================  ===============
family          what it draws                                                    strength unit
==============  ===============================================================  ===============
``dust``        1-12 small soft specks, dark or bright                           max opacity
``fibres``      1-3 thin curved hairs or fibres (quadratic Bezier curves)        max opacity
``stains``      1-2 soft irregular blobs that darken or lighten the surface      max rel. change
``illumination`` a linear light gradient, brightness, contrast and gamma shifts  max rel. change
``noise``       Gaussian sensor noise, the same on every channel                 max std (0-1)
``blur``        a Gaussian blur of the whole image                               max sigma, px
==============  ===============================================================  ===============

Sizes are relative to the image's shorter side (blur sigma is given for a 256-pixel side and scaled),
so the nuisances look the same whatever the resolution the images arrive at. Everything is batched
torch on the batch's device, drawn from the augmentation's own seeded generator.

Example:
    >>> import torch
    >>> from anomalib_hlgfa.augmentation import Nuisance, NuisanceAugmentation, NuisanceConfig
    >>> augment = NuisanceAugmentation(NuisanceConfig(dust=Nuisance(probability=1.0, strength=0.5)))
    >>> augment(torch.rand(4, 3, 64, 64)).shape
    torch.Size([4, 3, 64, 64])
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from kornia.filters import gaussian_blur2d
from torch import nn
from torch.nn import functional as F  # noqa: N812

FAMILIES = ("stains", "dust", "fibres", "illumination", "blur", "noise")  # the order they are applied in


@dataclass(frozen=True)
class Nuisance:
    """How often, and how strongly, one nuisance family is applied.

    Args:
        probability (float): Chance that a training image gets this family, in ``[0, 1]``.
        strength (float): The family's maximum magnitude, in its own unit (see the module docstring);
            each application draws its magnitude up to it. ``0`` disables the family.
    """

    probability: float = 0.0
    strength: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.probability <= 1:
            msg = f"A nuisance probability must be in [0, 1], got {self.probability}."
            raise ValueError(msg)
        if not self.strength >= 0 or not math.isfinite(self.strength):
            msg = f"A nuisance strength must be a finite number >= 0, got {self.strength}."
            raise ValueError(msg)


@dataclass(frozen=True)
class NuisanceConfig:
    """Probability and strength of every nuisance family, and the seed of their random draws.

    The defaults are the ones measured on ``../shared/data`` (see ``docs/robustness.md``).

    Args:
        dust (Nuisance): Small specks. Strength: max opacity.
        fibres (Nuisance): Thin curved hairs and fibres. Strength: max opacity.
        stains (Nuisance): Soft blobs darkening or lightening the surface. Strength: max relative change.
        illumination (Nuisance): Light gradient, brightness, contrast and gamma. Strength: max relative change.
        noise (Nuisance): Gaussian sensor noise. Strength: max standard deviation on the ``[0, 1]`` scale.
        blur (Nuisance): Gaussian blur. Strength: max sigma in pixels of a 256-pixel image side.
        clean_share (float): Chance, in ``[0, 1]``, that an image is spared every family (drawn before the
            families, per image), so that this share of each batch stays clean. ``0`` draws nothing
            extra, so configurations without it keep their random draws.
        seed (int): Seed of the augmentation's random generator. Under distributed training each process
            adds its rank, so that processes draw different nuisances.
    """

    # Frequent and strong, except dust: rare and faint, since dark specks look like blowholes.
    dust: Nuisance = Nuisance(probability=0.2, strength=0.4)
    fibres: Nuisance = Nuisance(probability=0.3, strength=0.6)
    stains: Nuisance = Nuisance(probability=0.7, strength=0.4)
    illumination: Nuisance = Nuisance(probability=0.7, strength=0.4)
    noise: Nuisance = Nuisance(probability=0.7, strength=0.08)
    blur: Nuisance = Nuisance(probability=0.7, strength=3.0)
    clean_share: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.clean_share <= 1:
            msg = f"clean_share is the chance that an image stays clean and must be in [0, 1], got {self.clean_share}."
            raise ValueError(msg)

    @classmethod
    def only(
        cls,
        family: str,
        probability: float = 1.0,
        strength: float | None = None,
        seed: int = 0,
    ) -> "NuisanceConfig":
        """A configuration that applies one family only (for pictures and per-family tests).

        Args:
            family (str): One of :data:`FAMILIES`.
            probability (float): Its probability. Defaults to ``1``.
            strength (float | None): Its strength; ``None`` keeps the default strength.
            seed (int): Seed. Defaults to ``0``.

        Returns:
            NuisanceConfig: Every other family at probability ``0``.
        """
        if family not in FAMILIES:
            msg = f"Unknown nuisance family {family!r}; the families are {', '.join(FAMILIES)}."
            raise ValueError(msg)
        default = getattr(cls(), family)
        disabled = {name: Nuisance() for name in FAMILIES if name != family}
        chosen = Nuisance(probability, default.strength if strength is None else strength)
        return cls(**disabled, **{family: chosen}, seed=seed)


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    """Uniform draws in ``[low, high)`` on the generator's device."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def _random_sign(generator: torch.Generator, count: int) -> torch.Tensor:
    """``-1`` or ``+1`` with equal chance, shape ``(count,)``."""
    return torch.randint(0, 2, (count,), generator=generator, device=generator.device) * 2.0 - 1


def _dark_or_bright(generator: torch.Generator, count: int, spread: float) -> torch.Tensor:
    """Per image, a bright intensity in ``[1 - spread, 1)`` or a dark one in ``[0, spread)``, equally likely."""
    colour = torch.where(_random_sign(generator, count) > 0, _uniform(generator, (count,), 1 - spread, 1.0), 0.0)
    return colour + _uniform(generator, (count,), 0.0, spread) * (colour == 0)


def _pixel_grid(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(y, x)``, each of shape ``(1, H, W)``."""
    height, width = images.shape[-2:]
    y = torch.arange(height, device=images.device, dtype=images.dtype).view(1, height, 1).expand(1, height, width)
    x = torch.arange(width, device=images.device, dtype=images.dtype).view(1, 1, width).expand(1, height, width)
    return y, x


def _blend(images: torch.Tensor, coverage: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Paint ``target`` intensity over the images where ``coverage`` (``(B, H, W)``, in ``[0, 1]``) is."""
    coverage = coverage.unsqueeze(1)
    return images * (1 - coverage) + target.view(-1, 1, 1, 1) * coverage


def add_dust(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Paint 1-12 small soft specks, each dark or bright, with opacity up to ``strength``.

    Args:
        images (torch.Tensor): Images in ``[0, 1]``, shape ``(B, C, H, W)``.
        strength (float): Max opacity of a speck.
        generator (torch.Generator): Random generator on the images' device.

    Returns:
        torch.Tensor: Images with dust, shape ``(B, C, H, W)``.
    """
    batch, side = images.shape[0], min(images.shape[-2:])
    y, x = _pixel_grid(images)
    counts = torch.randint(1, 13, (batch,), generator=generator, device=generator.device)
    coverage = torch.zeros(batch, *images.shape[-2:], device=images.device, dtype=images.dtype)
    colour = _dark_or_bright(generator, batch, 0.25)
    for index in range(12):
        centre_y = _uniform(generator, (batch,), 0, images.shape[-2]).view(-1, 1, 1)
        centre_x = _uniform(generator, (batch,), 0, images.shape[-1]).view(-1, 1, 1)
        radius = (_uniform(generator, (batch,), 0.002, 0.012) * side).clamp(min=0.5).view(-1, 1, 1)
        opacity = (_uniform(generator, (batch,), 0.5, 1.0) * strength * (index < counts)).view(-1, 1, 1)
        distance = torch.sqrt((y - centre_y) ** 2 + (x - centre_x) ** 2)
        speck = (radius + 0.5 - distance).clamp(0, 1)  # a disk with a one-pixel anti-aliased edge
        coverage = torch.maximum(coverage, speck * opacity)
    return _blend(images, coverage, colour)


def _squared_distance_to_segment(
    y: torch.Tensor,
    x: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
) -> torch.Tensor:
    """Squared distance from every pixel to a segment per image; ``start``/``end`` are ``(B, 2)`` as ``(y, x)``."""
    start_y, start_x = start[:, 0].view(-1, 1, 1), start[:, 1].view(-1, 1, 1)
    delta_y, delta_x = (end - start)[:, 0].view(-1, 1, 1), (end - start)[:, 1].view(-1, 1, 1)
    length_squared = (delta_y**2 + delta_x**2).clamp(min=1e-6)
    t = (((y - start_y) * delta_y + (x - start_x) * delta_x) / length_squared).clamp(0, 1)
    return (y - start_y - t * delta_y) ** 2 + (x - start_x - t * delta_x) ** 2


def add_fibres(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Paint 1-3 thin curved hairs or fibres, each dark or bright, with opacity up to ``strength``.

    Each fibre is a quadratic Bezier curve, 10-40 % of the shorter side long, 0.2-0.6 % of it wide
    (at least about a pixel), drawn as the distance to a 12-segment polyline.

    Args:
        images (torch.Tensor): Images in ``[0, 1]``, shape ``(B, C, H, W)``.
        strength (float): Max opacity of a fibre.
        generator (torch.Generator): Random generator on the images' device.

    Returns:
        torch.Tensor: Images with fibres, shape ``(B, C, H, W)``.
    """
    batch, (height, width) = images.shape[0], images.shape[-2:]
    side = min(height, width)
    y, x = _pixel_grid(images)
    counts = torch.randint(1, 4, (batch,), generator=generator, device=generator.device)
    for index in range(3):
        start = torch.stack([_uniform(generator, (batch,), 0, height), _uniform(generator, (batch,), 0, width)], 1)
        angle = _uniform(generator, (batch,), 0, math.pi)
        length = _uniform(generator, (batch,), 0.1, 0.4) * side
        direction = torch.stack([torch.sin(angle), torch.cos(angle)], 1)
        end = start + length.view(-1, 1) * direction
        bend = _uniform(generator, (batch,), -0.4, 0.4) * length
        control = (start + end) / 2 + bend.view(-1, 1) * torch.stack([-direction[:, 1], direction[:, 0]], 1)
        t = torch.linspace(0, 1, 13, device=images.device, dtype=images.dtype).view(1, -1, 1)
        points = (1 - t) ** 2 * start.unsqueeze(1) + 2 * (1 - t) * t * control.unsqueeze(1) + t**2 * end.unsqueeze(1)
        squared = _squared_distance_to_segment(y, x, points[:, 0], points[:, 1])
        for i in range(1, 12):
            squared = torch.minimum(squared, _squared_distance_to_segment(y, x, points[:, i], points[:, i + 1]))
        distance = squared.sqrt()
        half_width = (_uniform(generator, (batch,), 0.001, 0.003) * side).clamp(min=0.35).view(-1, 1, 1)
        opacity = (_uniform(generator, (batch,), 0.5, 1.0) * strength * (index < counts)).view(-1, 1, 1)
        colour = _dark_or_bright(generator, batch, 0.3)
        images = _blend(images, (half_width + 0.5 - distance).clamp(0, 1) * opacity, colour)
    return images


def add_stains(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Darken or lighten 1-2 soft, irregular, elliptical regions by up to ``strength`` (relative).

    Args:
        images (torch.Tensor): Images in ``[0, 1]``, shape ``(B, C, H, W)``.
        strength (float): Max relative intensity change at a stain's centre.
        generator (torch.Generator): Random generator on the images' device.

    Returns:
        torch.Tensor: Stained images, shape ``(B, C, H, W)``.
    """
    batch, (height, width) = images.shape[0], images.shape[-2:]
    side = min(height, width)
    y, x = _pixel_grid(images)
    counts = torch.randint(1, 3, (batch,), generator=generator, device=generator.device)
    gain = torch.ones(batch, height, width, device=images.device, dtype=images.dtype)
    for index in range(2):
        centre_y = _uniform(generator, (batch,), 0, height).view(-1, 1, 1)
        centre_x = _uniform(generator, (batch,), 0, width).view(-1, 1, 1)
        sigma_long = (_uniform(generator, (batch,), 0.04, 0.15) * side).view(-1, 1, 1)
        sigma_short = sigma_long * _uniform(generator, (batch,), 0.4, 1.0).view(-1, 1, 1)
        angle = _uniform(generator, (batch,), 0, math.pi).view(-1, 1, 1)
        along = (y - centre_y) * torch.sin(angle) + (x - centre_x) * torch.cos(angle)
        across = -(y - centre_y) * torch.cos(angle) + (x - centre_x) * torch.sin(angle)
        blob = torch.exp(-0.5 * ((along / sigma_long) ** 2 + (across / sigma_short) ** 2))
        # Irregular edges: modulate by smooth noise drawn on a coarse 6x6 grid.
        texture = torch.rand((batch, 1, 6, 6), generator=generator, device=generator.device, dtype=images.dtype)
        texture = F.interpolate(texture, size=(height, width), mode="bicubic", align_corners=False)[:, 0]
        change = _uniform(generator, (batch,), 0.4, 1.0) * strength * _random_sign(generator, batch) * (index < counts)
        gain = gain * (1 + change.view(-1, 1, 1) * blob * (0.5 + texture).clamp(0, 1.5))
    return images * gain.unsqueeze(1)


def change_illumination(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Apply a linear light gradient, and brightness, contrast and gamma shifts, all up to ``strength``.

    Args:
        images (torch.Tensor): Images in ``[0, 1]``, shape ``(B, C, H, W)``.
        strength (float): Max relative change: the gradient's gain across the image, the contrast factor's
            distance from 1, half the brightness shift and the log of the gamma.
        generator (torch.Generator): Random generator on the images' device.

    Returns:
        torch.Tensor: Re-lit images in ``[0, 1]``, shape ``(B, C, H, W)``.
    """
    batch, (height, width) = images.shape[0], images.shape[-2:]
    y, x = _pixel_grid(images)
    angle = _uniform(generator, (batch,), 0, 2 * math.pi).view(-1, 1, 1)
    position = ((y - height / 2) * torch.sin(angle) + (x - width / 2) * torch.cos(angle)) / max(height, width)
    gradient = 1 + _uniform(generator, (batch,), -strength, strength).view(-1, 1, 1) * position
    images = (images * gradient.unsqueeze(1)).clamp(0, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(generator, (batch,), 1 - strength, 1 + strength).view(-1, 1, 1, 1)
    brightness = _uniform(generator, (batch,), -strength / 2, strength / 2).view(-1, 1, 1, 1)
    images = ((images - mean) * contrast + mean + brightness).clamp(0, 1)
    gamma = torch.exp(_uniform(generator, (batch,), -strength, strength)).view(-1, 1, 1, 1)
    return images.clamp(min=1e-6) ** gamma


def add_noise(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Add Gaussian sensor noise with a standard deviation up to ``strength``, the same on every channel.

    Args:
        images (torch.Tensor): Images in ``[0, 1]``, shape ``(B, C, H, W)``.
        strength (float): Max standard deviation.
        generator (torch.Generator): Random generator on the images' device.

    Returns:
        torch.Tensor: Noisy images, shape ``(B, C, H, W)``.
    """
    batch, (height, width) = images.shape[0], images.shape[-2:]
    std = _uniform(generator, (batch,), 0.3, 1.0).view(-1, 1, 1, 1) * strength
    noise = torch.randn((batch, 1, height, width), generator=generator, device=generator.device, dtype=images.dtype)
    return images + std * noise


def blur(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Blur with a Gaussian of sigma up to ``strength`` pixels of a 256-pixel side (scaled to the image).

    Args:
        images (torch.Tensor): Images in ``[0, 1]``, shape ``(B, C, H, W)``.
        strength (float): Max sigma, in pixels of a 256-pixel shorter side.
        generator (torch.Generator): Random generator on the images' device.

    Returns:
        torch.Tensor: Blurred images, shape ``(B, C, H, W)``.
    """
    batch, scale = images.shape[0], min(images.shape[-2:]) / 256
    sigma = (_uniform(generator, (batch,), 0.5, 1.0) * strength * scale).clamp(min=0.05)
    kernel = 2 * math.ceil(3 * strength * scale) + 1
    if kernel < 3:  # below a pixel's blur: nothing to do
        return images
    return gaussian_blur2d(images, kernel, torch.stack([sigma, sigma], 1))


NUISANCES: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "stains": add_stains,
    "dust": add_dust,
    "fibres": add_fibres,
    "illumination": change_illumination,
    "blur": blur,
    "noise": add_noise,
}


class NuisanceAugmentation(nn.Module):
    """Add the nuisance families of a :class:`NuisanceConfig` to a batch of images.

    Each image gets each family independently with the family's probability; only the chosen images are
    computed. The random draws come from the module's own generator, seeded with ``config.seed`` (call
    :meth:`reseed` to restart it), one per device.

    Args:
        config (NuisanceConfig): Families, probabilities, strengths and seed. Defaults to the measured
            defaults.
    """

    def __init__(self, config: NuisanceConfig | None = None) -> None:
        super().__init__()
        self.config = config or NuisanceConfig()
        self._seed = self.config.seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def reseed(self, seed: int) -> None:
        """Restart the random draws from ``seed`` (on every device)."""
        self._seed = seed
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Add nuisances.

        Args:
            images (torch.Tensor): Floating-point images in ``[0, 1]``, shape ``(B, C, H, W)``.

        Returns:
            torch.Tensor: Augmented images in ``[0, 1]``, same shape, dtype and device.

        Raises:
            ValueError: If the images are not a floating-point ``(B, C, H, W)`` batch.
        """
        if images.ndim != 4 or not images.is_floating_point():
            msg = (
                "NuisanceAugmentation expects floating-point images of shape (B, C, H, W) in [0, 1], got "
                f"{images.dtype} of shape {tuple(images.shape)}. Convert with torchvision's ToDtype(float32, "
                "scale=True) first."
            )
            raise ValueError(msg)
        generator = self._generator(images.device)
        images = images.clone()

        def draw() -> torch.Tensor:
            return torch.rand(images.shape[0], generator=generator, device=generator.device)

        # No extra draw without a clean share, so that such configurations keep their random streams.
        augmentable = draw() >= self.config.clean_share if self.config.clean_share > 0 else torch.tensor(True)
        for family in FAMILIES:
            nuisance: Nuisance = getattr(self.config, family)
            chosen = draw() < nuisance.probability
            chosen &= augmentable
            if nuisance.strength == 0 or not chosen.any():
                continue
            index = chosen.nonzero().squeeze(1)
            images[index] = NUISANCES[family](images[index], nuisance.strength, generator).clamp(0, 1)
        return images

    def extra_repr(self) -> str:
        """Families with a non-zero probability and strength, for ``print(model)``."""
        active = [
            f"{item.name}(p={value.probability:g}, strength={value.strength:g})"
            for item in fields(self.config)
            if isinstance(value := getattr(self.config, item.name), Nuisance) and value.probability and value.strength
        ]
        clean = f", clean_share={self.config.clean_share:g}" if self.config.clean_share else ""
        return ", ".join(active) + clean + f", seed={self.config.seed}"
