"""/generate and /detect: the guarded inference endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..deps import InferenceDep, InferenceKeyDep
from ..errors import request_id_of
from ..schemas import DetectRequest, DetectResponse, GenerateRequest, GenerateResponse

router = APIRouter(tags=["inference"], dependencies=[InferenceKeyDep])


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request, inference: InferenceDep) -> GenerateResponse:
    """Screen the initial noise with the model's trigger, then generate from the accepted noise."""
    return await inference.generate(body, request_id_of(request), request.is_disconnected)


@router.post("/detect")
async def detect(body: DetectRequest, inference: InferenceDep) -> DetectResponse:
    """Score caller latents and return the guard's decisions without generating."""
    return await inference.detect(body)
