"""Tensor objects: flat lists and base64 float32, with shape and finiteness checks."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from terdguard.core.errors import InvalidLatentsError
from terdguard.service.tensors import TensorObject, decode_tensor, encode_tensor


def test_tensor_list_round_trip() -> None:
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    decoded = decode_tensor(TensorObject(shape=[2, 1, 4, 4], data=x.flatten().tolist()))
    torch.testing.assert_close(decoded, x)


def test_tensor_base64_round_trip() -> None:
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    decoded = decode_tensor(TensorObject.model_validate(encode_tensor(x)))
    assert torch.equal(decoded, x)


def test_tensor_integers_accepted() -> None:
    assert decode_tensor(TensorObject(shape=[2], data=[1, 2])).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("data", [[1.0, "2.0"], [1.0, True], [1.0, None], [1.0, float("nan")], [float("inf"), 0.0]])
def test_tensor_list_rejects_non_finite_or_non_number(data: list[object]) -> None:
    with pytest.raises(ValidationError):
        TensorObject(shape=[2], data=data)


@pytest.mark.parametrize("data", [7, {"a": 1}, None])
def test_tensor_rejects_other_data_types(data: object) -> None:
    with pytest.raises(ValidationError, match="flat list of numbers or a base64 string"):
        TensorObject(shape=[1], data=data)


def test_tensor_rejects_unknown_datatype() -> None:
    with pytest.raises(ValidationError):
        TensorObject(shape=[1], datatype="FP16", data=[1.0])


def test_tensor_list_length_must_match_shape() -> None:
    with pytest.raises(InvalidLatentsError, match="got 3 values, expected 4"):
        decode_tensor(TensorObject(shape=[2, 2], data=[1.0, 2.0, 3.0]))


def test_tensor_base64_length_must_match_shape() -> None:
    data = base64.b64encode(np.zeros(3, dtype="<f4").tobytes()).decode()
    with pytest.raises(InvalidLatentsError, match="got 12 bytes, expected 16"):
        decode_tensor(TensorObject(shape=[4], data=data))


def test_tensor_rejects_invalid_base64() -> None:
    with pytest.raises(InvalidLatentsError, match="not base64"):
        decode_tensor(TensorObject(shape=[1], data="not base64!"))


def test_tensor_base64_rejects_nan() -> None:
    data = base64.b64encode(np.array([0.0, np.nan], dtype="<f4").tobytes()).decode()
    with pytest.raises(InvalidLatentsError, match="value 1 is nan"):
        decode_tensor(TensorObject(shape=[2], data=data))


def test_tensor_rejects_float32_overflow() -> None:
    with pytest.raises(InvalidLatentsError, match="expected finite"):
        decode_tensor(TensorObject(shape=[1], data=[1e39]))


@pytest.mark.parametrize("value", [3e38, -11.0, 10.5])
def test_tensor_rejects_values_beyond_noise_range(value: float) -> None:
    with pytest.raises(InvalidLatentsError, match=r"value 1 is .*expected within \+-10"):
        decode_tensor(TensorObject(shape=[2], data=[0.5, value]))


def test_tensor_accepts_values_at_noise_bound() -> None:
    assert decode_tensor(TensorObject(shape=[2], data=[10.0, -10.0])).abs().max() == 10.0
