"""The model cache: one load for concurrent first requests, LRU eviction within a byte budget,
drops on delete, and a ready model that answers exactly like the FreshModel it came from."""

import asyncio

import pytest
import torch
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

import freshcore
from app.serving import drop_model, get_serving, is_warm
from app.serving.cache import model_nbytes
from app.serving.service import ModelLoadError, ModelNotFound, Serving
from app.settings import Settings

from .conftest import DIGITS_SPEC, StoreModel

pytestmark = pytest.mark.anyio


def small(seed: int) -> freshcore.FreshModel:
    return freshcore.build_model(DIGITS_SPEC, method="freshnets", compression=1 / 4, seed=seed)


def test_nbytes_counts_materialised_filters_and_buffers(mnist_model: freshcore.FreshModel) -> None:
    dense = freshcore.to_dense(mnist_model.eval())
    weights = sum(p.numel() * p.element_size() for p in dense.parameters())
    buffers = sum(b.numel() * b.element_size() for b in dense.buffers())
    assert model_nbytes(dense) == weights + buffers
    fresh = freshcore.from_bytes(freshcore.to_bytes(mnist_model)).eval()
    before = model_nbytes(fresh)
    fresh.materialize()
    assert model_nbytes(fresh) > before  # the cached filters count too


async def test_loaded_model_matches_the_fresh_model(
    settings: Settings,
    session_factory: sessionmaker[Session],
    store_model: StoreModel,
    digits_model: freshcore.FreshModel,
) -> None:
    model_id = store_model(digits_model)
    entry = await Serving(settings, session_factory).cache.get(model_id)
    x = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(entry.model(x), digits_model(x), atol=1e-5)
    assert entry.class_names == digits_model.class_names and entry.input_shape == (1, 8, 8)
    assert entry.nbytes == model_nbytes(entry.model) > 0


async def test_a_stored_model_over_the_virtual_weight_limit_is_not_built(
    settings: Settings,
    session_factory: sessionmaker[Session],
    store_model: StoreModel,
    digits_model: freshcore.FreshModel,
) -> None:
    """Serving reads files under the same FRESHNETS_MAX_VIRTUAL_WEIGHTS as the API and worker."""
    model_id = store_model(digits_model)
    virtual = sum(s.weights + s.biases for s in digits_model.spec.check())
    tight = settings.model_copy(update={"max_virtual_weights": virtual - 1})
    with pytest.raises(ModelLoadError, match="virtual"):
        await Serving(tight, session_factory).cache.get(model_id)
    roomy = settings.model_copy(update={"max_virtual_weights": virtual})
    assert (await Serving(roomy, session_factory).cache.get(model_id)).nbytes > 0


async def test_concurrent_first_requests_load_once(
    settings: Settings,
    session_factory: sessionmaker[Session],
    store_model: StoreModel,
    mnist_model: freshcore.FreshModel,
) -> None:
    model_id = store_model(mnist_model)
    serving = Serving(settings, session_factory)
    loads = []
    real_load = serving.load

    def counting_load(mid: str, owner_id: str | None):  # type: ignore[no-untyped-def]
        loads.append(mid)
        return real_load(mid, owner_id)

    serving.cache._loader = counting_load
    entries = await asyncio.gather(*(serving.cache.get(model_id) for _ in range(8)))
    assert loads == [model_id]
    assert all(e is entries[0] for e in entries)
    assert serving.cache.is_warm(model_id)


async def test_lru_eviction_keeps_the_cache_within_budget(
    settings: Settings,
    session_factory: sessionmaker[Session],
    store_model: StoreModel,
) -> None:
    ids = [store_model(small(seed)) for seed in range(4)]
    one = model_nbytes(freshcore.to_dense(small(0).eval()))
    serving = Serving(
        settings.model_copy(update={"cache_bytes": 2 * one + one // 2}), session_factory
    )
    cache = serving.cache
    await cache.get(ids[0])
    await cache.get(ids[1])
    await cache.get(ids[0])  # ids[0] is now the most recently used
    await cache.get(ids[2])  # evicts ids[1]
    assert [cache.is_warm(i) for i in ids] == [True, False, True, False]
    for model_id in ids * 2:
        await cache.get(model_id)
        assert cache.total_bytes <= cache.budget_bytes and len(cache) == 2


async def test_a_model_bigger_than_the_budget_is_served_not_kept(
    settings: Settings,
    session_factory: sessionmaker[Session],
    store_model: StoreModel,
) -> None:
    model_id = store_model(small(0))
    serving = Serving(settings.model_copy(update={"cache_bytes": 1000}), session_factory)
    entry = await serving.cache.get(model_id)
    assert entry.model is not None and not serving.cache.is_warm(model_id)
    assert serving.cache.total_bytes == 0


async def test_drop_forgets_and_owner_is_checked_before_loading(
    make_app, store_model: StoreModel, session_factory: sessionmaker[Session]
) -> None:
    model_id = store_model(small(0), owner="alice")
    app: FastAPI = make_app()
    serving = get_serving(app)
    with session_factory() as session:
        from app.db.models import Owner

        owners = dict(session.query(Owner.name, Owner.id).all())
    with pytest.raises(ModelNotFound):
        await serving.model_for(model_id, owners["bob"])
    assert not is_warm(app, model_id)  # bob's attempt did not load alice's model
    await serving.model_for(model_id, owners["alice"])
    assert is_warm(app, model_id)
    with pytest.raises(ModelNotFound):
        await serving.model_for(model_id, owners["bob"])  # nor does a warm one leak
    drop_model(app, model_id)
    assert not is_warm(app, model_id) and serving.cache.total_bytes == 0
    with pytest.raises(ModelNotFound):
        await serving.model_for("no-such-model", owners["alice"])
