"""The one input contract: what a bundle takes (InputSpec), the 0..255 pixel rule, and the one
conversion of an image, decoded or stored as an array, to the bundle's uint8 (C, H, W).

Every entry point reads images through here: the detector, the HTTP service, the batch jobs and the
data sources, so an image is accepted, converted or refused alike wherever it comes in.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError, MultiFrameImage, UnsupportedImageFormat
from .spec import BundleSpec

# Decompression bombs: refuse images with more pixels than this before decoding them.
DEFAULT_MAX_PIXELS = 16_000_000
# The encodings read, as Pillow names them. Pillow knows many more, some of which hand the bytes
# to other programs (EPS to Ghostscript): only these plugins are ever tried. A camera's JPEG that
# carries extra pictures opens as format MPO; its first frame is the JPEG's image.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
ACCEPTED_FORMATS_TEXT = "PNG, JPEG, BMP or TIFF"
_MODES = {1: "L", 3: "RGB"}


def to_uint8(values: np.ndarray, name: str = "images") -> np.ndarray:
    """The pixel rule: values must be finite whole numbers within 0..255, and become uint8 as they
    are; nothing is ever clipped or rescaled."""
    if values.dtype == np.uint8:
        return values
    array = values.astype(np.float64)
    if not np.all(np.isfinite(array)):
        msg = f"{name}: pixel values include NaN or infinity"
        raise InputError(msg)
    if array.size and (array.min() < 0 or array.max() > 255):
        msg = f"{name}: pixel values must be within 0..255, got {array.min():g}..{array.max():g}"
        raise InputError(msg)
    if not np.all(array == np.round(array)):
        msg = f"{name}: pixel values must be whole numbers 0..255 (uint8 levels), got fractions"
        raise InputError(msg)
    return array.astype(np.uint8)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image"
) -> Image.Image:
    """Decode an encoded image (PNG, JPEG, BMP, TIFF) of one frame fully, or raise InputError:
    UnsupportedImageFormat for other encodings, MultiFrameImage for multi-page or animated ones."""
    if not data:
        msg = f"{name}: empty file, expected an encoded image"
        raise InputError(msg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = open_image(data, name)
            width, height = image.size
            if width * height > max_pixels:
                msg = (
                    f"{name}: {width}x{height} = {width * height} pixels "
                    f"exceeds the limit of {max_pixels}"
                )
                raise InputError(msg)
            frames = getattr(image, "n_frames", 1)
            if frames > 1 and image.format != "MPO":
                msg = (
                    f"{name}: a {image.format} image of {frames} frames or pages; send one "
                    "image per file (each frame as its own image)"
                )
                raise MultiFrameImage(msg)
            image.load()
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        msg = f"{name}: not a readable image ({ACCEPTED_FORMATS_TEXT}) or too large"
        raise InputError(msg) from None
    except (OSError, SyntaxError, ValueError) as error:
        msg = f"{name}: corrupt or truncated image ({error})"
        raise InputError(msg) from None
    return image


def open_image(data: bytes, name: str = "image") -> Image.Image:
    """Open (not decode) an image in one of IMAGE_FORMATS; UnsupportedImageFormat names any other
    encoding that Pillow recognises by its first bytes, without parsing it."""
    try:
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        other = _recognised_format(data[:16])
        if other is None or other in IMAGE_FORMATS:  # unknown, or one of ours but corrupt
            raise
        msg = f"{name}: {other} images are not accepted; send {ACCEPTED_FORMATS_TEXT}"
        raise UnsupportedImageFormat(msg) from None


def _recognised_format(prefix: bytes) -> str | None:
    """The format whose signature `prefix` starts with (Pillow's own checks), if any."""
    Image.init()
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # a plugin's check that cannot read this prefix: not its format
            continue
    return None


@dataclass(frozen=True)
class InputSpec:
    """The uint8 images (C, H, W) a bundle takes, and whether images of another size or colour
    mode are converted to them (`resize`, `convert`) or refused."""

    channels: int
    height: int
    width: int
    resize: bool = True
    convert: bool = True

    @classmethod
    def of(cls, spec: BundleSpec) -> InputSpec:
        """The input contract a bundle's metadata states."""
        return cls(
            *spec.input.shape,
            resize=spec.preprocessing.resize == "bilinear",
            convert=spec.preprocessing.color == "convert",
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    def from_image(self, image: Image.Image, name: str = "image") -> np.ndarray:
        """A decoded image -> uint8 (C, H, W), converted as the spec allows, else InputError."""
        mode = _MODES[self.channels]
        if image.mode != mode:
            if not self.convert:
                msg = f"{name}: colour mode {image.mode} but the model takes {mode}"
                raise InputError(msg)
            if image.mode.startswith("I"):
                # 16/32-bit grey: scale to 8 bits rather than clip.
                array = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
                image = Image.fromarray(np.round(array / top * 255.0).astype(np.uint8))
            try:
                image = image.convert(mode)
            except ValueError:
                msg = f"{name}: cannot convert colour mode {image.mode} to {mode}"
                raise InputError(msg) from None
        if image.size != (self.width, self.height):
            if not self.resize:
                msg = (
                    f"{name}: size {image.size[0]}x{image.size[1]} but the model takes "
                    f"{self.width}x{self.height}"
                )
                raise InputError(msg)
            image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        return (
            array[None] if self.channels == 1 else np.ascontiguousarray(np.moveaxis(array, -1, 0))
        )

    def from_array(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """A stored image (C, H, W) of any numeric dtype -> uint8 in the model's shape: the pixel
        rule first, then the same conversion as a decoded image when the shape differs."""
        image = to_uint8(image, name)
        if image.shape == self.shape:
            return image
        pil = Image.fromarray(image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1))
        return self.from_image(pil, name)

    def batch(self, images) -> np.ndarray:
        """Check a batch of images and return it as uint8 (B, C, H, W).

        Accepts (B, C, H, W), or (B, H, W) for one channel, exactly of the model's size: a batch
        is never resized. Values follow the pixel rule.
        """
        array = np.asarray(images)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == bool
        ):
            msg = f"images must be a numeric array, got dtype {array.dtype}"
            raise InputError(msg)
        if array.ndim == 3 and self.channels == 1:
            array = array[:, None]
        if array.ndim != 4 or array.shape[1:] != self.shape:
            msg = (
                f"images must have shape (B, {self.channels}, {self.height}, {self.width}), "
                f"got {array.shape}"
            )
            raise InputError(msg)
        if array.shape[0] == 0:
            msg = "no images given"
            raise InputError(msg)
        return np.ascontiguousarray(to_uint8(array))
