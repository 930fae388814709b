"""make_mesh: the ("data", "model") device mesh every tokjax sharding refers to."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "model")


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Returns a ``Mesh`` of shape (data, model) with axes ("data", "model") over ``devices``.

    ``devices`` defaults to ``jax.devices()`` (every device of every process, so the same call
    works after ``jax.distributed.initialize()``); ``data`` defaults to ``n_devices // model``.
    Axes are ``AxisType.Auto`` so ``jax.jit`` propagates shardings from the inputs (GSPMD);
    under jax's default ``Explicit`` axes the unannotated einsums of ``forward`` would need
    an ``out_sharding`` each.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if n == 0:
        raise ValueError("make_mesh needs at least one device")
    if not isinstance(model, (int, np.integer)) or model < 1:
        raise ValueError(f"make_mesh: model must be an int >= 1, got {model!r}")
    if data is None:
        if n % model:
            raise ValueError(f"make_mesh: model={model} does not divide the {n} available devices")
        data = n // model
    if not isinstance(data, (int, np.integer)) or data < 1:
        raise ValueError(f"make_mesh: data must be an int >= 1, got {data!r}")
    if data * model != n:
        raise ValueError(
            f"make_mesh: data={data} x model={model} = {data * model} devices, but {n} are available; "
            f"pass devices= or sizes whose product is {n}"
        )
    return jax.make_mesh((int(data), int(model)), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)
