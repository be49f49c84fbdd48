"""Prediction and export routes (being written by the serving work)."""

from fastapi import APIRouter

router = APIRouter(tags=["models"])
