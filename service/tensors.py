"""Tensor objects on the wire: `{shape, datatype: "FP32", data}` with data as numbers or base64 float32 bytes."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import AllowInfNan, BaseModel, ConfigDict, Discriminator, Field, Strict, Tag

from terdguard.core.errors import InvalidLatentsError

DATATYPES = ("FP32",)
MAX_DIMENSIONS = 8
# Initial noise of a DDPM/DDIM model is N(0, I), where |x| > 10 has probability below
# 1e-22 per element. A few huge values can drive llr far negative and carry a trigger
# past the guard, so latents beyond this bound are rejected instead of scored.
MAX_ABS_VALUE = 10.0

FiniteNumber = Annotated[float, Strict(), AllowInfNan(False)]


def _data_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "base64"
    return None


TensorData = Annotated[
    Annotated[list[FiniteNumber], Tag("list")] | Annotated[str, Tag("base64")],
    Discriminator(
        _data_kind,
        custom_error_type="tensor_data_type",
        custom_error_message="data must be a flat list of numbers or a base64 string of little-endian float32",
    ),
]


class TensorObject(BaseModel):
    """A dense float32 tensor; `data` is flat and row-major."""

    model_config = ConfigDict(extra="forbid")

    shape: list[Annotated[int, Strict(), Field(ge=1)]] = Field(min_length=1, max_length=MAX_DIMENSIONS)
    datatype: Literal["FP32"] = "FP32"
    data: TensorData


def decode_tensor(tensor: TensorObject) -> torch.Tensor:
    """Turn a validated tensor object into a float32 CPU tensor of its shape.

    Raises InvalidLatentsError when the data length does not match the shape, the
    base64 text is invalid, or a decoded value is NaN, infinite or beyond MAX_ABS_VALUE.
    """
    count = math.prod(tensor.shape)
    if isinstance(tensor.data, str):
        try:
            raw = base64.b64decode(tensor.data, validate=True)
        except (binascii.Error, ValueError) as error:
            raise InvalidLatentsError(f"latents data invalid: not base64 ({error})") from error
        if len(raw) != 4 * count:
            raise InvalidLatentsError(
                f"latents data invalid: got {len(raw)} bytes, "
                f"expected {4 * count} (4 per float32 of shape {tensor.shape})"
            )
        array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        if len(tensor.data) != count:
            raise InvalidLatentsError(
                f"latents data invalid: got {len(tensor.data)} values, expected {count} for shape {tensor.shape}"
            )
        with np.errstate(over="ignore"):  # values beyond float32 become inf and are rejected below
            array = np.asarray(tensor.data, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidLatentsError(f"latents data invalid: value {bad} is {array[bad]} in float32, expected finite")
    if array.size and float(np.abs(array).max()) > MAX_ABS_VALUE:
        bad = int(np.flatnonzero(np.abs(array) > MAX_ABS_VALUE)[0])
        raise InvalidLatentsError(
            f"latents data invalid: value {bad} is {array[bad]:g}, expected within +-{MAX_ABS_VALUE:g} "
            "for initial noise drawn from N(0, I)"
        )
    return torch.from_numpy(array.reshape(tensor.shape).copy())


def encode_tensor(x: torch.Tensor) -> dict[str, Any]:
    """Encode a tensor as a tensor object with base64 little-endian float32 data."""
    array = x.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4")
    return {"shape": list(x.shape), "datatype": "FP32", "data": base64.b64encode(array.tobytes()).decode("ascii")}
