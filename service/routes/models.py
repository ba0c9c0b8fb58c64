"""/models: register, list, inspect, rescan and delete models."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from ..deps import AdminDep, ModelsDep, SettingsDep
from ..schemas import ModelCreate, ModelList, ModelPublic, ScanOptions

router = APIRouter(prefix="/models", tags=["models"])

WaitQuery = Query(False, description="wait until the scan finishes, at most the server's wait timeout")


@router.post("", status_code=status.HTTP_202_ACCEPTED, dependencies=[AdminDep],
             responses={200: {"description": "already registered with the same content"}})
async def register_model(body: ModelCreate, response: Response, models: ModelsDep, settings: SettingsDep,
                         wait: bool = WaitQuery) -> ModelPublic:
    """Register a model folder and queue its scan."""
    record, created = await run_in_threadpool(models.register, body)
    if wait:
        record = await models.wait(record.name, settings.wait_timeout)
    response.headers["Location"] = f"/models/{record.name}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return await run_in_threadpool(models.public, record)


@router.get("")
def list_models(models: ModelsDep) -> ModelList:
    """List registered models with their state and verdict."""
    return ModelList(models=[models.public(record) for record in models.all()])


@router.get("/{name}")
def get_model(name: str, models: ModelsDep) -> ModelPublic:
    """Return one model's state, scan progress, verdict and statistics."""
    return models.public(models.get(name))


@router.get("/{name}/trigger.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "trigger mean (left) and std (right)"}})
def get_trigger_png(name: str, models: ModelsDep) -> Response:
    """Return the reversed trigger as a PNG image."""
    return Response(models.trigger_png(name), media_type="image/png")


@router.post("/{name}/scan", status_code=status.HTTP_202_ACCEPTED, dependencies=[AdminDep])
async def rescan_model(name: str, response: Response, models: ModelsDep, settings: SettingsDep,
                       body: ScanOptions | None = None, wait: bool = WaitQuery) -> ModelPublic:
    """Scan the model again, replacing its stored trigger."""
    record = await run_in_threadpool(models.rescan, name, body)
    if wait:
        record = await models.wait(record.name, settings.wait_timeout)
    response.headers["Location"] = f"/models/{record.name}"
    return await run_in_threadpool(models.public, record)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[AdminDep])
def delete_model(name: str, models: ModelsDep) -> Response:
    """Remove the model from the registry; its files stay on disk."""
    models.delete(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
